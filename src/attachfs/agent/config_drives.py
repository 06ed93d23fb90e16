"""Each server's config drive on this host, observed like any other state: what it must hold
(the rows, as the metadata service would answer them), what it holds (read back from the ISO,
or from a container's directory of the same files), and the rebuild that closes the difference.

A drive is compared by a digest of its files (names and bytes), so a drive that was deleted,
truncated, edited, or left behind by a crash between two writes is rebuilt, and one that is
already right is not rebuilt again (no genisoimage run, no media change in a running guest).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

import pycdlib
from pycdlib.pycdlibexception import PyCdlibException

from attachfs.agent.state import Snapshot
from attachfs.config import Config
from attachfs.core.flavors import server_kind
from attachfs.core.rules import ServerKind
from attachfs.db.tables import Server
from attachfs.errors import BackendError
from attachfs.metadata.app import config_drive_files
from attachfs.paths import under_root
from attachfs.virt.base import PowerState, VirtDriver
from attachfs.virt.configdrive import build_config_drive, write_metadata_dir

log = logging.getLogger(__name__)

ABSENT = ""  # the digest of a drive that is not there, or cannot be read
MAX_DRIVE_BYTES = 16 * 1024 * 1024  # an ISO past this is not ours: unreadable, rebuilt


def files_digest(files: Mapping[str, bytes]) -> str:
    h = hashlib.sha256()
    for name in sorted(files):
        data = files[name]
        h.update(f"{name}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


def read_iso(iso: Path) -> dict[str, bytes] | None:
    """The files of an ISO by their Rock Ridge names, None when it is missing or not one."""
    try:
        if iso.stat().st_size > MAX_DRIVE_BYTES:
            return None
        image = pycdlib.PyCdlib()
        image.open(str(iso))
    except (OSError, PyCdlibException):
        return None
    try:
        files = {}
        for parent, _dirs, names in image.walk(rr_path="/"):
            for name in names:
                path = f"{parent.rstrip('/')}/{name}"
                out = io.BytesIO()
                image.get_file_from_iso_fp(out, rr_path=path)
                files[path.lstrip("/")] = out.getvalue()
        return files
    except (OSError, PyCdlibException):
        return None
    finally:
        image.close()


def read_directory(directory: Path) -> dict[str, bytes] | None:
    """A container's metadata directory as the same files (a symlink is never followed)."""
    if not directory.is_dir() or directory.is_symlink():
        return None
    files = {}
    for path in sorted(directory.rglob("*")):
        name = str(path.relative_to(directory))
        if path.is_symlink():
            files[name] = b"\0symlink"  # never one of ours: the drive differs, and is rewritten
        elif path.is_file():
            files[name] = path.read_bytes()
    return files


def _container(server: Server) -> bool:
    return server_kind(server.flavor_id) == ServerKind.CONTAINER


class ConfigDrives:
    def __init__(self, config: Config, virt: VirtDriver) -> None:
        self.config, self.virt = config, virt
        # ISO path -> (its stat, its digest): an unchanged file is not read again each pass
        self._seen: dict[Path, tuple[tuple[int, int, int], str]] = {}

    def location(self, server: Server) -> Path | None:
        """Where the server's drive lives on this host; None when it has none."""
        if _container(server):
            return under_root(self.config.container_metadata_dir, server.uuid)
        if server.config_drive:
            return under_root(self.config.config_drive_dir, f"{server.uuid}.iso")
        return None

    def files(self, snap: Snapshot) -> dict[str, bytes]:
        return config_drive_files(snap.server, snap.mappings,
                                  layout=self.config.containers.mount_layout)

    def wanted(self, snap: Snapshot) -> str:
        return files_digest(self.files(snap))

    def held(self, server: Server) -> str:
        """The digest of what the drive holds now (ABSENT when it is not there or unreadable)."""
        where = self.location(server)
        if where is None:
            return ABSENT
        if _container(server):
            files = read_directory(where)
            return ABSENT if files is None else files_digest(files)
        try:
            st = os.stat(where)
        except OSError:
            self._seen.pop(where, None)
            return ABSENT
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        seen = self._seen.get(where)
        if seen is not None and seen[0] == key:
            return seen[1]
        files = read_iso(where)
        digest = ABSENT if files is None else files_digest(files)
        self._seen[where] = (key, digest)
        return digest

    def refresh(self, snap: Snapshot, live: bool) -> Path | None:
        """Make the drive hold what the rows say; a running guest gets the new media live.
        A drive that already holds it is left alone."""
        where = self.location(snap.server)
        if where is None:
            return None
        files = self.files(snap)
        if self.held(snap.server) == files_digest(files):
            return where
        uuid = snap.server.uuid
        if _container(snap.server):
            return write_metadata_dir(where, files)  # bound into it: shows at once
        where.parent.mkdir(parents=True, exist_ok=True)
        build_config_drive(where, files)
        log.info("server %s: config drive rebuilt", uuid)
        if live and self.virt.guest_state(uuid) == PowerState.RUNNING:
            try:
                self.virt.set_config_drive(uuid, where)
            except BackendError as exc:
                log.error("server %s: config drive media change failed: %s", uuid, exc)
        return where

    def remove(self, uuid: str) -> None:
        iso = under_root(self.config.config_drive_dir, f"{uuid}.iso")
        iso.unlink(missing_ok=True)
        self._seen.pop(iso, None)
        shutil.rmtree(under_root(self.config.container_metadata_dir, uuid), ignore_errors=True)
