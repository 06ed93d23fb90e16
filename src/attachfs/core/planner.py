"""The pure planner: (desired, actual) of one server -> the ordered steps that close the gap.

No I/O, no database session: plain frozen dataclasses in and out (core/reconcile_model.py), so
every case is a table row in tests/unit/test_planner.py. The agent builds `Desired` from the
rows and `Actual` from what the drivers observe, runs `plan()`, and executes the steps in order
(agent/executor.py).

Desired vs observed. An attachment row's `status` is what the agent last *observed* (attaching =
not yet confirmed, active/inactive = converged, error = failed). What is *desired* is derived,
not queued: a row that exists and is not `detaching` wants its share reachable (access rule;
host mount and device while the server should run); `detaching` (like a deletion timestamp)
wants it gone. The server's desired power is its `power_intent`, its `generation` the version
of that desire. So a pass never asks "which command is pending" but "what differs", both ways:
missing things are made, extra things removed, wrong things (a writable mount that should be
read-only, a device on the wrong source) fixed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace

from attachfs.core.moves import Move, Role
from attachfs.core.reconcile_model import (
    ACTIVE,
    INACTIVE,
    MISSING,
    RUNNING,
    Actual,
    Desired,
    DesiredShare,
    Phase,
    Plan,
    Power,
)
from attachfs.core.steps import Op, Operation, Step

GUEST_SAFE = frozenset({"nosuid", "nodev"})
POLL_DEVICE = 1.0  # s between looks while libvirt removes a device
POLL_GUEST = 0.5  # s between looks while waiting for the guest to unmount
RESEND_UNPLUG = 5.0  # s before an unplug request the guest has not acted on is sent again
RESEND_SHUTDOWN = 5.0  # s between presses of the power button (one before acpid runs is lost)


def mount_is_safe(options: frozenset[str], read_only: bool) -> bool:
    """nosuid,nodev always; ro exactly when the attachment is read-only."""
    return options >= GUEST_SAFE and (("ro" in options) == read_only)


class _Builder:
    def __init__(self, d: Desired, a: Actual) -> None:
        self.d, self.a = d, a
        self.steps: list[Step] = []
        self.waits: list[tuple[float, str]] = []
        self._unmounted: set[str] = set()
        self.devices: Mapping[str, str] = a.devices  # as they will be once a stop is done
        self.leaving: set[str] = set()  # tags this plan asks the guest to give back

    def add(self, operation: Operation, op: Op, s: DesiredShare | None = None,
            **extra: object) -> None:
        fields: dict[str, object] = {}
        if s is not None:
            fields = {"attachment": s.id, "share_id": s.share_id, "tag": s.tag, "path": s.path,
                      "read_only": s.read_only, "protocol": s.protocol, "export": s.export}
        fields.update(extra)
        self.steps.append(Step(operation, op, **fields))  # type: ignore[arg-type]

    def wait(self, delay: float, why: str) -> None:
        self.waits.append((max(delay, 0.0), why))

    def stop(self, operation: Operation, force: bool = False) -> bool:
        """Stop the running guest without waiting for it: press its power button (again every
        RESEND_SHUTDOWN s) and look again; once it had `stop_timeout` s since the first press
        (or with `force`), stop it now. True when it is stopped by this plan."""
        asked = self.a.shutdown_asked
        if force or (asked is not None and self.a.now - asked[0] >= self.d.stop_timeout):
            self.add(operation, Op.STOP_GUEST, force=True)
            self.devices = {}
            return True
        if asked is None or self.a.now - asked[1] >= RESEND_SHUTDOWN:
            self.add(operation, Op.STOP_GUEST)
        self.wait(POLL_GUEST, "the guest to power off")
        return False

    def unplug(self, operation: Operation, s: DesiredShare | None, tag: str, why: str) -> None:
        """Ask the guest for the device (again only after RESEND_UNPLUG), then look again. A
        device that cannot leave a running guest (9p) is not asked for: it goes with the
        guest's next stop, and until then its host mount stays (it is in `devices`)."""
        self.leaving.add(tag)
        if tag in self.a.fixed_devices:
            return
        asked = self.a.unplugging.get(tag)
        if asked is None or self.a.now - asked >= RESEND_UNPLUG:
            if s is not None:
                self.add(operation, Op.UNPLUG, s)
            else:
                self.add(operation, Op.UNPLUG, tag=tag)
        self.wait(POLL_DEVICE, why)

    def unmount(self, operation: Operation, path: str, needed: set[str]) -> None:
        """Unmount `path` when it is mounted and nothing (here or elsewhere) still uses it."""
        if (path in self.a.mounts and path not in needed and path not in self._unmounted
                and path not in self.d.paths_used_elsewhere
                and path not in self.devices.values()):
            self._unmounted.add(path)
            self.add(operation, Op.UNMOUNT, path=path)

    def result(self) -> Plan:
        if not self.waits:
            return Plan(tuple(self.steps))
        delay, why = min(self.waits)
        return Plan(tuple(self.steps), delay, why)


