"""The notifications, also handed to this process's listeners (the web console's event stream,
api/events.py) as they are sent: the same events, in-process, for anyone subscribed.

A listener is an asyncio queue on its own event loop; `publish` may be called from any thread
(the agent's workers). A listener that does not keep up loses events (its queue is bounded),
never blocks the agent: the console then reloads what it shows."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Any

from attachfs.notify.base import Notifier

QUEUE_SIZE = 256


@dataclass(frozen=True)
class Change:
    """What changed, as a notification says it: which server (and its project), what."""

    server: str
    project_id: str
    event_type: str


class EventHub:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._listeners: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Queue[Change]]] = {}
        self._next = 0

    def subscribe(self) -> tuple[int, asyncio.Queue[Change]]:
        """A queue of changes for the calling event loop, and its key for `unsubscribe`."""
        queue: asyncio.Queue[Change] = asyncio.Queue(QUEUE_SIZE)
        with self._lock:
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
    """A Notifier that sends through `inner` and hands each instance notification to `hub`."""

    def __init__(self, inner: Notifier, hub: EventHub) -> None:
        self.inner, self.hub = inner, hub

    def notify(self, event_type: str, payload: dict[str, Any], priority: str = "INFO") -> None:
        self.inner.notify(event_type, payload, priority)
        data = payload.get("nova_object.data", {})
        if isinstance(data, dict) and data.get("uuid"):
            self.hub.publish(Change(str(data["uuid"]), str(data.get("tenant_id") or ""),
                                    event_type))
