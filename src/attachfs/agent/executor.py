"""Run a plan's steps through the drivers, in order; classify what fails.

A step of one attachment that fails takes only that attachment's later steps with it; a server
step (start, stop) that fails ends the pass. Permanent errors move the attachment (or server)
to `error` with the reason; temporary ones are counted on the row and retried by the runner
with backoff, and after `[agent] retry_attempts` they are permanent too. A grant that fails for a
*requested* attachment ends that request in `error` at once (the share service's answer is the
request's answer, as in 2.97: the user attaches again). A grant or revoke the share service is
still applying is neither done nor failed: that attachment's later steps wait for a later pass
(the server is looked at again in PENDING_POLL s); no worker waits for the service.

ATTACHFS_CRASH_AFTER=<operation>:<step> (test-only, read once when the agent starts) ends the
process right after that step: the crash matrix (tests/vm/test_crash_matrix.py) uses it.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from attachfs.agent.attachments import Attachments, requester
from attachfs.agent.state import Snapshot
from attachfs.config import AgentConfig
from attachfs.core.model import AttachmentStatus
from attachfs.core.reconcile_model import Desired, Phase, Plan, phase_of
from attachfs.core.steps import Op, Operation, Step
from attachfs.db.tables import Server, ShareMapping
from attachfs.errors import BackendError, PermanentError
from attachfs.paths import under_root
from attachfs.storage.mountinfo import GUEST_SAFE
from attachfs.virt.base import GuestShare

log = logging.getLogger(__name__)
CRASH_EXIT = 137
# s between looks while the share service applies (or removes) a rule: soon at first (Manila
# applies a rule in 0.1 to 0.4 s here), then every PENDING_POLL
FIRST_PENDING_POLL = 0.1
PENDING_POLL = 0.5


def pending_delay(looks: int) -> float:
    """The wait before the next look, after `looks` looks that found it still under way."""
    return min(PENDING_POLL, FIRST_PENDING_POLL * 2 ** looks)

# steps that conclude a pass's work: only when every step before them went through
FINAL = (Op.FINISH, Op.FENCED, Op.HANDOFF)


def backoff(attempt: int, retry: AgentConfig) -> float:
    """Capped exponential: 1, 2, 4 ... 60 s with the defaults."""
    return min(retry.retry_cap, retry.retry_base * 2 ** max(attempt - 1, 0))


def crash_point() -> str | None:
    return os.environ.get("ATTACHFS_CRASH_AFTER") or None


@dataclass
class Outcome:
    """How the steps went: which attachments failed, the first temporary error."""

    failed: set[int] = field(default_factory=set)
    pending: set[int] = field(default_factory=set)  # waiting on the outside (a rule applying)
    pending_why: str | None = None
    temporary: str | None = None
    retry_after: float | None = None
    server_failed: bool = False
    held: bool = False  # a server step is under way outside (a fence): the rest waits
    delete_failures: list[str] = field(default_factory=list)
    done: list[Step] = field(default_factory=list)

    def retry(self, error: str, after: float) -> None:
        if self.temporary is None:
            self.temporary = error
        self.retry_after = after if self.retry_after is None else min(self.retry_after, after)


class Executor:
    def __init__(self, attachments: Attachments, server_steps: ServerSteps,
                 crash_after: str | None = None) -> None:
        self.a = attachments
        self.unplug_asked = server_steps.unplug_asked
        self._started: set[int] = set()  # attachments whose .start notification went out
        self.server_steps = server_steps
        self.crash_after = crash_after

    def run(self, plan: Plan, desired: Desired, snap: Snapshot | None) -> Outcome:
        out = Outcome()
        unplugged = False
        for step in plan.steps:
            if step.attachment is not None and (step.attachment in out.failed
                                                 or step.attachment in out.pending):
                continue
            if out.server_failed:
                break
            if out.held and step.op != Op.FENCE:
                continue
            if step.op in FINAL and (out.temporary or out.server_failed or out.pending
                                     or out.failed and step.op == Op.HANDOFF):
                continue
            if step.op == Op.UNPLUG:
                if not unplugged:  # all of them at once, see _unplug_all
                    unplugged = True
                    self._unplug_all([s for s in plan.steps if s.op == Op.UNPLUG], desired,
                                     snap, out)
                continue
            self._run_step(step, desired, snap, out)
        self._clear_recovered(snap, out)
        return out

    def _run_step(self, step: Step, desired: Desired, snap: Snapshot | None,
                  out: Outcome) -> None:
        try:
            finished = self._one(step, desired, snap, out)
        except BackendError as exc:
            self._failed(step, snap, exc, out)
            return
        if finished:
            self._done(step, desired, out)
            return
        # under way outside (the share service applying a rule): look again soon
        if step.attachment is None:
            out.held = True
        else:
            out.pending.add(step.attachment)
        out.pending_why = f"the share service to finish {step}"

    def _done(self, step: Step, desired: Desired, out: Outcome) -> None:
        out.done.append(step)
        log.debug("server %s: %s done", desired.uuid, step)
        if self.crash_after == step.name:
            log.warning("ATTACHFS_CRASH_AFTER=%s: exiting now", step.name)
            os._exit(CRASH_EXIT)

    def _unplug_all(self, steps: list[Step], desired: Desired, snap: Snapshot | None,
                    out: Outcome) -> None:
        """Unplug requests go out together: libvirt holds each call while the domain is busy
        with the previous device's removal (~2 s under TCG), so one after the other seven
        detaches would take seven times as long as one."""
        steps = [s for s in steps if s.attachment is None or s.attachment not in out.failed]
        if len(steps) <= 1:
            for step in steps:
                self._run_step(step, desired, snap, out)
            return
        with ThreadPoolExecutor(len(steps), thread_name_prefix="unplug") as pool:
            results = list(pool.map(lambda s: self._try(s, desired, snap, out), steps))
        for step, exc in zip(steps, results, strict=True):
            if exc is None:
                self._done(step, desired, out)
            else:
                self._failed(step, snap, exc, out)

    def _try(self, step: Step, desired: Desired, snap: Snapshot | None,
             out: Outcome) -> BackendError | None:
        try:
            self._one(step, desired, snap, out)  # unplug: a request, always "finished"
        except BackendError as exc:
            return exc
        return None

    def _clear_recovered(self, snap: Snapshot | None, out: Outcome) -> None:
        """An attachment that was retrying and whose steps now all went through is well again."""
        if snap is None:
            return
        worked = {st.attachment for st in out.done if st.attachment is not None}
        for m in snap.mappings:
            if m.attempts and m.id in worked and m.id not in out.failed:
                self.a.clear_retry(m.id)

    def _one(self, step: Step, desired: Desired, snap: Snapshot | None, out: Outcome) -> bool:
        """Run one step; False when it is under way outside and not finished yet."""
        if step.attachment is None:
            return self.server_steps.run(step, desired, snap, out)
        m = snap.mapping(step.attachment) if snap is not None else None
        if m is None:
            return True  # the row went meanwhile: nothing to do for it
        a, server = self.a, snap.server  # type: ignore[union-attr]
        self._notify_start(server, m)
        match step.op:
            case Op.GRANT_ACCESS:
                return a.provider.grant_access(m.share_id, a.grantee(m),
                                               "ro" if m.read_only else "rw",
                                               reason=f"attached to server {m.instance_uuid}",
                                               requester=requester(m))
            case Op.MOUNT:
                a.mount(m)
            case Op.FIX_MOUNT:
                log.warning("server %s: host mount %s had the wrong flags; fixing", server.uuid,
                            step.path)
                a.mounts.set_options(Path(step.path),
                                     GUEST_SAFE + (",ro" if step.read_only else ""))
            case Op.PLUG:
                target = next((s.target for s in desired.shares if s.id == m.id), "")
                a.virt.attach_share(server.uuid, GuestShare(tag=m.tag, host_path=Path(step.path),
                                                            read_only=m.read_only,
                                                            transport=m.transport,
                                                            target=target,
                                                            share_id=m.share_id))
            case Op.UNPLUG:
                a.virt.request_detach(server.uuid, step.tag)
                self.unplug_asked(server.uuid, step.tag)
            case Op.UNMOUNT:
                a.unmount(under_root(a.config.mount_root, Path(step.path).name))
            case Op.REVOKE_ACCESS:
                return a.provider.revoke_access(m.share_id, a.grantee(m), requester(m))
            case Op.RECORD:
                self._record(step, m, server)
            case _:
                raise PermanentError(f"step {step.name} does not take an attachment")
        return True

    def _notify_start(self, server: Server, m: ShareMapping) -> None:
        """share_attach.start / share_detach.start, once per request (not once per pass)."""
        kind = {AttachmentStatus.ATTACHING: "share_attach",
                AttachmentStatus.DETACHING: "share_detach"}.get(AttachmentStatus(m.status))
        if kind is not None and m.id not in self._started:
            self._started.add(m.id)
            self.a._notify(server, m, f"{kind}.start")

    def _record(self, step: Step, m: ShareMapping, server: Server) -> None:
        self._started.discard(m.id)
        if step.status is None:
            if m.status == AttachmentStatus.DETACHING:
                self.a._notify(server, m, "share_detach.end")
            self.a.set_status(m.id, None, note=step.note, expect=m.status)
            log.info("server %s share %s: detached", server.uuid, m.share_id)
            return
        self.a.set_status(m.id, step.status, expect=m.status)
        if m.status == AttachmentStatus.ATTACHING:
            self.a._notify(server, m, "share_attach.end")
            log.info("server %s share %s: attached -> %s", server.uuid, m.share_id, step.status)

    def _failed(self, step: Step, snap: Snapshot | None, exc: BackendError,
                out: Outcome) -> None:
        m = snap.mapping(step.attachment) if snap is not None else None
        if m is None or snap is None:  # a server step
            attempts = (snap.server.attempts or 0) + 1 if snap is not None else 1
            gives_up = isinstance(exc, PermanentError) or attempts >= self.a.config.agent.retry_attempts
            if step.op == Op.START_GUEST and gives_up:
                out.server_failed = True
                self.server_steps.fail(snap, f"starting the guest failed: {exc}")
                return
            if step.op == Op.FENCE and gives_up:
                out.server_failed = True
                self.server_steps.fail_move(snap, f"fencing host {step.host} off share "
                                                  f"{step.share_id} failed: {exc}")
                return
            log.warning("step %s failed (will retry): %s", step, exc)
            out.server_failed = True
            out.retry(f"{step.name} failed: {exc}", 0)
            return
        out.failed.add(m.id)
        self._started.discard(m.id)  # a retry (POST again) is a new request
        event = "share_detach" if phase_of(m.status) == Phase.RELEASE else "share_attach"
        if step.operation == Operation.DELETE:
            out.delete_failures.append(f"share {m.share_id}: {exc}")
        requested_grant = step.op == Op.GRANT_ACCESS and m.status == AttachmentStatus.ATTACHING
        what = "detaching on delete" if step.operation == Operation.DELETE else _what(m.status)
        if isinstance(exc, PermanentError) or requested_grant:
            self.a.fail(snap.server, m, what, exc, event=event)
            return
        attempts = (m.attempts or 0) + 1
        if attempts >= self.a.config.agent.retry_attempts:
            self.a.fail(snap.server, m, what, exc, event=event)
            return
        delay = backoff(attempts, self.a.config.agent)
        self.a.record_retry(m.id, step.name, exc, delay)
        log.warning("server %s share %s: %s failed (attempt %d, retry in %.0fs): %s",
                    snap.server.uuid, m.share_id, step.name, attempts, delay, exc)
        out.retry(f"{step.name} failed: {exc}", delay)


def _what(status: str) -> str:
    return {"attaching": "attaching", "detaching": "detaching"}.get(status, "repairing")


class ServerSteps(Protocol):
    """Server-level steps (guest, metadata, config drive, the server row): agent/server.py."""

    def run(self, step: Step, desired: Desired, snap: Snapshot | None, out: Outcome) -> bool:
        ...

    def fail(self, snap: Snapshot | None, fault: str) -> None:
        ...

    def fail_move(self, snap: Snapshot | None, fault: str) -> None:
        ...

    def unplug_asked(self, uuid: str, tag: str) -> None:
        ...
