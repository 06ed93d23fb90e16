"""libvirt's domain events, turned into "look at server X now" for the agent.

The agent would otherwise learn that a device left a guest, or that a guest stopped, only when
it next looks (a requeue after a second, or the resync). With these events a hot detach is
finished as soon as libvirt has removed the device, and seven devices removed together are
seen together. Polling stays as the safety net: an event lost while libvirtd restarts only
costs that delay.

One daemon thread runs libvirt's default event loop on a connection of its own; when libvirtd
goes away it reconnects with capped backoff (and reports every guest as changed, since events
were missed meanwhile).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable

import libvirt

log = logging.getLogger(__name__)
_LOOP_LOCK = threading.Lock()
_loop_registered = False
_RECONNECT_BASE, _RECONNECT_CAP = 0.5, 15.0

# What changes the actual state the agent observes.
_EVENTS = (
    libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED,  # a hot unplug finished
    libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVAL_FAILED,  # the guest refused it
    libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,  # started, stopped, crashed, shut down
)


def _register_loop() -> None:
    """libvirt's default event implementation, once per process, before the connection."""
    global _loop_registered
    with _LOOP_LOCK:
        if not _loop_registered:
            libvirt.virEventRegisterDefaultImpl()
            _loop_registered = True


class DomainEvents:
    """Calls `changed(uuid)` (from its own thread; keep it quick) for each event of a guest that
    `ours(domain)` accepts, and `changed(None)` after a reconnect (events may have been lost)."""

    def __init__(self, uri: str, ours: Callable[[libvirt.virDomain], bool],
                 changed: Callable[[str | None], None]) -> None:
        self.uri, self.ours, self.changed = uri, ours, changed
        self._stop = threading.Event()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="libvirt-events", daemon=True)

    def start(self) -> None:
        _register_loop()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        # A timer keeps virEventRunDefaultImpl from blocking forever, so stop and a lost
        # connection are noticed within a second.
        libvirt.virEventAddTimeout(1000, lambda _timer, _opaque: None, None)
        failures = 0
        while not self._stop.is_set():
            try:
                conn = self._connect()
            except libvirt.libvirtError as e:
                failures += 1
                delay = min(_RECONNECT_CAP, _RECONNECT_BASE * 2 ** (failures - 1))
                if failures == 1:
                    log.warning("libvirt events unavailable (%s); retrying", e)
                self._stop.wait(delay)
                continue
            if failures:
                self.changed(None)
            failures = 0
            while not self._stop.is_set() and not self._closed.is_set():
                libvirt.virEventRunDefaultImpl()
            self._closed.clear()
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()
            failures = 1  # reconnect, then report everything as changed
            log.warning("libvirt event connection lost; reconnecting")

    def _connect(self) -> libvirt.virConnect:
        conn = libvirt.open(self.uri)
        conn.registerCloseCallback(lambda _c, _reason, _opaque: self._closed.set(), None)
        conn.setKeepAlive(5, 3)
        for event in _EVENTS:
            conn.domainEventRegisterAny(None, event, self._on_event, None)
        return conn

    def _on_event(self, _conn: libvirt.virConnect, dom: libvirt.virDomain,
                  *_details: object) -> None:
        try:
            if self.ours(dom):
                self.changed(dom.UUIDString())
        except libvirt.libvirtError:
            pass  # the guest is already gone again: the next look sees it
        except Exception:  # noqa: BLE001 - never let a callback end the event loop
            log.exception("handling a libvirt event")
