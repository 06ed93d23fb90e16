"""The NFSv4.1 client side of attachfs's FUSE NFS mount (storage/nfs_fuse.py): nfs-rs clients
that are replaced when their connection is lost, the check that an export can be mounted, and
the errno a FUSE caller gets for an nfs-rs failure.

nfs-rs does not recover from a server that lost its session (a restart): its client then fails
every call (the first one after about 5 s, or the operation timeout if shorter). So a call that
fails with the connection makes a new client (`Connection`), and the FUSE side retries once
when that is safe.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import nfs_rs

log = logging.getLogger("attachfs-nfs-fuse")
# A failed reconnection is not tried again sooner: calls meanwhile fail at once.
RECONNECT_INTERVAL = 1.0
# NFS errors that nfs-rs may raise without an errno.
_CODE_ERRNO = {
    "NFS4ERR_BADNAME": errno.EINVAL,
    "NFS4ERR_INVAL": errno.EINVAL,
    "NFS4ERR_NOTSUPP": errno.EOPNOTSUPP,
    "NFS4ERR_ROFS": errno.EROFS,
    "NFS4ERR_NOSPC": errno.ENOSPC,
    "NFS4ERR_DQUOT": errno.EDQUOT,
    "NFS4ERR_FBIG": errno.EFBIG,
    "NFS4ERR_STALE": errno.ESTALE,
    "NFS4ERR_NOTEMPTY": errno.ENOTEMPTY,
    "NFS4ERR_XDEV": errno.EXDEV,
    "NFS4ERR_MLINK": errno.EMLINK,
    "NFS4ERR_NAMETOOLONG": errno.ENAMETOOLONG,
}
# Failures of the connection rather than of the operation: the client may be beyond recovery.
# (After a server restart nfs-rs 0.8.7 raises NfsRetryableError, then NfsOperationOutcomeError
# "DefiniteFailure … recovery=Retry" for every call, forever; measured.)
LOST = (TimeoutError, ConnectionError, nfs_rs.NfsRetryableError,
         nfs_rs.NfsOperationOutcomeError, nfs_rs.NfsStateLostError, nfs_rs.NfsClientClosedError)


def errno_of(exc: BaseException) -> int:
    """The errno a FUSE caller gets for an nfs-rs (or other) exception. A server that does not
    answer is EIO, not ETIMEDOUT: to a program, a mount that fails its I/O."""
    if isinstance(exc, LOST):
        return errno.EIO
    if isinstance(exc, nfs_rs.NfsClosedResourceError):
        return errno.EBADF
    code = getattr(exc, "errno", None)
    if isinstance(code, int) and code > 0:
        return code
    name = getattr(exc, "code_name", None)
    if isinstance(name, str) and name in _CODE_ERRNO:
        return _CODE_ERRNO[name]
    if isinstance(exc, NotImplementedError):
        return errno.EOPNOTSUPP
    if isinstance(exc, ValueError):  # nfs-rs refuses a name before asking the server
        return errno.EINVAL
    return errno.EIO


def one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def close_client(client: nfs_rs.Client) -> None:
    try:
        client.close()
    except Exception as exc:  # noqa: BLE001 - closing a client we are done with: say it, go on
        log.info("closing an NFS client: %s", one_line(exc))


class Connection:
    """An nfs-rs client, replaced by a new one (`connect()` again) when a call says the
    connection is lost. `generation` counts the replacements: a file opened on an older client
    is reopened."""

    def __init__(self, connect: Callable[[], nfs_rs.Client], what: str) -> None:
        self._connect = connect
        self.what = what
        self.client = connect()
        self.generation = 0
        self._lost = False
        self._failed_at = -math.inf
        self._lock = threading.Lock()
        self.linked: Connection | None = None

    def ready(self) -> int:
        """The generation of a client believed usable: a new one if the last one was lost
        (ConnectionError when the server still cannot be reached)."""
        if self._lost:
            self._reconnect()
        return self.generation

    def lost(self, generation: int) -> None:
        """A call made on `generation` failed with the connection: replace that client, and
        the linked connection's (to the same server, surely lost as well)."""
        if generation == self.generation:
            self._lost = True
            if self.linked is not None:
                self.linked._lost = True

    def _reconnect(self) -> None:
        with self._lock:
            if not self._lost:
                return  # another thread did
            if time.monotonic() - self._failed_at < RECONNECT_INTERVAL:
                raise ConnectionError(f"{self.what}: reconnecting failed less than "
                                      f"{RECONNECT_INTERVAL:.0f}s ago")
            try:
                client = self._connect()
            except Exception:
                self._failed_at = time.monotonic()
                raise
            old, self.client = self.client, client
            self.generation += 1
            self._lost = False
        log.warning("%s: reconnected (client %d)", self.what, self.generation)
        # Closing a client whose server forgot it waits for the operation timeout.
        threading.Thread(target=close_client, args=(old,), daemon=True).start()

    def close(self) -> None:
        close_client(self.client)


class MountError(Exception):
    """Why the export cannot be mounted, in one line naming the server and the export."""


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def connect(server: str, port: int, export: str, timeout: float
            ) -> tuple[Connection, Connection, str]:
    """(pseudo-root connection, export connection, the export's path from the pseudo root),
    after checking that the export is a directory. MountError otherwise."""
    where = f"NFS server {server}:{port}"
    prefix = export.strip("/")
    if not export.startswith("/") or not prefix or ".." in prefix.split("/"):
        raise MountError(f"export {export!r} of {where} is not an absolute path below the "
                         f"server's root")
    options: dict[str, Any] = {
        "versions": ["4.1"], "connect_timeout": timeout, "operation_timeout": timeout,
        # a reserved source port needs root; a server that insists on one refuses others
        "noresvport": os.geteuid() != 0}
    base = f"nfs://{_url_host(server)}:{port}"

    def to_root() -> nfs_rs.Client:
        return nfs_rs.Client.connect(f"{base}/", **options)

    def to_export() -> nfs_rs.Client:
        return nfs_rs.Client.connect(f"{base}/{quote(prefix)}", **options)

    try:
        conn = Connection(to_root, f"{server}:{port}")
    except Exception as exc:
        raise MountError(f"cannot connect to {where} (export {export}): "
                         f"{one_line(exc)}") from exc
    try:
        try:
            info = conn.client.stat(prefix)
        except FileNotFoundError as exc:
            raise MountError(f"export {export} not found on {where}") from exc
        except Exception as exc:
            raise MountError(f"cannot look up export {export} on {where}: "
                             f"{one_line(exc)}") from exc
        if info.type != nfs_rs.FileType.DIRECTORY:
            raise MountError(f"export {export} on {where} is not a directory "
                             f"({info.type.value})")
        try:
            export_conn = Connection(to_export, f"{server}:{port}{export}")
            conn.linked, export_conn.linked = export_conn, conn
        except Exception as exc:
            raise MountError(f"cannot connect to export {export} of {where}: "
                             f"{one_line(exc)}") from exc
    except BaseException:
        conn.close()
        raise
    return conn, export_conn, prefix
