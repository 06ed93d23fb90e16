"""The guest-facing metadata service (the compute API's OpenStack metadata format).

One app instance per server: the server is known from the unix socket the request arrived on
(metadata/sockets.py), never from anything in the request (no header, Host, path or body is
consulted for identity), so a guest cannot ask as another.

What a guest reports (POST /attachfs/v1/mounts) stays untrusted: it is bounded, checked line
by line, reduced to tags this same server has, and only ever tells the host *when* to pull a
device of this server.

Long-poll: `meta_data.json` carries an ETag (the SHA-256 of its body). A GET with
`If-None-Match` of the current ETag and `?wait=N` is held until what this server's metadata says
changes (the agent rings the server's `MetadataBell` after each pass over it), re-read every
`LongPoll.recheck` s as a safety net, and answered 304 after N s (at most `LongPoll.max_wait`).
At most `LongPoll.max_waiting` requests of one guest wait at once (more: 429); a waiting request
whose client went away ends at once.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
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
WAIT_QUERY = "wait"  # `meta_data.json?wait=N`: hold the answer up to N s while it is unchanged


@dataclass(frozen=True)
class LongPoll:
    """What one guest's waiting metadata requests may hold: how long one waits at most (s), how
    many wait at once, how often a waiting one re-reads the rows without being rung (s)."""

    max_wait: float = 60.0
    max_waiting: int = 4
    recheck: float = 5.0
    # A waiting guest told to let go of a share it holds hears it once the answer has stayed
    # the same for detach_quiet s (at most detach_gather s): a client detaching several shares
    # sends its DELETEs back to back (12-15 ms apart here, guest and agent busy), and one
    # round of the guest then lets go of them all, where it took a round per few shares, each
    # 150-250 ms under TCG. An attach (nothing taken away) is answered at once.
    detach_quiet: float = 0.03
    detach_gather: float = 0.25


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
    In memory: it only serves hot detach, which waits for the guest to let go of a share. A
    watcher (the agent) is told of each report as it arrives, so that wait ends at once."""

    def __init__(self) -> None:
        self._mounted: dict[str, tuple[float, frozenset[str]]] = {}
        self._lock = threading.Lock()
        self._watcher: Callable[[str], None] | None = None

    def watch(self, watcher: Callable[[str], None]) -> None:
        """`watcher(server_uuid)` after each report (called on the listener's thread)."""
        self._watcher = watcher

    def record(self, server_uuid: str, tags: frozenset[str]) -> None:
        with self._lock:
            self._mounted[server_uuid] = (time.monotonic(), tags)
        if self._watcher is not None:
            self._watcher(server_uuid)

    def mounted(self, server_uuid: str) -> tuple[float, frozenset[str]] | None:
        """(when reported, tags) or None if the guest never reported."""
        with self._lock:
            return self._mounted.get(server_uuid)

    def forget(self, server_uuid: str) -> None:
        with self._lock:
            self._mounted.pop(server_uuid, None)


MAX_REPORT = 64 * 1024
MAX_REPORT_LINES = 1024


class MetadataBell:
    """Rung (from any thread) when what one server's metadata says may have changed; wakes that
    server's waiting requests, each an asyncio future on its listener's own loop. `rings`
    counts the rings, so a ring between a request's read and its wait is not missed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rings = 0
        self._closed = False
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = set()

    @property
    def rings(self) -> int:
        return self._rings

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def waiting(self) -> int:
        """Requests parked on this bell right now."""
        with self._lock:
            return len(self._waiters)

    def ring(self) -> None:
        with self._lock:
            self._rings += 1
            waiters = list(self._waiters)
        for loop, woken in waiters:
            # RuntimeError: that listener's loop is closed, nobody waits there any more
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_wake, woken)

    def close(self) -> None:
        """The server's listener stops: its waiting requests are answered now, none waits."""
        self._closed = True
        self.ring()

    async def wait(self, since: int, timeout: float) -> bool:
        """Until a ring after `since` (a value of `rings`) or `timeout` s; whether rung."""
        loop = asyncio.get_running_loop()
        woken: asyncio.Future[None] = loop.create_future()
        entry = (loop, woken)
        with self._lock:
            if self._rings != since or self._closed:
                return True
            self._waiters.add(entry)
        try:
            await asyncio.wait_for(woken, timeout)
            return True
        except TimeoutError:
            return False
        finally:
            with self._lock:
                self._waiters.discard(entry)


def _wake(woken: asyncio.Future[None]) -> None:
    if not woken.done():
        woken.set_result(None)


def etag_of(body: bytes) -> str:
    """The entity tag of a metadata answer: the SHA-256 of its body, which a guest can compute
    of the file it saved (busybox sha256sum) without reading any header."""
    return f'"{hashlib.sha256(body).hexdigest()}"'


def _if_none_match(header: str) -> frozenset[str]:
    """The entity tags of an If-None-Match header (weak ones compared as strong: the body is
    all there is). Untrusted: only what it says is compared, nothing of it is echoed."""
    return frozenset(tag.strip().removeprefix("W/") for tag in header.split(",") if tag.strip())


