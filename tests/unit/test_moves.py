"""Moves between hosts on fakes: two hosts' agents (tests/fakes/world.py) on one database and
one storage side, the moves asked through the core's handlers as the API asks them: evacuate
with fencing, cold migrate with confirm and revert, and a failed host that comes back."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import select

from attachfs import errors
from attachfs.core import commands
from attachfs.core.context import RequestContext
from attachfs.core.handlers import handle
from attachfs.core.ports import Env
from attachfs.db.tables import Host, InstanceAction, Migration, ShareMapping, utcnow
from attachfs.db.uow import SqlUnitOfWork
from attachfs.errors import PermanentError
from tests.fakes.storage import FakeProvider
from tests.fakes.world import World, make_world
from tests.unit.test_handlers import AllowAll, Images, Shares, Storage

ADMIN = RequestContext("admin", "p-admin", ("admin", "member", "reader"), request_id="req-a")
A, B = "host-a", "host-b"


@dataclass
class Fencing(Shares):
    """Shares the storage can cut a host off (all but those named `blind`)."""

    blind: set[str] = field(default_factory=set)

    def fences(self, share_id: str) -> bool:
        return share_id not in self.blind


@dataclass
class Cloud:
    a: World
    b: World
    uow: SqlUnitOfWork
    shares: Fencing
    provider: FakeProvider

    @property
    def env(self) -> Env:
        return Env(policy=AllowAll(), shares=self.shares, builtin=Storage(), images=Images(),
                   host=A, hot_plug=True,
                   max_attachments_per_server=8, down_after=60.0)

    def ask(self, command: commands.Command) -> None:
        handle(command, self.uow, self.env)

    def host_down(self, name: str, forced: bool = False) -> None:
        with self.a.db.session() as s:
            host = s.scalar(select(Host).where(Host.name == name))
            assert host is not None
            host.heartbeat_at = utcnow() - dt.timedelta(minutes=5)
            host.forced_down = forced

    def migration(self, sid: str) -> Migration:
        with self.a.db.read() as s:
            row = s.scalar(select(Migration).where(Migration.instance_uuid == sid)
                           .order_by(Migration.id.desc()))
            assert row is not None
            return row

    def statuses(self, sid: str) -> list[str]:
        with self.a.db.read() as s:
            return list(s.scalars(select(ShareMapping.status)
                                  .where(ShareMapping.instance_uuid == sid)))


@pytest.fixture
def cloud(tmp_path: Path) -> Cloud:
    provider, url = FakeProvider(), f"sqlite:///{tmp_path}/cloud.db"
    a = make_world(tmp_path / "a", name=A, db_url=url, provider=provider)
    b = make_world(tmp_path / "b", name=B, db_url=url, provider=provider)
    with a.db.session() as s:
        for n, name in enumerate((A, B)):
            s.add(Host(uuid=f"00000000-0000-0000-0000-00000000000{n}", name=name,
                       storage_address=f"10.0.0.{n + 1}", ceph_id=f"attachfs-{name}",
                       transports=["virtiofs"], vcpus=2, memory_mib=4096))
    return Cloud(a, b, SqlUnitOfWork(a.db), Fencing(), provider)


def running_on_a(cloud: Cloud, *shares: int) -> str:
    a = cloud.a
    sid = a.server()
    for n in shares:
        a.attach(sid, n)
    a.converge(sid)
    a.set(sid, task_state="powering-on", power_intent="on")
    a.converge(sid)
    assert sid in a.virt.guests and a.row(sid).vm_state == "active"
    return sid


# ---- evacuate ------------------------------------------------------------------------------
def test_evacuate_fences_the_failed_host_then_rebuilds_with_every_share(cloud: Cloud) -> None:
    sid = running_on_a(cloud, 1, 2)
    assert set(cloud.provider.rules) == {("sh1", A), ("sh2", A)}
    cloud.host_down(A)  # its agent stopped heartbeating; its guest and mounts are still there
    cloud.ask(commands.EvacuateServer(ADMIN, sid))
    row = cloud.b.row(sid)
    assert (row.host, row.task_state) == (B, "rebuilding")

    # the first pass on the new host fences and does nothing else
    plan, _, _ = cloud.b.reconciler.plan_for(sid)
    assert [s.name for s in plan.steps] == ["evacuate:fence", "evacuate:fence", "evacuate:fenced"]
    cloud.b.reconcile(sid)
    assert cloud.provider.rules == {} and cloud.migration(sid).fenced
    assert cloud.b.virt.guests == {}

    cloud.b.converge(sid)
    assert set(cloud.provider.rules) == {("sh1", B), ("sh2", B)}
    guest = cloud.b.virt.guests[sid]
    assert set(guest.devices) == {"t1", "t2"}
    row = cloud.b.row(sid)
    assert (row.vm_state, row.task_state, row.host) == ("active", None, B)
    assert cloud.statuses(sid) == ["active", "active"]
    assert cloud.migration(sid).status == "done"
    with cloud.a.db.read() as s:
        action = s.scalar(select(InstanceAction).where(InstanceAction.action == "evacuate"))
        assert action is not None and action.result == "Success"
        assert f"host {A} fenced: its access to share(s) sh1, sh2 revoked" in (action.message or "")


def test_a_failed_host_that_comes_back_removes_the_moved_guest_and_nothing_else(
        cloud: Cloud) -> None:
    sid = running_on_a(cloud, 1)
    cloud.host_down(A)
    cloud.ask(commands.EvacuateServer(ADMIN, sid))
    cloud.b.converge(sid)
    assert sid in cloud.a.virt.guests and cloud.a.host.mounts  # left behind by the failure

    cloud.a.restart_agent()  # host A is back: its repair looks at every guest it has
    plan, _, _ = cloud.a.reconciler.plan_for(sid)
    assert [s.name for s in plan.steps] == ["moved_away:stop_guest", "moved_away:remove_metadata",
                                            "moved_away:unmount", "moved_away:forget"]
    cloud.a.converge(sid)
    cloud.a.reconciler.reconcile_host()
    assert cloud.a.virt.guests == {} and cloud.a.host.mounts == {}
    assert not cloud.a.metadata.serving(sid)
    # the server, its attachments and the new host's access are untouched
    assert set(cloud.provider.rules) == {("sh1", B)}
    assert cloud.b.row(sid).host == B and cloud.statuses(sid) == ["active"]
    assert sid in cloud.b.virt.guests


def test_a_fence_the_storage_is_still_applying_holds_the_rebuild(cloud: Cloud) -> None:
    sid = running_on_a(cloud, 1)
    cloud.host_down(A)
    cloud.ask(commands.EvacuateServer(ADMIN, sid))
    cloud.provider.apply_delay = 2  # the share service removes the rule over two looks
    for _ in range(2):
        result = cloud.b.reconcile(sid)
        assert result.next == "requeue" and "fence" in result.why
        assert not cloud.migration(sid).fenced and ("sh1", B) not in cloud.provider.rules
        assert cloud.b.virt.guests == {}
    cloud.b.converge(sid)
    assert set(cloud.provider.rules) == {("sh1", B)} and sid in cloud.b.virt.guests


def test_a_fence_the_storage_refuses_fails_the_evacuation(cloud: Cloud) -> None:
    sid = running_on_a(cloud, 1)
    cloud.host_down(A)
    cloud.ask(commands.EvacuateServer(ADMIN, sid))
    cloud.provider.faults.fail("revoke_access", PermanentError("the share service says no"))
    cloud.b.reconcile(sid)
    row = cloud.b.row(sid)
    assert row.vm_state == "error" and row.task_state is None
    assert "fencing host host-a off share sh1 failed" in (row.fault_message or "")
    assert cloud.migration(sid).status == "failed" and cloud.b.virt.guests == {}


def test_evacuate_is_refused_while_the_host_is_up_or_not_fenced(cloud: Cloud) -> None:
    sid = running_on_a(cloud, 1)
    with pytest.raises(errors.Conflict, match=f"Compute service of {A} is still in use"):
        cloud.ask(commands.EvacuateServer(ADMIN, sid))
    cloud.host_down(A)
    cloud.shares.blind.add("sh1")  # a built-in share: its storage cannot cut host A off
    with pytest.raises(errors.Conflict, match="fence the host yourself"):
        cloud.ask(commands.EvacuateServer(ADMIN, sid))
    with pytest.raises(errors.NotFound, match="Compute host nowhere could not be found"):
        cloud.ask(commands.EvacuateServer(ADMIN, sid, host="nowhere"))
    cloud.host_down(A, forced=True)  # the operator fenced it and says so
    cloud.ask(commands.EvacuateServer(ADMIN, sid, stop=True))  # 2.95: stopped on arrival
    cloud.b.converge(sid)
    row = cloud.b.row(sid)
    assert (row.vm_state, row.host) == ("stopped", B) and cloud.statuses(sid) == ["inactive"]


def test_evacuate_with_no_other_host_is_a_400(cloud: Cloud) -> None:
    sid = running_on_a(cloud, 1)
    cloud.host_down(A)
    cloud.host_down(B)
    with pytest.raises(errors.BadRequest, match="No valid host was found"):
        cloud.ask(commands.EvacuateServer(ADMIN, sid))
    assert cloud.a.row(sid).host == A and cloud.a.row(sid).task_state is None


# ---- cold migrate --------------------------------------------------------------------------
def test_cold_migrate_stops_moves_and_starts_with_shares_then_confirm(cloud: Cloud) -> None:
    sid = running_on_a(cloud, 1, 2)
    cloud.ask(commands.MigrateServer(ADMIN, sid))
    assert cloud.a.row(sid).task_state == "resize_prep"
    assert cloud.migration(sid).status == "pre-migrating"
    cloud.a.converge(sid)  # the source lets go: guest, mounts, access, then hands over
    assert cloud.a.virt.guests == {} and cloud.a.host.mounts == {}
    assert cloud.provider.rules == {}
    row = cloud.b.row(sid)
    assert (row.host, row.task_state) == (B, "resize_migrated")
    assert cloud.statuses(sid) == ["inactive", "inactive"]

    cloud.b.converge(sid)  # the destination takes it
    assert set(cloud.provider.rules) == {("sh1", B), ("sh2", B)}
    assert set(cloud.b.virt.guests[sid].devices) == {"t1", "t2"}
    row = cloud.b.row(sid)
    assert (row.vm_state, row.task_state) == ("resized", None)
    assert cloud.statuses(sid) == ["active", "active"]
    assert cloud.migration(sid).status == "finished"

    cloud.ask(commands.ConfirmMigration(ADMIN, sid))
    assert cloud.b.row(sid).vm_state == "active" and cloud.migration(sid).status == "confirmed"
    assert cloud.b.converge(sid) == 0 and cloud.a.converge(sid) == 0


def test_revert_brings_the_server_back_to_its_source(cloud: Cloud) -> None:
    sid = running_on_a(cloud, 1)
    cloud.ask(commands.MigrateServer(ADMIN, sid, host=B))
    cloud.a.converge(sid)
    cloud.b.converge(sid)
    cloud.ask(commands.RevertMigration(ADMIN, sid))
    assert cloud.b.row(sid).task_state == "resize_reverting"
    cloud.b.converge(sid)  # the destination lets go
    assert cloud.b.virt.guests == {} and cloud.provider.rules == {}
    assert cloud.a.row(sid).host == A
    cloud.a.converge(sid)  # and the source takes it back
    row = cloud.a.row(sid)
    assert (row.vm_state, row.task_state, row.host) == ("active", None, A)
    assert set(cloud.provider.rules) == {("sh1", A)} and sid in cloud.a.virt.guests
    assert cloud.migration(sid).status == "reverted"


def test_a_stopped_server_migrates_stopped(cloud: Cloud) -> None:
    a = cloud.a
    sid = a.server()
    a.attach(sid, 1)
    a.converge(sid)
    cloud.ask(commands.MigrateServer(ADMIN, sid))
    a.converge(sid)
    cloud.b.converge(sid)
    assert cloud.b.virt.guests == {} and cloud.b.row(sid).vm_state == "resized"
    assert set(cloud.provider.rules) == {("sh1", B)} and cloud.statuses(sid) == ["inactive"]
    cloud.ask(commands.ConfirmMigration(ADMIN, sid))
    assert cloud.b.row(sid).vm_state == "stopped"


def test_a_share_another_server_of_the_source_uses_keeps_its_rule_there(cloud: Cloud) -> None:
    sid = running_on_a(cloud, 1)
    other = running_on_a(cloud, 1)
    cloud.ask(commands.MigrateServer(ADMIN, sid))
    cloud.a.converge(sid)
    assert ("sh1", A) in cloud.provider.rules  # the other server still mounts it here
    assert cloud.a.host.mounts and other in cloud.a.virt.guests
    cloud.b.converge(sid)
    assert {("sh1", A), ("sh1", B)} <= set(cloud.provider.rules)


def test_migrate_refusals(cloud: Cloud) -> None:
    sid = running_on_a(cloud, 1)
    with pytest.raises(errors.BadRequest, match="can't be the same one"):
        cloud.ask(commands.MigrateServer(ADMIN, sid, host=A))
    with pytest.raises(errors.BadRequest, match="Compute host nowhere could not be found"):
        cloud.ask(commands.MigrateServer(ADMIN, sid, host="nowhere"))
    with pytest.raises(errors.Conflict, match="while it is in vm_state active"):
        cloud.ask(commands.ConfirmMigration(ADMIN, sid))
    cloud.ask(commands.MigrateServer(ADMIN, sid))
    with pytest.raises(errors.Conflict, match="task_state resize_prep"):
        cloud.ask(commands.MigrateServer(ADMIN, sid))
    with pytest.raises(errors.Conflict, match="task_state resize_prep"):
        cloud.ask(commands.AttachShare(ADMIN, sid, cloud.shares.add()))


def test_a_source_host_that_is_down_cannot_migrate(cloud: Cloud) -> None:
    sid = running_on_a(cloud, 1)
    cloud.host_down(A)
    with pytest.raises(errors.Conflict, match="evacuate the server instead"):
        cloud.ask(commands.MigrateServer(ADMIN, sid))


def test_delete_during_a_move_ends_the_migration(cloud: Cloud) -> None:
    sid = running_on_a(cloud, 1)
    cloud.ask(commands.MigrateServer(ADMIN, sid))
    cloud.ask(commands.DeleteServer(ADMIN, sid))
    assert cloud.migration(sid).status == "error"
    cloud.a.converge(sid)
    assert cloud.a.virt.guests == {} and cloud.provider.rules == {}



# ---- a crash after every step of a move ------------------------------------------------------
EVACUATE = ["evacuate:fence", "evacuate:fenced", "evacuate:grant_access", "evacuate:mount",
            "evacuate:metadata", "evacuate:start_guest", "evacuate:record", "evacuate:finish"]
MIGRATE = ["migrate:stop_guest", "migrate:remove_metadata", "migrate:unmount",
           "migrate:revoke_access", "migrate:record", "migrate:forget", "migrate:handoff",
           "migrate:grant_access", "migrate:mount", "migrate:metadata", "migrate:start_guest",
           "migrate:finish"]


def converge_with_crash(cloud: Cloud, sid: str, point: str,
                        worlds: tuple[World, ...]) -> bool:
    """Every host's agent converges; the one that reaches `point` dies right after it and is
    started again (no memory). Whether the point was reached."""
    crashed = False
    for w in worlds:
        w.reconciler.executor.crash_after = point
    for _ in range(6):
        for w in worlds:
            try:
                w.converge(sid, passes=40)
            except SystemExit:
                crashed = True
                w.restart_agent()
    return crashed


@pytest.fixture
def crashes(monkeypatch: pytest.MonkeyPatch) -> None:
    from attachfs.agent import executor as executor_module

    def exit_now(code: int) -> None:
        raise SystemExit(code)

    monkeypatch.setattr(executor_module.os, "_exit", exit_now)


@pytest.mark.usefixtures("crashes")
@pytest.mark.parametrize("point", EVACUATE)
def test_evacuate_survives_a_crash_after_each_step(cloud: Cloud, point: str) -> None:
    sid = running_on_a(cloud, 1, 2)
    cloud.host_down(A)
    cloud.ask(commands.EvacuateServer(ADMIN, sid))
    assert converge_with_crash(cloud, sid, point, (cloud.b,)), point
    row = cloud.b.row(sid)
    assert (row.vm_state, row.task_state, row.host) == ("active", None, B)
    assert set(cloud.provider.rules) == {("sh1", B), ("sh2", B)}
    assert set(cloud.b.virt.guests[sid].devices) == {"t1", "t2"}
    assert cloud.statuses(sid) == ["active", "active"]
    assert cloud.migration(sid).status == "done"


@pytest.mark.usefixtures("crashes")
@pytest.mark.parametrize("point", MIGRATE)
def test_cold_migrate_survives_a_crash_after_each_step(cloud: Cloud, point: str) -> None:
    sid = running_on_a(cloud, 1)
    cloud.ask(commands.MigrateServer(ADMIN, sid))
    assert converge_with_crash(cloud, sid, point, (cloud.a, cloud.b)), point
    row = cloud.b.row(sid)
    assert (row.vm_state, row.task_state, row.host) == ("resized", None, B)
    assert set(cloud.provider.rules) == {("sh1", B)}
    assert cloud.a.virt.guests == {} and cloud.a.host.mounts == {}
    assert set(cloud.b.virt.guests[sid].devices) == {"t1"}
    assert cloud.statuses(sid) == ["active"] and cloud.migration(sid).status == "finished"


@pytest.mark.usefixtures("crashes")
@pytest.mark.parametrize("point", ["moved_away:stop_guest", "moved_away:remove_metadata",
                                   "moved_away:unmount", "moved_away:forget"])
def test_a_returning_host_survives_a_crash_while_cleaning_up(cloud: Cloud, point: str) -> None:
    sid = running_on_a(cloud, 1)
    cloud.host_down(A)
    cloud.ask(commands.EvacuateServer(ADMIN, sid))
    cloud.b.converge(sid)
    cloud.a.restart_agent()
    assert converge_with_crash(cloud, sid, point, (cloud.a,)), point
    cloud.a.reconciler.reconcile_host()
    assert cloud.a.virt.guests == {} and cloud.a.host.mounts == {}
    assert set(cloud.provider.rules) == {("sh1", B)} and sid in cloud.b.virt.guests


@pytest.mark.parametrize("b_fenced", [False, True])
def test_an_evacuation_whose_new_host_fails_too_can_be_evacuated_again(
        tmp_path: Path, b_fenced: bool) -> None:
    provider, url = FakeProvider(), f"sqlite:///{tmp_path}/cloud.db"
    worlds = {n: make_world(tmp_path / n, name=n, db_url=url, provider=provider)
              for n in ("host-a", "host-b", "host-c")}
    with worlds["host-a"].db.session() as s:
        for n, name in enumerate(worlds):
            s.add(Host(uuid=f"00000000-0000-0000-0000-00000000000{n}", name=name,
                       transports=["virtiofs"], vcpus=2, memory_mib=4096 - n))
    c = Cloud(worlds["host-a"], worlds["host-b"], SqlUnitOfWork(worlds["host-a"].db), Fencing(),
              provider)
    sid = running_on_a(c, 1)
    c.host_down("host-a")
    c.ask(commands.EvacuateServer(ADMIN, sid, host="host-b"))
    if b_fenced:  # B fenced A and took the share, then failed before it started the guest
        c.b.reconcile(sid)
        provider.rules[("sh1", "host-b")] = "rw"
    c.host_down("host-b")
    with pytest.raises(errors.Conflict, match="task_state rebuilding"):
        c.ask(commands.MigrateServer(ADMIN, sid))
    c.ask(commands.EvacuateServer(ADMIN, sid))
    assert c.a.row(sid).host == "host-c"
    worlds["host-c"].converge(sid)
    assert set(provider.rules) == {("sh1", "host-c")}  # neither failed host keeps access
    assert worlds["host-c"].row(sid).vm_state == "active"
    with c.a.db.read() as s:
        statuses = list(s.scalars(select(Migration.status).order_by(Migration.id)))
    assert statuses == (["failed", "done"] if b_fenced else ["done"])