def plan(d: Desired, a: Actual) -> Plan:
    b = _Builder(d, a)
    if d.moved_away:
        _plan_moved_away(b)
        return b.result()
    if d.move is not None and d.move.role == Role.LEAVE:
        _plan_leave(b, d.move)
        return b.result()
    if d.move is not None and d.move.fence is not None:
        _plan_fence(b, d.move.fence)
        return b.result()
    if d.power == Power.GONE:
        _plan_delete(b)
        return b.result()
    if d.move is not None:  # arriving: the usual steps, under the move's name
        arrival = _plan(b)
        operation = Operation(d.move.operation)
        return Plan(tuple(replace(s, operation=operation) for s in arrival.steps),
                    arrival.wait, arrival.waiting_for)
    return _plan(b)


def _plan(b: _Builder) -> Plan:
    d, a = b.d, b.a
    running = a.power == RUNNING
    idle_error = d.vm_state == "error" and d.task is None  # waits for the user: power as is
    stopped_itself = d.settled and d.vm_state == ACTIVE and d.power == Power.ON and not running
    want_on = d.power == Power.ON and not idle_error and not stopped_itself
    rebooted = a.guest_generation is not None and a.guest_generation >= d.generation
    if d.task in ("rebooting", "rebooting_hard") and not rebooted and running:
        if not b.stop(Operation.REBOOT, force=d.task == "rebooting_hard"):
            return b.result()
        running = False
    elif running and not want_on and not idle_error:
        if not b.stop(Operation.POWER_OFF):
            return b.result()
        running = False
    keep = [s for s in d.shares if s.phase in (Phase.REQUESTED, Phase.HELD)]
    booting = want_on and not running
    _plan_access(b, keep, running, booting)
    needed = {s.path for s in keep if s.host_mounted} if (running or want_on) else set()
    _plan_mounts(b, keep, needed, running, booting)
    if booting:
        _plan_boot(b, keep)
    elif running:
        _plan_running(b, keep)
    else:
        _plan_stopped(b, keep, stopped_itself)
    for s in d.shares:
        if s.phase == Phase.RELEASE:
            _plan_release(b, s, running, needed)
        elif s.phase == Phase.FAILED:
            if running and s.tag in a.devices:
                b.unplug(Operation.REPAIR, s, s.tag, f"device {s.tag} to leave the guest")
            b.unmount(Operation.REPAIR, s.path, needed)
    for s in d.shares:  # this server's mounts it no longer needs (powered off, failed)
        powering_off = d.power == Power.OFF or stopped_itself
        b.unmount(Operation.POWER_OFF if powering_off else Operation.REPAIR, s.path, needed)
    _plan_config_drive(b, booting)
    _plan_finish(b, running or booting, stopped_itself)
    return b.result()


def _plan_config_drive(b: _Builder, booting: bool) -> None:
    """The drive lists what the guest should mount: rebuilt when this pass records a change to
    that list, or when the drive observed does not hold what the rows say (deleted, edited, a
    crash between a record and its rebuild). A start builds it anyway."""
    d = b.d
    if not d.config_drive or booting:
        return
    recorded = any(st.op == Op.RECORD and (st.status is None or st.operation in (
        Operation.HOT_ATTACH, Operation.COLD_ATTACH)) for st in b.steps)
    if recorded or (d.drive_digest and d.drive_digest != b.a.drive_digest):
        b.add(Operation.REPAIR, Op.CONFIG_DRIVE)


def _attach_operation(running: bool, booting: bool) -> Operation:
    if booting:
        return Operation.POWER_ON
    return Operation.HOT_ATTACH if running else Operation.COLD_ATTACH


def _plan_access(b: _Builder, keep: list[DesiredShare], running: bool, booting: bool) -> None:
    """A requested attachment gets its rule (idempotent); a held one whose rule is observed
    missing gets it back; a server arriving on this host gets every rule here."""
    for s in keep:
        # a direct attachment's rule is the guest's, not looked up with the host's
        lost = not s.own_rule and b.a.access is not None and s.share_id not in b.a.access
        if s.phase == Phase.REQUESTED or b.d.move is not None:
            b.add(_attach_operation(running, booting), Op.GRANT_ACCESS, s)
        elif lost:
            b.add(Operation.REPAIR, Op.GRANT_ACCESS, s)


