"""The guest-facing metadata service (the compute API's OpenStack metadata format).

One app instance per server: the server is known from the unix socket the request arrived on
(metadata/sockets.py), never from anything in the request (no header, Host, path or body is
consulted for identity), so a guest cannot ask as another.

What a guest reports (POST /attachfs/v1/mounts) stays untrusted: it is bounded, checked line
by line, reduced to tags this same server has, and only ever tells the host *when* to pull a
device of this server.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from typing import Any

from sqlalchemy import select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from attachfs.core.guest_mount import NfsLink, guest_mount
from attachfs.core.model import AttachmentStatus, VmState
from attachfs.core.rules import TAG_PATTERN
from attachfs.db.engine import Database
from attachfs.db.tables import Server, ShareMapping

VERSIONS = ("2025-04-04", "latest")
# `meta_data.json?attachfs=1`: each share device also says how to mount it (core/guest_mount):
# attachfs's extension; without it the devices are the compute service's, key for key. The
# config drive carries the extended file as attachfs/meta_data.json beside the plain one.
EXTENSION_QUERY = "attachfs"
CONFIG_DRIVE_EXTENDED = "attachfs/meta_data.json"
MOUNT_KEYS = ("transport", "fstype", "source", "options", "target")
# Attachments the guest should mount: present as devices. Detaching and failed ones are not.
LISTED = (AttachmentStatus.ACTIVE, AttachmentStatus.INACTIVE)


def share_devices(mappings: list[ShareMapping], extended: bool = False,
                  nfs: NfsLink | None = None, layout: str = "mnt") -> list[dict[str, Any]]:
    devices = []
    for m in mappings:
        if m.status not in LISTED:
            continue
        device: dict[str, Any] = {"type": "share", "share_id": m.share_id, "tag": m.tag,
                                  "bus": "none", "address": "none"}
        if m.mount_point:
            device["mount_point"] = m.mount_point
        if extended:
            mount = guest_mount(m.transport, m.tag, m.read_only, m.mount_point, m.instance_uuid, nfs,
                                m.share_id, layout)
            device.update({f"attachfs:{k}": v for k, v in mount.as_dict().items()})
        devices.append(device)
    return devices


def meta_data(server: Server, mappings: list[ShareMapping], extended: bool = False,
              nfs: NfsLink | None = None, layout: str = "mnt") -> dict[str, Any]:
    return {
        "uuid": server.uuid, "name": server.name, "hostname": server.name,
        "project_id": server.project_id, "availability_zone": "nova", "launch_index": 0,
        "meta": server.meta or {}, "devices": share_devices(mappings, extended, nfs, layout),
    }


class GuestReports:
    """What each guest says it has mounted (POST /attachfs/v1/mounts from the guest agent).
    In memory: it only serves hot detach, which waits for the guest to let go of a share."""

    def __init__(self) -> None:
        self._mounted: dict[str, tuple[float, frozenset[str]]] = {}
        self._lock = threading.Lock()

    def record(self, server_uuid: str, tags: frozenset[str]) -> None:
        with self._lock:
            self._mounted[server_uuid] = (time.monotonic(), tags)

    def mounted(self, server_uuid: str) -> tuple[float, frozenset[str]] | None:
        """(when reported, tags) or None if the guest never reported."""
        with self._lock:
            return self._mounted.get(server_uuid)

    def forget(self, server_uuid: str) -> None:
        with self._lock:
            self._mounted.pop(server_uuid, None)


MAX_REPORT = 64 * 1024
MAX_REPORT_LINES = 1024


def config_drive_files(server: Server, mappings: list[ShareMapping],
                       nfs: NfsLink | None = None, layout: str = "mnt") -> dict[str, bytes]:
    """The config drive holds what the metadata service would answer, at both versions."""
    meta = json.dumps(meta_data(server, mappings), indent=1).encode()
    files = {f"openstack/{version}/meta_data.json": meta for version in VERSIONS}
    files[CONFIG_DRIVE_EXTENDED] = json.dumps(meta_data(server, mappings, True, nfs, layout),
                                              indent=1).encode()
    if server.user_data:
        for version in VERSIONS:
            files[f"openstack/{version}/user_data"] = base64.b64decode(server.user_data)
    return files


class _GuestMetadata:
    """What one server's metadata socket answers (each socket serves exactly one server)."""

    def __init__(self, db: Database, server_uuid: str, reports: GuestReports | None,
                 nfs: NfsLink | None) -> None:
        self.db, self.server_uuid, self.reports, self.nfs = db, server_uuid, reports, nfs

    def load(self) -> tuple[Server, list[ShareMapping]] | None:
        with self.db.read() as s:
            server = s.get(Server, self.server_uuid)
            if server is None or server.vm_state == VmState.DELETED:
                return None
            mappings = list(s.scalars(select(ShareMapping)
                                      .where(ShareMapping.instance_uuid == self.server_uuid)
                                      .order_by(ShareMapping.id)))
            return server, mappings

    def server_tags(self) -> frozenset[str]:
        with self.db.read() as s:
            return frozenset(s.scalars(select(ShareMapping.tag)
                                       .where(ShareMapping.instance_uuid == self.server_uuid)))

    async def root(self, _request: Request) -> Response:
        return PlainTextResponse("openstack\n")

    async def versions(self, _request: Request) -> Response:
        return PlainTextResponse("\n".join(VERSIONS) + "\n")

    async def listing(self, request: Request) -> Response:
        if request.path_params["version"] not in VERSIONS:
            return _not_found()
        return PlainTextResponse("meta_data.json\nuser_data\n")

    async def meta_data_json(self, request: Request) -> Response:
        found = self.load()
        if found is None or request.path_params["version"] not in VERSIONS:
            return _not_found()
        extended = EXTENSION_QUERY in request.query_params
        return JSONResponse(meta_data(*found, extended, self.nfs))

    async def user_data(self, request: Request) -> Response:
        found = self.load()
        if found is None or request.path_params["version"] not in VERSIONS or not found[0].user_data:
            return _not_found()
        return Response(base64.b64decode(found[0].user_data),
                        media_type="application/octet-stream")

    async def report_mounts(self, request: Request) -> Response:
        """The guest agent's list of the tags it has mounted (untrusted: bounded, checked)."""
        if self.reports is None:
            return _not_found()
        body = await _read_bounded(request)
        if body is None:
            return PlainTextResponse("413 Request Entity Too Large", status_code=413)
        try:
            lines = [line.strip() for line in body.decode("ascii").split("\n")]
        except UnicodeDecodeError:
            return PlainTextResponse("400 Bad Request: not ASCII", status_code=400)
        lines = [line for line in lines if line]
        if len(lines) > MAX_REPORT_LINES or not all(TAG_PATTERN.fullmatch(t) for t in lines):
            return PlainTextResponse("400 Bad Request: one tag per line", status_code=400)
        # Tags this server does not have are dropped: they can mean nothing to the host.
        self.reports.record(self.server_uuid, frozenset(lines) & self.server_tags())
        return PlainTextResponse("ok\n")


def _not_found() -> Response:
    return PlainTextResponse("404 Not Found", status_code=404)


async def _read_bounded(request: Request) -> bytes | None:
    """The body, or None past MAX_REPORT (read no further than that)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_REPORT:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_REPORT:
            return None
    return bytes(body)


def make_app(db: Database, server_uuid: str, reports: GuestReports | None = None,
             nfs: NfsLink | None = None) -> Starlette:
    guest = _GuestMetadata(db, server_uuid, reports, nfs)
    return Starlette(routes=[
        Route("/attachfs/v1/mounts", guest.report_mounts, methods=["POST"]),
        Route("/", guest.root), Route("/openstack", guest.versions),
        Route("/openstack/", guest.versions),
        Route("/openstack/{version}", guest.listing), Route("/openstack/{version}/", guest.listing),
        Route("/openstack/{version}/meta_data.json", guest.meta_data_json),
        Route("/openstack/{version}/user_data", guest.user_data),
    ])
