"""One unix socket per server on this host, each served by its own metadata app.

The libvirt driver relays the guest's 169.254.169.254:80 to the server's socket, so the socket
a request arrives on *is* the server's identity.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import uvicorn

from attachfs.db.engine import Database
from attachfs.metadata.app import GuestReports, make_app
from attachfs.paths import under_root

log = logging.getLogger(__name__)


class _Listener:
    def __init__(self, server: uvicorn.Server) -> None:
        self.server = server
        self.thread = threading.Thread(target=server.run, name="metadata", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)


class MetadataSockets:
    def __init__(self, db: Database, socket_dir: Path, enabled: bool = True) -> None:
        self.db = db
        self.enabled = enabled  # disabled: paths are handed out, nothing listens on them
        self.socket_dir = socket_dir
        self._listeners: dict[str, _Listener] = {}
        self.reports = GuestReports()
        self._lock = threading.Lock()

    def socket_path(self, server_uuid: str) -> Path:
        return under_root(self.socket_dir, f"{server_uuid}.sock")

    def ensure(self, server_uuid: str) -> Path:
        """Serve the server's socket (idempotent); returns its path once it accepts."""
        path = self.socket_path(server_uuid)
        if not self.enabled:
            return path
        with self._lock:
            if server_uuid in self._listeners and self._listeners[server_uuid].thread.is_alive():
                return path
            self.socket_dir.mkdir(parents=True, exist_ok=True)
            path.unlink(missing_ok=True)
            config = uvicorn.Config(make_app(self.db, server_uuid, self.reports), uds=str(path),
                                    log_level="warning", access_log=False, lifespan="off")
            self._listeners[server_uuid] = _Listener(uvicorn.Server(config))
        deadline = time.monotonic() + 5
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        path.chmod(0o600)
        return path

    def remove(self, server_uuid: str) -> None:
        with self._lock:
            listener = self._listeners.pop(server_uuid, None)
        if listener:
            listener.stop()
        self.reports.forget(server_uuid)
        self.socket_path(server_uuid).unlink(missing_ok=True)

    def sync(self, server_uuids: set[str]) -> None:
        for uuid in set(self._listeners) - server_uuids:
            self.remove(uuid)
        for uuid in server_uuids:
            self.ensure(uuid)

    def close(self) -> None:
        for uuid in list(self._listeners):
            self.remove(uuid)