def _plan_mounts(b: _Builder, keep: list[DesiredShare], needed: set[str], running: bool,
                 booting: bool) -> None:
    seen: set[str] = set()
    for s in keep:
        if not s.host_mounted or s.path not in needed or s.path in seen:
            continue
        seen.add(s.path)
        options = b.a.mounts.get(s.path)
        operation = _attach_operation(running, booting) if s.phase == Phase.REQUESTED \
            else (Operation.POWER_ON if booting else Operation.REPAIR)
        if options is None:
            b.add(operation, Op.MOUNT, s)
            if running and s.tag in b.a.devices:  # its device serves a mount no longer there
                b.unplug(Operation.REPAIR, s, s.tag, f"device {s.tag} to be replaced")
        elif not mount_is_safe(options, s.read_only):
            b.add(Operation.REPAIR, Op.FIX_MOUNT, s)
            if running and s.tag in b.a.devices:  # its daemon kept the old view: replace it
                b.unplug(Operation.REPAIR, s, s.tag, f"device {s.tag} to be replaced")


def _plan_boot(b: _Builder, keep: list[DesiredShare]) -> None:
    operation = Operation.REBOOT if b.d.task in ("rebooting", "rebooting_hard") \
        else Operation.POWER_ON
    b.add(operation, Op.METADATA)
    b.add(operation, Op.START_GUEST)
    for s in keep:
        b.add(operation, Op.RECORD, s, status=ACTIVE)


def _plan_running(b: _Builder, keep: list[DesiredShare]) -> None:
    a = b.a
    if not a.metadata:
        b.add(Operation.REPAIR, Op.METADATA)
    for s in keep:
        source = a.devices.get(s.tag)
        if s.tag in b.leaving:
            continue
        if source is None and not s.pluggable:
            continue  # a boot-time device (9p): it comes with the next start
        if source is None:
            operation = Operation.HOT_ATTACH if s.phase == Phase.REQUESTED else Operation.REPAIR
            b.add(operation, Op.PLUG, s)
        elif source != s.path:
            b.unplug(Operation.REPAIR, s, s.tag,
                     f"device {s.tag} (wrong source {source}) to be replaced")
            continue
        elif s.read_only and s.tag in a.writable_devices:  # plugged while the mount was rw
            b.unplug(Operation.REPAIR, s, s.tag,
                     f"device {s.tag} (a writable view of a read-only share) to be replaced")
            continue
        if s.status != ACTIVE:
            operation = Operation.HOT_ATTACH if s.phase == Phase.REQUESTED else Operation.REPAIR
            b.add(operation, Op.RECORD, s, status=ACTIVE)
    claimed = {s.tag for s in b.d.shares}  # failed ones are unplugged by their own rule
    for tag in sorted(set(a.devices) - claimed):
        b.unplug(Operation.REPAIR, None, tag, f"unclaimed device {tag} to leave the guest")


def _plan_stopped(b: _Builder, keep: list[DesiredShare], stopped_itself: bool) -> None:
    for s in keep:
        if s.status != INACTIVE:
            operation = Operation.COLD_ATTACH if s.phase == Phase.REQUESTED \
                else Operation.POWER_OFF
            b.add(operation, Op.RECORD, s, status=INACTIVE)


def _plan_release(b: _Builder, s: DesiredShare, running: bool, needed: set[str]) -> None:
    a, operation = b.a, Operation.HOT_DETACH if running else Operation.DETACH
    report = a.guest_report
    started = s.release_started if s.release_started is not None else a.now
    let_go = not a.cooperative or (
        report is not None and report[0] > started and s.tag not in report[1])
    if running and s.tag in a.devices:
        deadline = started + b.d.detach_timeout
        if let_go or a.now >= deadline:
            b.unplug(operation, s, s.tag, f"device {s.tag} to leave the guest")
        else:
            b.wait(min(POLL_GUEST, deadline - a.now), f"the guest to unmount {s.tag}")
        return
    b.unmount(operation, s.path, needed)
    if s.own_rule or s.share_id not in b.d.access_used_elsewhere:
        b.add(operation, Op.REVOKE_ACCESS, s)
    note = None
    if operation == Operation.HOT_DETACH and not let_go and s.release_started is not None:
        note = (f"the guest did not unmount '{s.tag}' within {b.d.detach_timeout:g}s; the "
                "device was removed anyway (the guest sees its mount fail)")
    b.add(operation, Op.RECORD, s, status=None, note=note)


