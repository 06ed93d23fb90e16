"""The reconciler and the supervised runner on fake drivers (tests/fakes): attach, power, hot
detach, drift repair, reboot, delete failures, temporary errors, outages, the crash hook, and a
10,000-server pass. Real database (SQLite), real planner and executor."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from attachfs.agent import executor as executor_module
from attachfs.agent.health import current
from attachfs.agent.reconciler import Next
from attachfs.errors import PermanentError, TemporaryError
from attachfs.virt.libvirt_xml import VirtError
from tests.fakes.storage import SAFE
from tests.fakes.world import HOST, World, make_world

RW_SAFE = SAFE
RO_SAFE = frozenset({"ro", "nosuid", "nodev"})


@pytest.fixture
def world(tmp_path: Path) -> World:
    return make_world(tmp_path)


def running_server(world: World, *shares: int, ro: bool = False) -> tuple[str, list[int]]:
    sid = world.server(running=False)
    ids = [world.attach(sid, n, ro=ro) for n in shares]
    world.converge(sid)
    world.set(sid, task_state="powering-on", power_intent="on")
    world.converge(sid)
    return sid, ids


def test_cold_attach_grants_and_goes_inactive(world: World) -> None:
    sid = world.server()
    mid = world.attach(sid, 1)
    assert world.reconcile(sid).next == Next.DONE
    assert world.mapping(mid).status == "inactive"  # type: ignore[union-attr]
    assert world.provider.rules == {("sh1", HOST): "rw"}
    assert world.host.mounts == {} and world.virt.guests == {}


def test_power_on_mounts_boots_and_records_slots(world: World) -> None:
    sid, (mid,) = running_server(world, 1)
    guest = world.virt.guests[sid]
    assert guest.devices == {"t1": world.mount_path(1)} and guest.boots == 1
    assert world.host.mounts == {world.mount_path(1): RW_SAFE}
    row = world.row(sid)
    assert (row.vm_state, row.task_state, row.share_slots) == ("active", None, 8)
    assert world.mapping(mid).status == "active"  # type: ignore[union-attr]
    assert world.metadata.serving(sid)


def test_hot_attach_read_only(world: World) -> None:
    sid, _ = running_server(world)
    mid = world.attach(sid, 2, ro=True)
    world.converge(sid)
    assert world.mapping(mid).status == "active"  # type: ignore[union-attr]
    assert world.virt.guests[sid].devices == {"t2": world.mount_path(2, True)}
    assert world.host.mounts[world.mount_path(2, True)] == RO_SAFE
    assert world.provider.rules[("sh2", HOST)] == "ro"


def test_seven_hot_detaches_proceed_together(world: World) -> None:
    """The pass never waits: all seven wait for the guest in the same pass, then unplug."""
    sid, ids = running_server(world, *range(1, 8))
    for mid in ids:
        world.set_status(mid, "detaching")
    first = world.reconcile(sid)
    assert first.next == Next.REQUEUE and "unmount" in first.why and first.after <= 0.5
    world.metadata.reports.record(sid, frozenset())  # the guest let go of all of them
    world.reconcile(sid)  # unplug requests for all seven
    world.converge(sid)
    assert all(world.mapping(mid) is None for mid in ids)
    assert world.virt.guests[sid].devices == {} and world.host.mounts == {}
    assert world.provider.rules == {}


def test_hot_detach_of_a_guest_that_holds_on(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    sid, (mid,) = running_server(world, 1)
    world.set_status(mid, "detaching")
    clock = [time.monotonic()]
    monkeypatch.setattr("attachfs.agent.state.time.monotonic", lambda: clock[0])
    monkeypatch.setattr("attachfs.core.planner.POLL_GUEST", 0.5)
    world.metadata.reports.record(sid, frozenset({"t1"}))
    assert world.reconcile(sid).next == Next.REQUEUE
    assert "t1" in world.virt.guests[sid].devices  # still waiting for the guest
    clock[0] += 10  # past agent.detach_timeout (5 s)
    world.converge(sid)
    assert world.mapping(mid) is None and world.virt.guests[sid].devices == {}


@pytest.mark.parametrize("drift", ["device", "mount", "writable-ro", "suid", "stray-device",
                                   "wrong-source", "metadata"])
def test_drift_is_repaired(world: World, drift: str) -> None:
    sid, (mid,) = running_server(world, 1, ro=True)
    guest, path = world.virt.guests[sid], world.mount_path(1, True)
    match drift:
        case "device":
            guest.devices.clear()
        case "mount":
            world.host.mounts.clear()
        case "writable-ro":
            world.host.mounts[path] = RW_SAFE
        case "suid":
            world.host.mounts[path] = frozenset({"ro", "nodev"})
        case "stray-device":
            guest.devices["stray"] = Path("/elsewhere")
        case "wrong-source":
            guest.devices["t1"] = Path("/elsewhere")
        case "metadata":
            world.metadata.served.clear()
    assert world.converge(sid) >= 1
    assert guest.devices == {"t1": path}
    assert world.host.mounts == {path: RO_SAFE}
    assert world.metadata.serving(sid)
    assert world.mapping(mid).status == "active"  # type: ignore[union-attr]


def test_reboot_boots_once_more(world: World) -> None:
    sid, _ = running_server(world, 1)
    world.set(sid, task_state="rebooting")
    world.converge(sid)
    assert world.virt.guests[sid].boots == 1  # a new guest (the fake forgets the old)
    assert world.row(sid).task_state is None and world.row(sid).vm_state == "active"
    assert world.virt.guests[sid].devices == {"t1": world.mount_path(1)}


def test_guest_that_stopped_itself_is_recorded_stopped(world: World,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    sid, (mid,) = running_server(world, 1)
    del world.virt.guests[sid]
    assert world.reconcile(sid).next == Next.REQUEUE  # not yet: confirmed after a while
    assert world.row(sid).vm_state == "active"
    monkeypatch.setattr("attachfs.agent.reconciler.CONFIRM_STOPPED", 0.0)
    world.converge(sid)
    row = world.row(sid)
    assert (row.vm_state, row.power_intent) == ("stopped", "off")
    assert world.mapping(mid).status == "inactive" and world.host.mounts == {}  # type: ignore


def test_delete_failure_keeps_server_and_attachment(world: World) -> None:
    sid, (mid,) = running_server(world, 1)
    world.provider.faults.fail("revoke_access", PermanentError("share service says no"))
    world.set(sid, task_state="deleting")
    world.reconcile(sid)  # the power button: the guest powers off
    world.reconcile(sid)
    row = world.row(sid)
    assert row.vm_state == "error" and "delete could not detach" in (row.fault_message or "")
    m = world.mapping(mid)
    assert m is not None and m.status == "error" and "says no" in (m.fault_message or "")
    assert sid not in world.virt.guests and world.host.mounts == {}
    world.set(sid, task_state="deleting")  # the user deletes again: now it works
    world.converge(sid)
    assert world.row(sid).vm_state == "deleted" and world.mapping(mid) is None


def test_temporary_error_is_retried_and_shown(world: World) -> None:
    sid, _ = running_server(world)
    mid = world.attach(sid, 3)
    world.virt.faults.fail("attach_share", TemporaryError("libvirt busy"), times=2)
    result = world.reconcile(sid)
    assert result.next == Next.RETRY and result.after == 1.0
    m = world.mapping(mid)
    assert m is not None and m.status == "attaching" and m.attempts == 1
    assert "libvirt busy" in (m.fault_message or "") and "retrying" in (m.fault_message or "")
    assert world.reconcile(sid).after == 2.0  # capped exponential backoff
    world.converge(sid)
    m = world.mapping(mid)
    assert m is not None and (m.status, m.attempts, m.fault_message) == ("active", 0, None)


def test_temporary_errors_become_permanent_after_max_attempts(world: World) -> None:
    sid, _ = running_server(world)
    mid = world.attach(sid, 3)
    world.virt.faults.down("attach_share", TemporaryError("never"))
    for _ in range(world.config.agent.retry_attempts):
        world.reconcile(sid)
    m = world.mapping(mid)
    assert m is not None and m.status == "error" and "never" in (m.fault_message or "")


def test_requested_grant_refused_by_share_service_is_an_error(world: World) -> None:
    """2.97: the request's answer is the share service's; the user attaches again."""
    sid = world.server()
    mid = world.attach(sid, 1)
    world.provider.faults.fail("grant_access", TemporaryError("Manila unreachable"))
    world.reconcile(sid)
    m = world.mapping(mid)
    assert m is not None and m.status == "error" and "Manila unreachable" in (m.fault_message or "")


def test_permanent_mount_failure_is_error_and_leaves_nothing(world: World) -> None:
    sid, _ = running_server(world)
    with world.db.session() as s:
        from attachfs.db.tables import ShareMapping

        s.add(ShareMapping(uuid="m-x", instance_uuid=sid, share_id="shx", status="attaching",
                           tag="tx", export_location="local:/missing", share_proto="LOCAL",
                           user_id="alice", project_id="p1"))
    world.converge(sid)
    assert world.virt.guests[sid].devices == {} and world.host.mounts == {}


def test_outage_of_the_hypervisor_is_survived(world: World) -> None:
    sid, _ = running_server(world)
    mid = world.attach(sid, 4)
    world.virt.faults.down("*", VirtError("cannot connect to libvirt"))
    agent = world.agent
    for _ in range(3):
        agent._inflight.add(sid)
        agent._run_one(sid)  # caught, logged once, backed off
    health = current()
    assert health is agent.health and not health.hypervisor.ok
    assert health.hypervisor.failures == 3 and sid in health.retrying
    assert agent._due[sid] - time.monotonic() > 1.0  # backing off (0.5, 1, 2 s ...)
    m = world.mapping(mid)
    assert m is not None and m.status == "attaching" and "cannot make progress" in (
        m.fault_message or "")
    world.virt.faults.up()
    agent._inflight.add(sid)
    agent._run_one(sid)
    world.converge(sid)
    assert world.mapping(mid).status == "active"  # type: ignore[union-attr]
    assert health.hypervisor.ok and sid not in health.retrying


def test_outage_of_the_database_is_survived(world: World, tmp_path: Path) -> None:
    sid, _ = running_server(world)
    url = world.db.engine.url
    db_file = Path(str(url.database))
    moved = tmp_path / "away.db"
    world.db.dispose()
    db_file.rename(moved)
    db_file.mkdir()  # sqlite cannot open a directory: the database is "down"
    try:
        world.agent._poll()
        world.agent._inflight.add(sid)
        world.agent._run_one(sid)
        assert not world.agent.health.database.ok
    finally:
        db_file.rmdir()
        moved.rename(db_file)
    world.agent._poll()
    assert world.agent.health.database.ok


def test_crash_hook_exits_right_after_the_named_step(world: World,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    sid = world.server()
    world.attach(sid, 1)

    def exit_now(code: int) -> None:
        raise SystemExit(code)

    monkeypatch.setattr(executor_module.os, "_exit", exit_now)
    world.reconciler.executor.crash_after = "cold_attach:grant_access"
    with pytest.raises(SystemExit):
        world.reconcile(sid)
    assert world.provider.rules and world.mapping(1).status == "attaching"  # type: ignore
    world.reconciler.executor.crash_after = None
    world.converge(sid)
    assert world.mapping(1).status == "inactive"  # type: ignore[union-attr]


def test_ten_thousand_servers(tmp_path: Path) -> None:
    """A unit benchmark: one pass for each of 10,000 servers (stopped, one attach each being
    confirmed on 1,000 of them). Prints its timing; asserts only correctness."""
    world = make_world(tmp_path)
    uuids = world.servers(10_000)
    attached = {uuid: world.attach(uuid, i) for i, uuid in enumerate(uuids[:1000])}
    started = time.monotonic()
    for uuid in uuids:
        assert world.reconcile(uuid).next == Next.DONE
    elapsed = time.monotonic() - started
    print(f"\n10,000-server reconcile on fakes + SQLite: {elapsed:.1f}s "
          f"({elapsed / 10_000 * 1000:.2f} ms/server)")
    assert all(world.mapping(mid).status == "inactive"  # type: ignore[union-attr]
               for mid in attached.values())
    assert len(world.provider.rules) == 1000


def test_a_hypervisor_event_puts_that_server_first(world: World) -> None:
    """A device that leaves the guest (libvirt's DEVICE_REMOVED) is acted on at once, not at the
    server's next requeue; a missed-events signal makes the loop repair everything."""
    agent = world.agent
    sid, _ = running_server(world)
    agent.r.virt.watch(agent.guest_changed)
    agent._schedule(sid, agent._pass(sid), again=False)
    agent.enqueue(sid, 30.0, exact=True)  # as if the pass had asked to look again in 30 s
    world.virt.emit(sid)
    assert agent._due[sid] <= time.monotonic()
    agent._inflight.add(sid)
    world.virt.emit(sid)  # while its pass runs: run again right after it
    assert sid in agent._again
    world.virt.emit(None)
    assert agent._repair_now.is_set()


def test_a_rule_removed_behind_our_back_is_granted_again(world: World) -> None:
    """Access rules are observed through the provider (every `access_check_interval` per
    server): one dropped by someone else comes back; between looks the provider is not asked;
    a provider that cannot answer is "unknown", not "no rule"."""
    sid, (mid,) = running_server(world, 1)
    world.provider.rules.clear()  # an operator removed the rule in the share service
    world.converge(sid)
    assert world.provider.rules == {}  # looked up on the first pass; not due again yet
    world.reconciler.memory.access_checked.clear()  # the interval has passed
    world.converge(sid)
    assert world.provider.rules == {("sh1", HOST): "rw"}
    assert world.mapping(mid).status == "active"  # type: ignore[union-attr]
    calls = world.provider.faults.calls.count("access_levels")
    world.converge(sid)
    assert world.provider.faults.calls.count("access_levels") == calls  # not asked in between
    world.provider.rules.clear()
    world.provider.faults.down("access_levels", TemporaryError("share service unreachable"))
    world.reconciler.memory.access_checked.clear()
    world.converge(sid)
    assert world.provider.rules == {} and world.mapping(mid).status == "active"  # type: ignore[union-attr]


def test_a_shared_read_only_mount_fixed_by_one_server_is_replaced_in_every_guest(
        world: World) -> None:
    """Two guests hold one read-only share through one host mount, found writable (as after a
    crash before the remount): every device plugged meanwhile serves the writable view until
    it is replaced. The server whose pass fixes the mount replaces its own device; the other
    server's pass observes its device's view (not a memory of the fix) and replaces it too."""
    a, _ = running_server(world)
    b, _ = running_server(world)
    world.attach(a, 3, ro=True)
    world.attach(b, 3, ro=True)
    world.converge(a)
    world.converge(b)
    path = world.mount_path(3, True)
    world.host.mounts[path] = RW_SAFE  # as if the remount never happened ...
    for server in (a, b):  # ... and both devices were plugged meanwhile
        world.virt.guests[server].writable.add("t3")
    world.converge(a)  # fixes the mount, replaces a's device
    assert world.host.mounts[path] == RO_SAFE
    assert world.virt.writable_devices(a) == set()
    assert world.virt.writable_devices(b) == {"t3"}  # b's daemon still has the old view
    world.converge(b)
    assert world.virt.writable_devices(b) == set()
    assert world.virt.guests[b].devices == {"t3": path}


def test_a_crash_right_after_a_reboot_started_the_guest_does_not_reboot_again(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """Which reboot is done is observed (the generation the guest was started for, kept with
    the guest), not remembered: a restarted agent finishes the reboot without a second one."""
    sid, _ = running_server(world, 1)

    def exit_now(code: int) -> None:
        raise SystemExit(code)

    monkeypatch.setattr(executor_module.os, "_exit", exit_now)
    world.set(sid, task_state="rebooting")
    world.reconcile(sid)  # the power button: the fake guest powers off
    world.reconciler.executor.crash_after = "reboot:start_guest"
    with pytest.raises(SystemExit):
        world.reconcile(sid)
    world.restart_agent()
    world.converge(sid)
    assert world.virt.faults.calls.count("start_guest") == 2  # power on, the reboot: no third
    assert world.virt.faults.calls.count("request_shutdown") == 1
    assert world.row(sid).task_state is None and world.row(sid).vm_state == "active"


def test_a_rule_the_share_service_applies_later_is_waited_for_without_a_worker(
        world: World) -> None:
    """The share service applies rules asynchronously: the pass requeues, nothing sleeps, the
    attachment stays `attaching` without a fault; a detach waits the same way for the rule
    to go before the row does."""
    world.provider.apply_delay = 2
    sid, _ = running_server(world)
    mid = world.attach(sid, 5)
    first = world.reconcile(sid)
    assert first.next == Next.REQUEUE and "share service" in first.why and first.after <= 0.5
    m = world.mapping(mid)
    assert m is not None and m.status == "attaching" and not m.fault_message and not m.attempts
    assert world.host.mounts == {} and world.virt.guests[sid].devices == {}
    world.converge(sid)
    assert world.mapping(mid).status == "active"  # type: ignore[union-attr]
    world.set_status(mid, "detaching")
    world.reconcile(sid)  # the agent sees `detaching`; the guest then reports it let go
    world.metadata.reports.record(sid, frozenset())
    while world.provider.rules:
        world.reconcile(sid)
    assert world.mapping(mid) is not None  # the rule is on its way out: the row waits for it
    world.converge(sid)
    assert world.mapping(mid) is None and world.provider.rules == {}


def test_a_rule_under_way_is_looked_at_soon_then_less_often(world: World) -> None:
    """The first looks come soon (a rule is often applied within a few tenths of a second),
    the later ones every PENDING_POLL; a pass that finds it done starts the count afresh."""
    world.provider.apply_delay = 5
    sid, _ = running_server(world)
    world.attach(sid, 5)
    waits = [world.reconcile(sid).after for _ in range(5)]
    assert waits == [0.1, 0.2, 0.4, 0.5, 0.5]
    world.converge(sid)
    assert sid not in world.reconciler.memory.pending_looks
    world.provider.apply_delay = 1
    world.attach(sid, 6)
    assert world.reconcile(sid).after == 0.1


# ---- a DELETE while the agent works on the attach (2.97 allows it in any status) --------------
def test_detach_asked_while_attaching_is_not_overwritten(world: World,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The DELETE lands while a pass is granting access for the attach: the pass must not
    write `inactive` over `detaching`, and the next passes release everything."""
    sid = world.server()
    mid = world.attach(sid, 1)
    grant = world.provider.grant_access

    def grant_then_delete(*args: object, **kw: object) -> bool:
        done = grant(*args, **kw)  # type: ignore[arg-type]
        world.set_status(mid, "detaching")  # the API's DELETE, mid-pass
        return done

    monkeypatch.setattr(world.provider, "grant_access", grant_then_delete)
    world.reconcile(sid)
    mapping = world.mapping(mid)
    assert mapping is None or mapping.status == "detaching"
    world.converge(sid)
    assert world.mapping(mid) is None
    assert world.provider.rules == {} and world.host.mounts == {}


def test_detach_asked_while_hot_attaching_leaves_nothing(world: World,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The same on a running guest, the DELETE landing after the device went in."""
    sid, _ = running_server(world)
    mid = world.attach(sid, 2)
    plug = world.virt.attach_share

    def plug_then_delete(*args: object, **kw: object) -> None:
        plug(*args, **kw)  # type: ignore[arg-type]
        world.set_status(mid, "detaching")  # the API's DELETE, after the device went in

    monkeypatch.setattr(world.virt, "attach_share", plug_then_delete)
    world.reconcile(sid)
    assert world.mapping(mid).status == "detaching"  # type: ignore[union-attr]
    assert world.reconcile(sid).next == Next.REQUEUE  # the release waits for the guest...
    world.metadata.reports.record(sid, frozenset())  # ...which has not mounted it
    world.converge(sid)
    assert world.mapping(mid) is None
    assert world.virt.guests[sid].devices == {}
    assert world.provider.rules == {} and world.host.mounts == {}


@pytest.mark.parametrize("running", [False, True])
def test_detach_from_a_server_in_error(world: World, running: bool) -> None:
    """2.97 lets a share be detached from a server in ERROR: the agent releases it whether
    the guest still runs or not."""
    if running:
        sid, (mid,) = running_server(world, 1)
    else:
        sid = world.server()
        mid = world.attach(sid, 1)
        world.converge(sid)
    world.set(sid, vm_state="error")
    world.set_status(mid, "detaching")
    world.reconcile(sid)
    world.metadata.reports.record(sid, frozenset())  # a running guest lets go
    world.converge(sid)
    assert world.mapping(mid) is None
    assert world.provider.rules == {} and world.host.mounts == {}
    if running:
        assert world.virt.guests[sid].devices == {}


def test_an_attachment_waiting_too_long_says_what_for(world: World,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Passes that keep waiting (here for the share service's rule) for [agent] stall_after s:
    the attachment in flight says what it waits for, once; the wait's end clears it."""
    world.provider.apply_delay = 3
    sid, _ = running_server(world)
    mid = world.attach(sid, 6)
    clock = [1000.0]
    monkeypatch.setattr("attachfs.agent.runner.time.monotonic", lambda: clock[0])
    agent = world.agent
    agent._inflight.add(sid)
    agent._run_one(sid)  # waits for the rule: requeued
    assert agent._waiting[sid][:2] == (1000.0, False)
    assert not world.mapping(mid).fault_message  # type: ignore[union-attr]
    clock[0] += world.config.agent.stall_after + 1
    agent._inflight.add(sid)
    agent._run_one(sid)
    m = world.mapping(mid)
    assert m is not None and m.status == "attaching"
    assert m.fault_message == (f"still waiting after {world.config.agent.stall_after + 1:.0f}s "
                               "for the share service to finish hot_attach:grant_access(t6)"
                               ), m.fault_message
    world.converge(sid)
    m = world.mapping(mid)
    assert m is not None and m.status == "active" and m.fault_message is None