def _wait_of(value: str, bound: float) -> float | None:
    """`?wait=N`: whole seconds, at most `bound`; None when it is not a number."""
    if not value.isascii() or not value.isdigit() or len(value) > 6:
        return None
    return min(float(value), bound)


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
    """What one server's metadata socket answers (each socket serves exactly one server, on one
    event loop: `waiting` needs no lock)."""

    def __init__(self, db: Database, server_uuid: str, reports: GuestReports | None,
                 nfs: NfsLink | None, bell: MetadataBell, long_poll: LongPoll) -> None:
        self.db, self.server_uuid, self.reports, self.nfs = db, server_uuid, reports, nfs
        self.bell, self.long_poll = bell, long_poll
        self.waiting = 0  # requests of this guest held for a change now

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
        if request.path_params["version"] not in VERSIONS:
            return _not_found()
        wait = _wait_of(request.query_params.get(WAIT_QUERY, "0"), self.long_poll.max_wait)
        if wait is None:
            return PlainTextResponse("400 Bad Request: wait is whole seconds", status_code=400)
        known = _if_none_match(request.headers.get("if-none-match", ""))
        extended = EXTENSION_QUERY in request.query_params
        deadline = time.monotonic() + wait
        gone: asyncio.Task[None] | None = None  # ends when the client goes away
        gathered = False  # a detach's quiet window, waited once
        try:
            while True:
                since = self.bell.rings  # before the read: a ring after it is not missed
                found = self.load()
                if found is None:
                    return _not_found()
                answer, etag = self._answer(found, extended)
                if etag not in known and "*" not in known:
                    if gone is not None and not gathered and self._takes_away(found[1]):
                        gathered = True
                        await self._until_quiet(etag, extended)
                        continue  # read again: what the quiet window gathered
                    answer.headers["etag"] = etag
                    return answer
                left = deadline - time.monotonic()
                if left <= 0 or self.bell.closed or gone is not None and gone.done():
                    return Response(status_code=304, headers={"etag": etag})
                if gone is None:
                    if self.waiting >= self.long_poll.max_waiting:
                        return PlainTextResponse("429 Too Many Requests: already waiting",
                                                 status_code=429, headers={"retry-after": "1"})
                    self.waiting += 1
                    gone = asyncio.ensure_future(_client_gone(request))
                rung = asyncio.ensure_future(
                    self.bell.wait(since, min(left, self.long_poll.recheck)))
                try:
                    await asyncio.wait((rung, gone), return_when=asyncio.FIRST_COMPLETED)
                finally:
                    rung.cancel()
        finally:
            if gone is not None:
                gone.cancel()
                self.waiting -= 1

    def _answer(self, found: tuple[Server, list[ShareMapping]],
                extended: bool) -> tuple[JSONResponse, str]:
        """meta_data.json for the rows `found`, and its entity tag."""
        answer = JSONResponse(meta_data(*found, extended, self.nfs))
        return answer, etag_of(bytes(answer.body))

    def _takes_away(self, mappings: list[ShareMapping]) -> bool:
        """Whether the answer no longer lists a share the guest last said it has mounted."""
        report = self.reports.mounted(self.server_uuid) if self.reports is not None else None
        if report is None:
            return False
        listed = {m.tag for m in mappings if m.status in LISTED}
        return bool(report[1] - listed)

    async def _until_quiet(self, etag: str, extended: bool) -> None:
        """Until the answer has stayed `etag` for detach_quiet s, at most detach_gather s."""
        quiet, step = self.long_poll.detach_quiet, self.long_poll.detach_quiet / 6
        started = still_since = time.monotonic()
        while (now := time.monotonic()) - still_since < quiet and \
                now - started < self.long_poll.detach_gather:
            await asyncio.sleep(step)
            found = self.load()
            if found is None:
                return
            now_etag = self._answer(found, extended)[1]
            if now_etag != etag:
                etag, still_since = now_etag, time.monotonic()

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


async def _client_gone(request: Request) -> None:
    """Returns when the client disconnects (a GET's body, if any, is passed over)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


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
             nfs: NfsLink | None = None, bell: MetadataBell | None = None,
             long_poll: LongPoll = LongPoll()) -> Starlette:
    """`bell`: what the agent rings when this server's rows may have changed (None: a bell of
    its own, which nothing rings: waiting requests see a change by their re-reads only)."""
    guest = _GuestMetadata(db, server_uuid, reports, nfs, bell or MetadataBell(), long_poll)
    return Starlette(routes=[
        Route("/attachfs/v1/mounts", guest.report_mounts, methods=["POST"]),
        Route("/", guest.root), Route("/openstack", guest.versions),
        Route("/openstack/", guest.versions),
        Route("/openstack/{version}", guest.listing), Route("/openstack/{version}/", guest.listing),
        Route("/openstack/{version}/meta_data.json", guest.meta_data_json),
        Route("/openstack/{version}/user_data", guest.user_data),
    ])
