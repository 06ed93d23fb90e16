"""Each guest's private link to the host's NFS server (transport `nfs`).

The guest's network helper (virt/metadata_net.py) forwards the guest's TCP connections to
169.254.169.254:2049, and nothing else of NFS, to a unix socket of that guest's own
(``[metadata dir]/nfs/<uuid>.sock``). Here, one listener per running guest on that socket
relays each connection to the host's NFS-Ganesha on 127.0.0.1, connecting *from an address of
127/8 that is this server's alone* (127.77.x.y, kept in ``<dir>/<uuid>.addr`` until the server
is deleted: access rules of transport direct name it, so it outlives a stop). Ganesha exports
each share to exactly that address (virt/ganesha.py), so what a guest can mount is decided by
which socket its packets arrived on, never by anything the guest sends: another guest on the
same host reaches the same server from another address and sees none of these exports.

VSOCK would carry the same link with no helper (a vsock listener per guest CID, relayed the
same way); this host has no vhost-vsock (PLATFORM.md), so the link is this relay, behind the
same two calls (`ensure`, `remove`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

log = logging.getLogger(__name__)

NETWORK = ipaddress.ip_network("127.77.0.0/16")
MAX_CONNECTIONS = 16  # per guest: an NFS client keeps one or two
CHUNK = 256 * 1024


class NfsLinks:
    def __init__(self, directory: Path, server: Callable[[], tuple[str, int]]) -> None:
        """directory: the guests' addresses; server: where the NFS server listens now."""
        self.dir = Path(directory)
        self.server = server
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listeners: dict[str, tuple[Path, asyncio.AbstractServer]] = {}
        self._open: dict[str, int] = {}

    # ---- addresses ---------------------------------------------------------------------------
    def address(self, uuid: str) -> str:
        """The guest's own source address (allocated once, kept until `remove`)."""
        with self._lock:
            self.dir.mkdir(parents=True, exist_ok=True)
            path = self.dir / f"{uuid}.addr"
            with contextlib.suppress(OSError):
                return path.read_text().strip()
            taken = set()
            for other in self.dir.glob("*.addr"):
                with contextlib.suppress(OSError):
                    taken.add(other.read_text().strip())
            for host in NETWORK.hosts():
                if host.packed[-1] in (0, 255) or str(host) in taken:
                    continue
                tmp = path.with_suffix(".tmp")
                tmp.write_text(f"{host}\n")
                tmp.replace(path)
                return str(host)
            raise RuntimeError("no free NFS link address")

    # ---- listeners ---------------------------------------------------------------------------
    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="nfs-links", daemon=True).start()
                self._loop = loop
            return self._loop

    def _call(self, coro: object) -> object:
        loop = self._ensure_loop()
        fut: Future[object] = asyncio.run_coroutine_threadsafe(coro, loop)  # type: ignore[arg-type]
        return fut.result(timeout=30)

    def serving(self, uuid: str) -> bool:
        entry = self._listeners.get(uuid)
        return entry is not None and entry[0].exists()

    def ensure(self, uuid: str, socket_path: Path) -> None:
        """The guest's socket is listened on (again after an agent restart). Idempotent."""
        if self.serving(uuid):
            return
        address = self.address(uuid)
        self._call(self._listen(uuid, socket_path, address))

    async def _listen(self, uuid: str, path: Path, address: str) -> None:
        old = self._listeners.pop(uuid, None)
        if old is not None:
            old[1].close()
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.unlink(missing_ok=True)

        async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._relay(uuid, address, reader, writer)

        server = await asyncio.start_unix_server(relay, path=str(path))
        os.chmod(path, 0o600)
        self._listeners[uuid] = (path, server)

    async def _relay(self, uuid: str, address: str, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        if self._open.get(uuid, 0) >= MAX_CONNECTIONS:
            writer.close()
            return
        self._open[uuid] = self._open.get(uuid, 0) + 1
        try:
            host, port = self.server()
            up_reader, up_writer = await asyncio.open_connection(host, port,
                                                                 local_addr=(address, 0))
        except OSError as exc:
            log.warning("guest %s: NFS link cannot reach the server: %s", uuid, exc)
            self._open[uuid] -= 1
            writer.close()
            return
        try:
            await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))
        finally:
            self._open[uuid] -= 1
            for w in (writer, up_writer):
                w.close()

    def remove(self, uuid: str) -> None:
        """The guest stopped: its listener and socket go (its address stays the server's)."""
        entry = self._listeners.pop(uuid, None)
        if entry is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(entry[1].close)
            entry[0].unlink(missing_ok=True)

    def release(self, uuid: str) -> None:
        """The server is deleted: its address is free again."""
        self.remove(uuid)
        (self.dir / f"{uuid}.addr").unlink(missing_ok=True)

    def listening(self) -> set[str]:
        return set(self._listeners)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            if writer.can_write_eof():
                writer.write_eof()
