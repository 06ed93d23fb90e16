"""The supervised agent loop: one serial queue per server, passes on a worker pool.

- A server is never reconciled by two workers at once; a request for it while a pass runs is
  remembered and run right after.
- Each pass returns what to do next (agent/reconciler.py): done, look again after a delay, or
  retry with capped exponential backoff. An exception from a pass (the database or libvirt
  gone) is caught, logged once per streak with its context, counted in the health record and
  retried with backoff: nothing ends the loop.
- Repair only enqueues: at start and every resync interval every server of this host, every
  guest without a server and the host itself (mounts nothing uses, virtiofsd orphans) get a
  pass.
- The guest side: after each pass over a server its metadata service is rung (a guest waiting
  for a change is answered at once), and a guest's mount report brings forward the pass that
  waits for it (a hot detach waits for the guest to unmount).
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from attachfs.agent import hosts
from attachfs.agent.health import AgentHealth, register
from attachfs.agent.orphans import kill_orphaned_virtiofsd
from attachfs.agent.reconciler import Next, PassResult, Reconciler
from attachfs.core.model import AttachmentStatus, VmState
from attachfs.db import doorbell
from attachfs.db.tables import Host, Server, ShareMapping
from attachfs.errors import BackendError

log = logging.getLogger(__name__)
HOST = "host"  # the queue key of host-wide repair (mounts and daemons no server claims)
TRANSITIONAL = (AttachmentStatus.ATTACHING, AttachmentStatus.DETACHING)


def pass_backoff(failures: int, base: float, cap: float) -> float:
    return min(cap, base * 2 ** max(failures - 1, 0))


class Agent:
    def __init__(self, reconciler: Reconciler) -> None:
        self.r = reconciler
        self.config = reconciler.config
        self.health = AgentHealth(reconciler.host)
        register(self.health)
        self._wake = threading.Event()
        self._rung = threading.Event()  # a look for work is asked (else: every poll interval)
        self._stop = threading.Event()
        self._repair_now = threading.Event()  # hypervisor events may have been missed
        self._lock = threading.Lock()
        self._due: dict[str, float] = {}  # queue key -> monotonic time its pass is due
        self._seen: dict[str, tuple[object, ...]] = {}  # what the rows said when last queued
        self._failures: dict[str, int] = {}  # failed passes in a row, per key
        self._retrying: set[str] = set()  # keys whose due time is a backoff: kept unless urgent
        # keys whose passes keep asking to look again: since when, whether it was said, and
        # what for (waiting for something else starts a new streak)
        self._waiting: dict[str, tuple[float, bool, str]] = {}
        self._inflight: set[str] = set()
        self._again: set[str] = set()  # asked for while in flight
        self._pool = ThreadPoolExecutor(self.config.agent.workers, thread_name_prefix="reconcile")

    def wake(self) -> None:
        """Desired state changed (the API, in this process or by the doorbell): look now."""
        self._rung.set()
        self._wake.set()

    def guest_changed(self, uuid: str | None) -> None:
        """A hypervisor event (a device left a guest, a guest stopped): look at that server
        now rather than at its next requeue; None: events were missed, look at everything."""
        if uuid is None:
            self._repair_now.set()
        else:
            self.enqueue(uuid, urgent=True)
        self._wake.set()

    def guest_reported(self, uuid: str) -> None:
        """The guest sent its mount report: a pass of that server already due (one waiting for
        the guest to unmount is requeued every POLL_GUEST s) runs now. A server with no pass
        due, or backing off after an error, is left alone: a report changes no plan there."""
        with self._lock:
            due = uuid in self._inflight or (uuid in self._due and uuid not in self._retrying)
        if due:
            self.enqueue(uuid, urgent=True)
            self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    # ---- the queue -----------------------------------------------------------------------------
    def enqueue(self, key: str, after: float = 0.0, *, urgent: bool = False,
                exact: bool = False) -> None:
        """Run `key`'s pass in `after` s. A key already due sooner keeps its time; one backing
        off keeps its later time unless `urgent` (the rows changed: a new request). `exact`:
        this time and no other (what a pass asked for)."""
        due = time.monotonic() + after
        with self._lock:
            if key in self._inflight:
                if urgent:
                    self._again.add(key)
                return
            current = self._due.get(key)
            if exact or current is None or due < current and (
                    urgent or key not in self._retrying):
                self._due[key] = due
            self.health.queued = len(self._due)

    def _planned(self, key: str) -> bool:
        with self._lock:
            return key in self._due or key in self._inflight

    def _take_due(self) -> list[str]:
        now = time.monotonic()
        with self._lock:
            ready = [k for k, t in self._due.items() if t <= now and k not in self._inflight]
            for key in ready:
                del self._due[key]
                self._inflight.add(key)
            return ready

    def _next_due(self) -> float:
        with self._lock:
            return min(self._due.values(), default=float("inf"))

    # ---- what needs work -----------------------------------------------------------------------
    def dirty_servers(self) -> dict[str, tuple[object, ...]]:
        """Servers whose desired state is not yet their actual state, with what their rows say
        (a change of it is a new request)."""
        with self.r.db.read() as s:
            busy = select(ShareMapping.instance_uuid).where(ShareMapping.status.in_(TRANSITIONAL))
            servers = list(s.execute(select(Server.uuid, Server.generation, Server.task_state)
                                     .where(Server.host == self.r.host,
                                            Server.vm_state != VmState.DELETED,
                                            (Server.generation != Server.observed_generation)
                                            | Server.task_state.is_not(None)
                                            | Server.uuid.in_(busy))))
            rows = s.execute(select(ShareMapping.instance_uuid, ShareMapping.id,
                                    ShareMapping.status)
                             .where(ShareMapping.instance_uuid.in_([u for u, _, _ in servers])))
            statuses: dict[str, list[tuple[int, str]]] = {}
            for uuid, mapping_id, status in rows:
                statuses.setdefault(uuid, []).append((mapping_id, status))
        return {uuid: (generation, task, tuple(sorted(statuses.get(uuid, []))))
                for uuid, generation, task in servers}

    def host_servers(self) -> set[str]:
        with self.r.db.read() as s:
            return set(s.scalars(select(Server.uuid).where(Server.host == self.r.host,
                                                            Server.vm_state != VmState.DELETED)))

    def _poll(self) -> None:
        try:
            dirty = self.dirty_servers()
        except SQLAlchemyError as exc:
            self._dependency_failed("database", "polling for work", exc)
            return
        self.health.database.succeeded()
        for uuid, seen in dirty.items():
            changed = self._seen.get(uuid) != seen
            self._seen[uuid] = seen
            if changed:
                self._failures.pop(uuid, None)
                self._retrying.discard(uuid)
            # Unchanged rows do not bring forward a pass already planned: a server waiting
            # (for its guest, for a rule) was otherwise passed over again at every wake of
            # the loop, which every pass's end is (measured: a pass every ~10 ms during a
            # hot detach on SQLite, against the TCG guest for the CPU).
            if changed or not self._planned(uuid):
                self.enqueue(uuid, urgent=changed)

    def repair(self) -> None:
        """Enqueue every server of this host, every guest that has none, and the host."""
        try:
            servers = self.host_servers()
            self.health.database.succeeded()
        except SQLAlchemyError as exc:
            self._dependency_failed("database", "listing servers for repair", exc)
            servers = set()
        try:
            guests = set(self.r.virt.list_guests())
            self.health.hypervisor.succeeded()
        except Exception as exc:  # noqa: BLE001 - an outage; the next resync tries again
            self._dependency_failed("hypervisor", "listing guests for repair", exc)
            guests = set()
        for key in sorted(servers | guests):
            self.enqueue(key)
        self.enqueue(HOST)

    # ---- one pass ------------------------------------------------------------------------------
    def _run_one(self, key: str) -> None:
        try:
            result = self._pass(key)
        except Exception as exc:  # noqa: BLE001 - supervised: no exception ends the agent
            result = self._pass_failed(key, exc)
        finally:
            if key != HOST:  # what the pass recorded may change what the guest is told
                self.r.metadata.changed(key)
            with self._lock:
                self._inflight.discard(key)
                again = key in self._again
                self._again.discard(key)
        self._schedule(key, result, again)
        self._wake.set()

    def _pass(self, key: str) -> PassResult:
        if key == HOST:
            result = self.r.reconcile_host()
            servers = self.host_servers()
            self.r.metadata.sync(servers)
            kill_orphaned_virtiofsd(self.r)
        else:
            result = self.r.reconcile(key)
        self.health.database.succeeded()
        self.health.hypervisor.succeeded()
        self.health.pass_done(key, result.why if result.next == Next.RETRY else None)
        return result

    def _pass_failed(self, key: str, exc: Exception) -> PassResult:
        failures = self._failures.get(key, 0) + 1
        self._failures[key] = failures
        delay = pass_backoff(failures, self.config.agent.outage_retry_base,
                             self.config.agent.outage_retry_cap)
        what = "database" if isinstance(exc, SQLAlchemyError) else \
            "hypervisor" if isinstance(exc, BackendError) else "agent"
        context = f"pass of {'the host' if key == HOST else 'server ' + key}"
        if what != "agent":  # an unexpected exception is a bug: logged, not an outage
            getattr(self.health, what).failed(f"{type(exc).__name__}: {exc}")
        self.health.pass_done(key, f"{type(exc).__name__}: {exc}")
        if failures == 1:
            log.error("%s failed (%s; retrying with backoff, logged once per streak)", context,
                      what, exc_info=exc)
        elif failures % 20 == 0:
            log.error("%s still failing after %d attempts: %s", context, failures, exc)
        if key != HOST and what != "database":
            self.r.note_stalled(key, f"{type(exc).__name__}: {exc}", failures, delay)
        return PassResult(Next.RETRY, delay, str(exc))

    def _note_waiting(self, key: str, result: PassResult) -> None:
        """A server whose passes keep waiting (for the guest, for the share service) for
        [agent] stall_after s: its attachments in flight say what for, once a streak."""
        if key == HOST:
            return
        if result.next != Next.REQUEUE:
            self._waiting.pop(key, None)
            return
        now, why = time.monotonic(), result.why or "the server to settle"
        since, told, waited_for = self._waiting.get(key, (now, False, why))
        if waited_for != why:  # waiting for something else now: a new streak
            since, told = now, False
        if not told and now - since >= self.config.agent.stall_after:
            self.r.note_waiting(key, why, now - since)
            told = True
        self._waiting[key] = (since, told, why)

    def _schedule(self, key: str, result: PassResult, again: bool) -> None:
        self._note_waiting(key, result)
        if result.next != Next.RETRY:
            self._failures.pop(key, None)
            self._retrying.discard(key)
        else:
            self._retrying.add(key)
        if again:
            self.enqueue(key, urgent=True)
        elif result.next != Next.DONE:
            self.enqueue(key, result.after, exact=True)

    def _dependency_failed(self, what: str, doing: str, exc: Exception) -> None:
        dependency = getattr(self.health, what)
        if dependency.ok:
            log.error("%s unavailable while %s: %s (retrying)", what, doing, exc)
        dependency.failed(f"{type(exc).__name__}: {exc}")

    # ---- the host's registration ---------------------------------------------------------------
    def _register(self) -> None:
        try:
            hosts.register(self.r.db, self.config)
        except SQLAlchemyError as exc:  # the heartbeat registers it once the database is back
            self._dependency_failed("database", "registering the host", exc)

    def _beat(self) -> None:
        try:
            if not self._registered():
                hosts.register(self.r.db, self.config)
            hosts.heartbeat(self.r.db, self.r.host)
        except SQLAlchemyError as exc:
            self._dependency_failed("database", "writing the host's heartbeat", exc)

    def _registered(self) -> bool:
        with self.r.db.read() as s:
            return s.scalar(select(Host.id).where(Host.name == self.r.host)) is not None

    # ---- loop ----------------------------------------------------------------------------------
    def run(self) -> None:
        log.info("agent for host %s starting", self.r.host)
        self._register()
        bell = doorbell.Listener(self.r.db, self.wake, self.r.host) \
            if doorbell.listens(self.r.db) else None
        if bell is not None:
            bell.start()
        self.r.virt.watch(self.guest_changed)
        self.r.metadata.reports.watch(self.guest_reported)
        self.repair()
        last_repair = last_beat = last_poll = time.monotonic()
        while not self._stop.is_set():
            # listening: look when rung (and every listen_poll_interval); else at every wake
            listening = bell is not None and bell.listening.is_set()
            poll_every = self.config.agent.listen_poll_interval if listening \
                else self.config.agent.poll_interval
            if not listening or self._rung.is_set() or \
                    time.monotonic() - last_poll >= poll_every:
                self._rung.clear()
                last_poll = time.monotonic()
                self._poll()
            if time.monotonic() - last_beat > self.config.agent.heartbeat_interval:
                last_beat = time.monotonic()
                self._beat()
            if (self._repair_now.is_set()
                    or time.monotonic() - last_repair > self.config.agent.resync_interval):
                self._repair_now.clear()
                self.repair()
                last_repair = time.monotonic()
            for key in self._take_due():
                self._pool.submit(self._run_one, key)
            now = time.monotonic()  # sleep until the next look, pass or heartbeat is due
            timeout = max(min(poll_every - (now - last_poll), self._next_due() - now,
                              self.config.agent.heartbeat_interval - (now - last_beat)), 0.01)
            self._wake.wait(timeout)
            self._wake.clear()
        if bell is not None:
            bell.stop()
        # passes not started yet are dropped: the next start's repair looks at every server
        self._pool.shutdown(wait=True, cancel_futures=True)
        log.info("agent stopped")
