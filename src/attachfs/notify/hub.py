"""The notifications, also handed to the API's listeners (the web console's event stream,
api/events.py) as they are sent: the same events, for anyone subscribed.

In one process (`attachfs serve` on SQLite) the agent's notifier hands each change to the hub
itself. On PostgreSQL an agent may run anywhere: it announces each change on the database
(NOTIFY attachfs_changes, db/doorbell.py), and each API process's hub LISTENs, from its first
subscriber on.

A listener is an asyncio queue on its own event loop; `publish` may be called from any thread
(the agent's workers). A listener that does not keep up loses events (its queue is bounded),
never blocks the agent: the console then reloads what it shows."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from attachfs.notify.base import Notifier

QUEUE_SIZE = 256


class Feed(Protocol):
    def stop(self) -> None: ...


@dataclass(frozen=True)
class Change:
    """What changed, as a notification says it: which server (and its project), what."""

    server: str
    project_id: str
    event_type: str

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Change | None:
        """None for anything that is not one (a NOTIFY anyone with the database may send)."""
        try:
            data = json.loads(text)
            return cls(str(data["server"]), str(data["project_id"]), str(data["event_type"]))
        except (ValueError, TypeError, KeyError):
            return None


def change_in(event_type: str, payload: dict[str, Any]) -> Change | None:
    """The server a versioned notification is about, if it is about one."""
    data = payload.get("nova_object.data", {})
    if isinstance(data, dict) and data.get("uuid"):
        return Change(str(data["uuid"]), str(data.get("tenant_id") or ""), event_type)
    return None


class EventHub:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._listeners: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Queue[Change]]] = {}
        self._next = 0
        self._feed: Callable[[EventHub], Feed] | None = None
        self._feeding: Feed | None = None

    def fed_by(self, start: Callable[[EventHub], Feed]) -> None:
        """`start(hub)` is called once, at the first subscription: what publishes to it from
        elsewhere (the database's announcements), started only where someone listens."""
        self._feed = start

    def close(self) -> None:
        """Stop what feeds it (its listeners simply hear nothing more)."""
        with self._lock:
            feeding, self._feed, self._feeding = self._feeding, None, None
        if feeding is not None:
            feeding.stop()

    def subscribe(self) -> tuple[int, asyncio.Queue[Change]]:
        """A queue of changes for the calling event loop, and its key for `unsubscribe`."""
        queue: asyncio.Queue[Change] = asyncio.Queue(QUEUE_SIZE)
        with self._lock:
            if self._feed is not None and self._feeding is None:
                self._feeding = self._feed(self)
            self._next += 1
            self._listeners[self._next] = (asyncio.get_running_loop(), queue)
            return self._next, queue

    def unsubscribe(self, key: int) -> None:
        with self._lock:
            self._listeners.pop(key, None)

    def publish(self, change: Change) -> None:
        with self._lock:
            listeners = list(self._listeners.values())
        for loop, queue in listeners:
            try:
                loop.call_soon_threadsafe(_offer, queue, change)
            except RuntimeError:  # its loop has closed; it unsubscribes on its way out
                continue


def _offer(queue: asyncio.Queue[Change], change: Change) -> None:
    if not queue.full():
        queue.put_nowait(change)


class Broadcasting:
    """A Notifier that sends through `inner` and hands each notification about a server to
    `deliver` (a hub's publish, or the database's announcement)."""

    def __init__(self, inner: Notifier, deliver: Callable[[Change], None]) -> None:
        self.inner, self.deliver = inner, deliver

    def notify(self, event_type: str, payload: dict[str, Any], priority: str = "INFO") -> None:
        self.inner.notify(event_type, payload, priority)
        if (change := change_in(event_type, payload)) is not None:
            self.deliver(change)
