"""The planner as a table: (desired, actual) -> the named steps, in order, and the wait.

Each row is one situation the agent meets (a request, a crash's leftover, drift, an outage's
aftermath). Step strings are `operation:op(what)` (core/steps.py)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import pytest

from attachfs.core.planner import host_plan, mount_is_safe, plan
from attachfs.core.reconcile_model import Actual, Desired, DesiredShare, Plan, Power
from attachfs.core.steps import OPERATION_STEPS, Op

RW = frozenset({"rw", "nosuid", "nodev"})
RO = frozenset({"ro", "nosuid", "nodev"})
UUID = "s-1"


def share(n: int, status: str, ro: bool = False, **kw: object) -> DesiredShare:
    return DesiredShare(id=n, share_id=f"sh{n}", tag=f"t{n}",
                        path=f"/m/sh{n}" + ("-ro" if ro else ""), read_only=ro, status=status,
                        export=f"local:/s/sh{n}", **kw)  # type: ignore[arg-type]


def path(n: int, ro: bool = False) -> str:
    return f"/m/sh{n}" + ("-ro" if ro else "")


def running(*shares: DesiredShare, **kw: object) -> Desired:
    return Desired(uuid=UUID, power=Power.ON, vm_state="active", shares=shares,
                   **kw)  # type: ignore[arg-type]


def stopped(*shares: DesiredShare, **kw: object) -> Desired:
    return Desired(uuid=UUID, power=Power.OFF, vm_state="stopped", shares=shares,
                   **kw)  # type: ignore[arg-type]


def up(devices: dict[str, str] | None = None, mounts: dict[str, frozenset[str]] | None = None,
       **kw: object) -> Actual:
    return Actual(power="running", devices=devices or {}, mounts=mounts or {}, metadata=True,
                  now=100.0, **kw)  # type: ignore[arg-type]


def down(mounts: dict[str, frozenset[str]] | None = None, **kw: object) -> Actual:
    return Actual(power="missing", mounts=mounts or {}, now=100.0,
                  **kw)  # type: ignore[arg-type]


@dataclass
class Case:
    name: str
    desired: Desired
    actual: Actual
    steps: list[str]
    wait: str | None = None  # a substring of waiting_for, when the plan waits
    check: dict[str, object] = field(default_factory=dict)


POWER_ON = dict(task="powering-on", settled=False)
POWER_OFF = dict(task="powering-off", settled=False)
CASES = [
    # ---- attach ---------------------------------------------------------------------------
    Case("cold attach", stopped(share(1, "attaching")), down(),
         ["cold_attach:grant_access(t1)", "cold_attach:record(t1)"]),
    Case("hot attach", running(share(1, "attaching")), up(),
         ["hot_attach:grant_access(t1)", "hot_attach:mount(t1)", "hot_attach:plug(t1)",
          "hot_attach:record(t1)"]),
    Case("hot attach after a crash past mount", running(share(1, "attaching")),
         up(mounts={path(1): RW}),
         ["hot_attach:grant_access(t1)", "hot_attach:plug(t1)", "hot_attach:record(t1)"]),
    Case("hot attach after a crash past plug", running(share(1, "attaching")),
         up({"t1": path(1)}, {path(1): RW}),
         ["hot_attach:grant_access(t1)", "hot_attach:record(t1)"]),
    Case("hot attach read-only uses the -ro mount", running(share(1, "attaching", ro=True)), up(),
         ["hot_attach:grant_access(t1)", "hot_attach:mount(t1)", "hot_attach:plug(t1)",
          "hot_attach:record(t1)"], check={"path": path(1, True), "read_only": True}),
    Case("attach on an idle error server: devices but no power change",
         Desired(UUID, Power.ON, vm_state="error", shares=(share(1, "attaching"),)), up(),
         ["hot_attach:grant_access(t1)", "hot_attach:mount(t1)", "hot_attach:plug(t1)",
          "hot_attach:record(t1)"]),
    Case("config drive rebuilt after an attach", running(share(1, "attaching"),
                                                         config_drive=True),
         up({"t1": path(1)}, {path(1): RW}),
         ["hot_attach:grant_access(t1)", "hot_attach:record(t1)", "repair:config_drive"]),
    # ---- the config drive, observed: rebuilt when it does not hold what the rows say --------
    Case("config drive holding what the rows say: left alone",
         stopped(share(1, "inactive"), config_drive=True, drive_digest="d1"),
         down(drive_digest="d1"), []),
    Case("config drive missing (deleted, a crash before it was written): rebuilt",
         stopped(share(1, "inactive"), config_drive=True, drive_digest="d1"),
         down(drive_digest=""), ["repair:config_drive"]),
    Case("config drive of a running guest holding an old list: rebuilt",
         running(share(1, "active"), config_drive=True, drive_digest="d2"),
         up({"t1": path(1)}, {path(1): RW}, drive_digest="d1"), ["repair:config_drive"]),
    Case("config drive of a booting guest: the start builds it",
         running(share(1, "inactive"), config_drive=True, drive_digest="d1", **POWER_ON),
         down(drive_digest=""),
         ["power_on:mount(t1)", "power_on:metadata",
          "power_on:start_guest", "power_on:record(t1)", "power_on:finish"]),
    Case("no config drive: nothing to compare",
         stopped(share(1, "inactive"), drive_digest=""), down(drive_digest="stale"), []),
    # ---- converged and drift ----------------------------------------------------------------
    Case("converged running", running(share(1, "active")), up({"t1": path(1)}, {path(1): RW}),
         []),
    Case("converged stopped", stopped(share(1, "inactive")), down(), []),
    Case("converged read-only", running(share(1, "active", ro=True)),
         up({"t1": path(1, True)}, {path(1, True): RO}), []),
    Case("missing device of an active attachment is plugged again", running(share(1, "active")),
         up(mounts={path(1): RW}), ["repair:plug(t1)"]),
    Case("missing host mount is made again and its device replaced",
         running(share(1, "active")), up({"t1": path(1)}),
         ["repair:mount(t1)", "repair:unplug(t1)"], wait="replaced"),
    Case("read-only mount found writable: fixed, device replaced",
         running(share(1, "active", ro=True)), up({"t1": path(1, True)}, {path(1, True): RW}),
         ["repair:fix_mount(t1)", "repair:unplug(t1)"], wait="replaced"),
    Case("read-only share served writable by a device plugged before the fix: replaced",
         running(share(1, "active", ro=True)),
         up({"t1": path(1, True)}, {path(1, True): RO}, writable_devices=frozenset({"t1"})),
         ["repair:unplug(t1)"], wait="writable view"),
    Case("read-write share served writable: nothing to do", running(share(1, "active")),
         up({"t1": path(1)}, {path(1): RW}, writable_devices=frozenset({"t1"})), []),
    Case("mount without nosuid is fixed", running(share(1, "active")),
         up({"t1": path(1)}, {path(1): frozenset({"rw", "nodev"})}),
         ["repair:fix_mount(t1)", "repair:unplug(t1)"], wait="replaced"),
    Case("device on the wrong source is replaced", running(share(1, "active")),
         up({"t1": "/elsewhere"}, {path(1): RW}), ["repair:unplug(t1)"], wait="wrong source"),
    Case("device no row claims is removed", running(share(1, "active")),
         up({"t1": path(1), "stray": "/m/x"}, {path(1): RW}), ["repair:unplug(stray)"],
         wait="unclaimed"),
    Case("errored attachment loses its device", running(share(1, "error")),
         up({"t1": path(1)}, {path(1): RW}), ["repair:unplug(t1)"], wait="leave"),
    Case("errored attachment's mount goes once its device is gone", running(share(1, "error")),
         up(mounts={path(1): RW}), ["repair:unmount(/m/sh1)"]),
    Case("metadata socket served again", running(share(1, "active")),
         replace(up({"t1": path(1)}, {path(1): RW}), metadata=False), ["repair:metadata"]),
    Case("lost access rule of a held attachment is granted again", stopped(share(1, "inactive")),
         down(access=frozenset()), ["repair:grant_access(t1)"]),
    Case("stale mount of a stopped server goes", stopped(share(1, "inactive")),
         down({path(1): RW}), ["power_off:unmount(/m/sh1)"]),
    Case("a mount another running server uses stays", stopped(share(1, "inactive"),
                                                             paths_used_elsewhere=frozenset(
                                                                 {path(1)})),
         down({path(1): RW}), []),
    Case("guest stopped by itself: recorded as stopped", running(share(1, "active")),
         down({path(1): RW}),
         ["power_off:record(t1)", "power_off:unmount(/m/sh1)", "power_off:finish"],
         check={"force": True}),
    # ---- power -------------------------------------------------------------------------------
    Case("power on", running(share(1, "inactive"), **POWER_ON), down(),
         ["power_on:mount(t1)", "power_on:metadata", "power_on:start_guest",
          "power_on:record(t1)", "power_on:finish"]),
    Case("power on with an attach in flight", running(share(1, "attaching"), **POWER_ON),
         down(), ["power_on:grant_access(t1)", "power_on:mount(t1)", "power_on:metadata",
                  "power_on:start_guest", "power_on:record(t1)", "power_on:finish"]),
    Case("power on after a crash past start: finish only, slots recorded there",
         running(share(1, "inactive"), **POWER_ON), up({"t1": path(1)}, {path(1): RW}),
         ["repair:record(t1)", "power_on:finish"]),
    Case("power on leaves errored attachments out", running(share(1, "error"), **POWER_ON),
         down(), ["power_on:metadata", "power_on:start_guest", "power_on:finish"]),
    Case("power off presses the power button and looks again",
         stopped(share(1, "active"), **POWER_OFF), up({"t1": path(1)}, {path(1): RW}),
         ["power_off:stop_guest"], wait="power off", check={"force": False}),
    Case("power off: pressed 2 s ago, the guest still runs: wait",
         stopped(share(1, "active"), **POWER_OFF),
         up({"t1": path(1)}, {path(1): RW}, shutdown_asked=(98.0, 98.0)), [], wait="power off"),
    Case("power off: pressed 6 s ago: pressed again (a press before acpid runs is lost)",
         stopped(share(1, "active"), **POWER_OFF),
         up({"t1": path(1)}, {path(1): RW}, shutdown_asked=(94.0, 94.0)),
         ["power_off:stop_guest"], wait="power off", check={"force": False}),
    Case("power off: the grace is over: stopped now, then the rest",
         stopped(share(1, "active"), **POWER_OFF),
         up({"t1": path(1)}, {path(1): RW}, shutdown_asked=(89.0, 95.0)),
         ["power_off:stop_guest", "power_off:record(t1)", "power_off:unmount(/m/sh1)",
          "power_off:finish"], check={"force": True}),
    Case("power off once the guest is off",
         stopped(share(1, "active"), **POWER_OFF), down({path(1): RW}),
         ["power_off:record(t1)", "power_off:unmount(/m/sh1)", "power_off:finish"]),
    Case("power off keeps a mount used elsewhere",
         stopped(share(1, "active"), paths_used_elsewhere=frozenset({path(1)}), **POWER_OFF),
         down({path(1): RW}), ["power_off:record(t1)", "power_off:finish"]),
    Case("power off after a crash past stop", stopped(share(1, "active"), **POWER_OFF),
         down({path(1): RW}),
         ["power_off:record(t1)", "power_off:unmount(/m/sh1)", "power_off:finish"]),
    Case("soft reboot presses the power button", running(share(1, "active"), task="rebooting",
                                                         settled=False),
         up({"t1": path(1)}, {path(1): RW}), ["reboot:stop_guest"], wait="power off",
         check={"force": False}),
    Case("soft reboot once the guest is off", running(share(1, "active"), task="rebooting",
                                                      settled=False),
         down({path(1): RW}),
         ["reboot:metadata", "reboot:start_guest", "reboot:record(t1)", "reboot:finish"]),
    Case("hard reboot stops without grace", running(task="rebooting_hard", settled=False),
         up(), ["reboot:stop_guest", "reboot:metadata", "reboot:start_guest", "reboot:finish"],
         check={"force": True}),
    Case("reboot whose guest already booted for it does not stop again",
         running(share(1, "active"), task="rebooting", settled=False, generation=3),
         up({"t1": path(1)}, {path(1): RW}, guest_generation=3), ["reboot:finish"]),
    Case("reboot of a guest booted for an older generation stops it",
         running(share(1, "active"), task="rebooting", settled=False, generation=3),
         up({"t1": path(1)}, {path(1): RW}, guest_generation=2), ["reboot:stop_guest"],
         wait="power off"),
    Case("idle error server is not powered", Desired(UUID, Power.ON, vm_state="error"), down(),
         []),
    # ---- detach ------------------------------------------------------------------------------
    Case("cold detach", stopped(share(1, "detaching")), down(),
         ["detach:revoke_access(t1)", "detach:record(t1)"]),
    Case("cold detach with a leftover mount", stopped(share(1, "detaching")),
         down({path(1): RW}),
         ["detach:unmount(/m/sh1)", "detach:revoke_access(t1)", "detach:record(t1)"]),
    Case("detach keeps a rule other attachments here hold",
         stopped(share(1, "detaching"), access_used_elsewhere=frozenset({"sh1"})), down(),
         ["detach:record(t1)"]),
    Case("hot detach waits for the guest to unmount",
         running(share(1, "detaching", release_started=99.0)),
         up({"t1": path(1)}, {path(1): RW}, guest_report=(98.0, frozenset({"t1"}))), [],
         wait="the guest to unmount t1"),
    Case("hot detach unplugs once the guest let go",
         running(share(1, "detaching", release_started=99.0)),
         up({"t1": path(1)}, {path(1): RW}, guest_report=(99.5, frozenset())),
         ["hot_detach:unplug(t1)"], wait="leave"),
    Case("hot detach unplugs anyway after the timeout",
         running(share(1, "detaching", release_started=80.0)),
         up({"t1": path(1)}, {path(1): RW}, guest_report=(99.0, frozenset({"t1"}))),
         ["hot_detach:unplug(t1)"], wait="leave"),
    Case("hot detach finishes once the device is gone",
         running(share(1, "detaching", release_started=99.0)),
         up(mounts={path(1): RW}, guest_report=(99.5, frozenset())),
         ["hot_detach:unmount(/m/sh1)", "hot_detach:revoke_access(t1)",
          "hot_detach:record(t1)"], check={"note": None}),
    Case("hot detach of a guest that never let go says so",
         running(share(1, "detaching", release_started=80.0)),
         up(mounts={path(1): RW}, guest_report=(99.0, frozenset({"t1"}))),
         ["hot_detach:unmount(/m/sh1)", "hot_detach:revoke_access(t1)",
          "hot_detach:record(t1)"], check={"note": "did not unmount"}),
    Case("seven hot detaches wait together, then unplug together",
         running(*(share(n, "detaching", release_started=99.0) for n in range(1, 8))),
         up({f"t{n}": path(n) for n in range(1, 8)}, {path(n): RW for n in range(1, 8)},
            guest_report=(99.5, frozenset())),
         [f"hot_detach:unplug(t{n})" for n in range(1, 8)], wait="leave"),
    Case("a detach and an attach side by side",
         running(share(1, "detaching", release_started=99.0), share(2, "attaching")),
         up({"t1": path(1)}, {path(1): RW}, guest_report=(99.5, frozenset())),
         ["hot_attach:grant_access(t2)", "hot_attach:mount(t2)", "hot_attach:plug(t2)",
          "hot_attach:record(t2)", "hot_detach:unplug(t1)"], wait="leave"),
    # ---- delete ------------------------------------------------------------------------------
    Case("delete a running server",
         Desired(UUID, Power.GONE, task="deleting", settled=False,
                 shares=(share(1, "active"),)), up({"t1": path(1)}, {path(1): RW}),
         ["delete:stop_guest"], wait="power off"),
    Case("delete once the guest is off",
         Desired(UUID, Power.GONE, task="deleting", settled=False,
                 shares=(share(1, "active"),)), replace(down({path(1): RW}), metadata=True),
         ["delete:remove_metadata", "delete:unmount(/m/sh1)",
          "delete:revoke_access(t1)", "delete:record(t1)", "delete:finish"]),
    Case("delete keeps what others use",
         Desired(UUID, Power.GONE, task="deleting", settled=False, shares=(share(1, "error"),),
                 paths_used_elsewhere=frozenset({path(1)}),
                 access_used_elsewhere=frozenset({"sh1"})),
         down({path(1): RW}), ["delete:record(t1)", "delete:finish"]),
    Case("a guest without a server is destroyed", Desired(UUID, Power.GONE, vm_state="deleted"),
         up({"t1": path(1)}, shutdown_asked=(80.0, 99.0)),
         ["delete:stop_guest", "delete:remove_metadata"], check={"force": True}),
    Case("a deleted server's metadata socket goes", Desired(UUID, Power.GONE, vm_state="deleted"),
         replace(down(), metadata=True), ["delete:remove_metadata"]),
    Case("nothing at all", Desired(UUID, Power.GONE, vm_state="deleted"), down(), []),
    # ---- 9p: a device at boot only --------------------------------------------------------
    Case("9p requested on a running guest is not plugged (it comes with the next start)",
         running(share(1, "attaching", transport="9p")), up(mounts={path(1): RW}),
         ["hot_attach:grant_access(t1)"]),
    Case("9p comes with the boot", replace(running(share(1, "inactive", transport="9p")),
                                           **POWER_ON), down(),
         ["power_on:mount(t1)", "power_on:metadata", "power_on:start_guest",
          "power_on:record(t1)", "power_on:finish"]),
    Case("converged 9p", running(share(1, "active", transport="9p")),
         up({"t1": path(1)}, {path(1): RW}, fixed_devices=frozenset({"t1"})), []),
    Case("a 9p device of a detaching share stays until the guest stops, and its mount too",
         running(share(1, "detaching", transport="9p", release_started=50.0)),
         up({"t1": path(1)}, {path(1): RW}, fixed_devices=frozenset({"t1"})), []),
    Case("an unclaimed 9p device is left to the next stop",
         running(), up({"t9": path(9)}, {path(9): RW}, fixed_devices=frozenset({"t9"})), []),
    # ---- direct: the guest mounts the share's own export; the host mounts nothing ---------
    Case("direct attach: a rule and an export, no host mount",
         running(share(1, "attaching", transport="direct")), up(),
         ["hot_attach:grant_access(t1)", "hot_attach:plug(t1)", "hot_attach:record(t1)"]),
    Case("direct release revokes the guest's own rule even when the share is used elsewhere",
         running(share(1, "detaching", transport="direct", release_started=50.0),
                 access_used_elsewhere=frozenset({"sh1"})),
         up(guest_report=(60.0, frozenset())),
         ["hot_detach:revoke_access(t1)", "hot_detach:record(t1)"]),
    Case("a direct rule is not looked up as the host's",
         running(share(1, "active", transport="direct")),
         up({"t1": path(1)}, access=frozenset()), []),
    Case("a read-only 9p device is not replaced while running",
         running(share(1, "active", ro=True, transport="9p")),
         up({"t1": path(1, True)}, {path(1, True): RO}, writable_devices=frozenset({"t1"}),
            fixed_devices=frozenset({"t1"})), []),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_plan(case: Case) -> None:
    got = plan(case.desired, case.actual)
    assert [str(s) for s in got.steps] == case.steps
    if case.wait is None:
        assert got.wait is None, got.waiting_for
    else:
        assert got.wait is not None and case.wait in got.waiting_for, got.waiting_for
    _check_fields(got, case.check)


def _check_fields(got: Plan, check: dict[str, object]) -> None:
    for key, want in check.items():
        values = [getattr(s, key) for s in got.steps if s.op in (
            Op.MOUNT, Op.STOP_GUEST, Op.FINISH, Op.RECORD) and getattr(s, key) is not None
            or key == "note" and s.op == Op.RECORD]
        assert values, key
        if isinstance(want, str) and key == "note":
            assert any(v and want in v for v in values), values
        else:
            assert want in values, (key, values)


def test_table_is_large_enough() -> None:
    assert len(CASES) >= 30


def test_every_step_named_by_its_operation() -> None:
    """Steps the table produces use only the names OPERATION_STEPS lists (or repair)."""
    for case in CASES:
        for step in plan(case.desired, case.actual).steps:
            allowed = OPERATION_STEPS.get(step.operation)
            assert allowed is None or step.op in allowed or step.op == Op.RECORD, step.name


def test_plans_are_idempotent_in_the_converged_state() -> None:
    d = running(share(1, "active"), share(2, "active", ro=True))
    a = up({"t1": path(1), "t2": path(2, True)}, {path(1): RW, path(2, True): RO})
    assert plan(d, a).steps == ()


@pytest.mark.parametrize(("options", "ro", "safe"), [
    (RW, False, True), (RO, True, True), (RW, True, False), (RO, False, False),
    (frozenset({"rw", "nosuid"}), False, False), (frozenset({"ro", "nodev"}), True, False)])
def test_mount_is_safe(options: frozenset[str], ro: bool, safe: bool) -> None:
    assert mount_is_safe(options, ro) is safe


def test_host_plan_unmounts_only_what_nothing_needs() -> None:
    got = host_plan({"/m/a", "/m/b"}, ["/m/a", "/m/c", "/m/b-ro"])
    assert [s.path for s in got.steps] == ["/m/b-ro", "/m/c"]


def test_unplug_is_not_asked_again_before_the_resend_interval() -> None:
    d = running(share(1, "detaching", release_started=99.0))
    a = up({"t1": path(1)}, {path(1): RW}, guest_report=(99.5, frozenset()))
    assert [str(s) for s in plan(d, replace(a, unplugging={"t1": 99.0})).steps] == []
    assert plan(d, replace(a, unplugging={"t1": 99.0})).wait is not None
    assert [str(s) for s in plan(d, replace(a, unplugging={"t1": 90.0})).steps] == [
        "hot_detach:unplug(t1)"]
