"""One unix socket per server on this host, each served by its own metadata app.

The guest's metadata network helper (virt/metadata_net.py) relays each of the guest's TCP
connections to 169.254.169.254:80 to the server's socket, so the socket a request arrives on *is*
the server's identity.

What one guest can make its listener hold is bounded (`MetadataLimits`, the [metadata] config):
at most `max_connections` open connections (one more is closed at once, unanswered), a request
must arrive whole within `request_timeout` s of its first byte (or of the connection, for the
first one: a connection that sends nothing is closed), an idle keep-alive connection is closed
after `keep_alive_timeout` s, request line + headers at most `max_header_bytes` (more: 431), a
body at most `max_body_bytes` (more: 413). A request that waits for a change (long-poll,
metadata/app.py) is held at most `long_poll.max_wait` s, and at most `long_poll.max_waiting` of
one guest's requests wait at once.

The agent rings a server's bell (`changed`) after each pass over it, which answers that guest's
waiting request at once if what its metadata says changed; the guest's reports are passed to the
agent's watcher (`reports.watch`) as they arrive.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from attachfs.config import MetadataConfig
from attachfs.db.engine import Database
from attachfs.metadata.app import GuestReports, LongPoll, MetadataBell, make_app
from attachfs.paths import under_root

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MetadataLimits:
    max_connections: int = 16
    request_timeout: float = 5.0
    keep_alive_timeout: float = 5.0
    max_header_bytes: int = 8192
    max_body_bytes: int = 65536
    long_poll: LongPoll = LongPoll()

    @classmethod
    def from_config(cls, config: MetadataConfig) -> MetadataLimits:
        return cls(max_connections=config.max_connections, request_timeout=config.request_timeout,
                   keep_alive_timeout=config.keep_alive_timeout,
                   max_header_bytes=config.max_header_bytes, max_body_bytes=config.max_body_bytes)


class _GuardedH11(H11Protocol):
    """uvicorn's h11 protocol with a per-listener connection cap and a whole-request deadline."""

    limits = MetadataLimits()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline: asyncio.TimerHandle | None = None
        if len(self.connections) > self.limits.max_connections:
            transport.abort()  # over the cap: closed unanswered, costs nothing more
            return
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._deadline is None:
            self._arm()  # first bytes of a further request on a kept-alive connection
        if self.conn.their_state is h11.IDLE and self._head_too_large(data):
            self._disarm()
            self.transport.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                                 b"content-length: 0\r\nconnection: close\r\n\r\n")
            self.transport.close()
            return
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE and self.conn.their_state is not h11.SEND_BODY:
            self._disarm()  # the whole request is in (or the connection is closing)

    def _head_too_large(self, data: bytes) -> bool:
        """Request line + headers over the cap, whether they came in pieces or at once (h11's
        own limit only counts an *incomplete* header block)."""
        pending = self.conn.trailing_data[0] + data  # h11 keeps at most the cap buffered
        end = pending.find(b"\r\n\r\n")
        return (len(pending) if end < 0 else end) > self.limits.max_header_bytes

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._disarm()  # uvicorn's keep-alive timer runs from here until the next request

    def _arm(self) -> None:
        self._deadline = self.loop.call_later(self.limits.request_timeout, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.abort()


class _BodyLimit:
    """ASGI middleware: a request body over `limit` bytes gets 413 (declared or streamed). The
    body is read whole (at most `limit` bytes) before the app runs, then handed to it."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and (not value.isdigit() or int(value) > self.limit):
                await _too_large(send)
                return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            body += message.get("body", b"")
            if len(body) > self.limit:
                await _too_large(send)
                return
            if not message.get("more_body", False):
                break
        whole = {"type": "http.request", "body": bytes(body), "more_body": False}
        handed = False

        async def replay() -> Any:
            nonlocal handed
            if not handed:
                handed = True
                return whole
            return await receive()

        await self.app(scope, replay, send)


async def _too_large(send: Any) -> None:
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"text/plain"), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": b"request body too large\n"})


def protocol_class(limits: MetadataLimits) -> type[H11Protocol]:
    return type("MetadataH11Protocol", (_GuardedH11,), {"limits": limits})


def uvicorn_config(app: Any, path: Path, limits: MetadataLimits) -> uvicorn.Config:
    return uvicorn.Config(
        _BodyLimit(app, limits.max_body_bytes), uds=str(path), log_level="warning",
        access_log=False, lifespan="off", http=protocol_class(limits),
        # one more than the cap: uvicorn answers 503 once *this* count is reached, and the
        # connection asking is itself counted
        limit_concurrency=limits.max_connections + 1,
        timeout_keep_alive=max(1, round(limits.keep_alive_timeout)),
        h11_max_incomplete_event_size=limits.max_header_bytes,
        backlog=4 * limits.max_connections)


class _Listener:
    def __init__(self, server: uvicorn.Server) -> None:
        self.server = server
        self.thread = threading.Thread(target=server.run, name="metadata", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)


class MetadataSockets:
    def __init__(self, db: Database, socket_dir: Path, enabled: bool = True,
                 limits: MetadataLimits | None = None) -> None:
        self.db = db
        self.enabled = enabled  # disabled: paths are handed out, nothing listens on them
        self.socket_dir = socket_dir
        self.limits = limits or MetadataLimits()
        self._listeners: dict[str, _Listener] = {}
        self._bells: dict[str, MetadataBell] = {}
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
            bell = self._bells.setdefault(server_uuid, MetadataBell())
            app = make_app(self.db, server_uuid, self.reports, bell=bell,
                           long_poll=self.limits.long_poll)
            config = uvicorn_config(app, path, self.limits)
            self._listeners[server_uuid] = _Listener(uvicorn.Server(config))
        deadline = time.monotonic() + 5
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        path.chmod(0o600)
        return path

    def serving(self, server_uuid: str) -> bool:
        """Is the server's socket served now (observed: a listener thread that died is not)?"""
        if not self.enabled:
            return True
        with self._lock:
            listener = self._listeners.get(server_uuid)
        return listener is not None and listener.thread.is_alive() \
            and self.socket_path(server_uuid).exists()

    def changed(self, server_uuid: str) -> None:
        """What the server's metadata says may have changed (the agent ran a pass over it):
        its guest's waiting request looks again now."""
        with self._lock:
            bell = self._bells.get(server_uuid)
        if bell is not None:
            bell.ring()

    def remove(self, server_uuid: str) -> None:
        with self._lock:
            listener = self._listeners.pop(server_uuid, None)
            bell = self._bells.pop(server_uuid, None)
        if bell is not None:
            bell.close()  # waiting requests answer now: the listener's shutdown waits for them
        if listener:
            listener.stop()
        self.reports.forget(server_uuid)
        path = self.socket_path(server_uuid)
        path.unlink(missing_ok=True)
        # what a guest that powered itself off left of its network (see metadata_net_supervisor)
        for leftover in ("sock", "pid"):
            under_root(self.socket_dir, "net", f"{server_uuid}.{leftover}").unlink(missing_ok=True)

    def sync(self, server_uuids: set[str]) -> None:
        """Stop serving servers no longer on this host. Serving starts in a server's own pass
        (its power-on, or the repair of a running server's missing socket): a listener for
        each stopped server was a thread and an event loop each (measured: 313 stopped
        servers, 321 threads, 0.18 of a core while idle)."""
        for uuid in set(self._listeners) - server_uuids:
            self.remove(uuid)

    def close(self) -> None:
        for uuid in list(self._listeners):
            self.remove(uuid)