def _plan_finish(b: _Builder, up: bool, stopped_itself: bool) -> None:
    d = b.d
    if d.settled and not stopped_itself:
        return
    if d.vm_state == "error" and d.task is None:
        return  # a failed server waits for the user (stop, reboot --hard, delete)
    if b.waits:
        return  # not there yet: the pass that converges records it
    if d.move is not None and d.move.resized:  # a cold migration: VERIFY_RESIZE
        b.add(Operation.MIGRATE, Op.FINISH, vm_state="resized")
        return
    if up:
        vm_state, operation = ACTIVE, Operation.POWER_ON
        if d.task in ("rebooting", "rebooting_hard"):
            operation = Operation.REBOOT
    else:
        vm_state, operation = "stopped", Operation.POWER_OFF
        if d.vm_state == "error" and d.task is None:
            vm_state = "error"
    b.add(operation, Op.FINISH, vm_state=vm_state, force=stopped_itself)


def _plan_delete(b: _Builder) -> None:
    d, a = b.d, b.a
    if a.power == RUNNING:
        if not b.stop(Operation.DELETE):
            return
    elif a.power != MISSING:
        b.add(Operation.DELETE, Op.STOP_GUEST, force=True)
    _give_back_metadata(b, Operation.DELETE)
    if d.vm_state == "deleted":
        return  # no row left (or already deleted): only the host side is cleaned
    for s in d.shares:
        b.unmount(Operation.DELETE, s.path, set())
        if s.own_rule or s.share_id not in d.access_used_elsewhere:
            b.add(Operation.DELETE, Op.REVOKE_ACCESS, s)
        b.add(Operation.DELETE, Op.RECORD, s, status=None)
    b.add(Operation.DELETE, Op.FINISH, vm_state="deleted")


def _give_back_metadata(b: _Builder, operation: Operation) -> None:
    """The guest is gone (or going): its metadata socket and the guest's last report too."""
    b.devices = {}
    if b.a.metadata or b.a.guest_report is not None:
        b.add(operation, Op.REMOVE_METADATA)


def _plan_leave(b: _Builder, move: Move) -> None:
    """Let the server go: stop its guest (it gets its grace), give back its metadata, host
    mounts and this host's access (unless other servers here use them), then hand it over."""
    d, a = b.d, b.a
    operation = Operation(move.operation)
    if a.power == RUNNING:
        if not b.stop(operation):
            return
    elif a.power != MISSING:
        b.add(operation, Op.STOP_GUEST, force=True)
    _give_back_metadata(b, operation)
    for s in d.shares:
        b.unmount(operation, s.path, set())
        if not s.own_rule and s.share_id not in d.access_used_elsewhere:
            b.add(operation, Op.REVOKE_ACCESS, s)
        if s.status == ACTIVE:  # no guest holds it until the next host starts one
            b.add(operation, Op.RECORD, s, status=INACTIVE)
    b.add(operation, Op.FORGET)
    b.add(operation, Op.HANDOFF, host=move.to)


def _plan_fence(b: _Builder, host: str) -> None:
    """Before a server of a failed host is rebuilt here: that host's access to each of its
    shares goes (the share service cuts the host's existing mounts off), then it is recorded.
    Nothing else happens in this pass: the rebuild plans from the recorded fence."""
    for share_id in sorted({s.share_id for s in b.d.shares if not s.own_rule}):
        b.add(Operation.EVACUATE, Op.FENCE, share_id=share_id, host=host)
    b.add(Operation.EVACUATE, Op.FENCED, host=host)
    b.wait(0.0, f"host {host} to be fenced")


def _plan_moved_away(b: _Builder) -> None:
    """The server runs on another host now (this one failed and was evacuated, and is back):
    remove its guest at once (the new host has the server, and the storage has cut this host
    off), its metadata and the host mounts nothing else here uses. No row and no access rule
    is touched: they are the new host's."""
    d, a = b.d, b.a
    operation = Operation.MOVED_AWAY
    present = a.power != MISSING or a.metadata or a.guest_report is not None
    if a.power != MISSING:
        b.add(operation, Op.STOP_GUEST, force=True)
    _give_back_metadata(b, operation)
    for s in d.shares:
        b.unmount(operation, s.path, set())
    if present:
        b.add(operation, Op.FORGET)


def host_plan(needed_paths: Iterable[str], mounted: Iterable[str]) -> Plan:
    """Host-wide: a mount under the mount root that no server of this host uses goes."""
    needed = set(needed_paths)
    return Plan(tuple(Step(Operation.REPAIR, Op.UNMOUNT, path=p)
                      for p in sorted(set(mounted) - needed)))
