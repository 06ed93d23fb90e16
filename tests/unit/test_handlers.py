"""The core's command handlers on a SQLite unit of work, with test collaborators (policy that
allows, a share look-up from a dict, built-in storage that only counts): no HTTP, no host."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from attachfs import errors
from attachfs.api import faults
from attachfs.core import commands
from attachfs.core.context import RequestContext, ShareInfo
from attachfs.core.handlers import HANDLERS, handle, queries
from attachfs.core.ports import BuiltinShareRecord, Env
from attachfs.db.engine import Database, migrate
from attachfs.db.uow import SqlUnitOfWork

ALICE = RequestContext("alice", "p1", ("member", "reader"), request_id="req-1")
IMAGE_ID = "7d0e2b4e-35a5-5b43-9d9c-2a5d1a0c9e11"


class AllowAll:
    def authorize(self, rule: str, context: RequestContext, target_project: str) -> None:
        if target_project != context.project_id and not context.is_admin:
            raise errors.Forbidden(rule)


@dataclass
class Shares:
    known: dict[str, ShareInfo] = field(default_factory=dict)

    def add(self, protocol: str = "NFS", status: str = "available") -> str:
        share_id = str(uuid.uuid4())
        self.known[share_id] = ShareInfo(share_id, "s", status, protocol,
                                         (f"host:/{share_id}",), "p1", 1)
        return share_id

    def get_share(self, share_id: str, context: RequestContext) -> ShareInfo:
        if share_id not in self.known:
            raise errors.NotFound(f"Share {share_id} could not be found.")
        return self.known[share_id]

    def fences(self, share_id: str) -> bool:
        return True


@dataclass
class Storage:
    dirs: set[str] = field(default_factory=set)

    def create_dir(self, share_id: str, size_gib: int) -> Path:
        self.dirs.add(share_id)
        return Path("/nonexistent") / share_id

    def delete_dir(self, share_id: str) -> None:
        self.dirs.discard(share_id)

    def usage_bytes(self, share_id: str) -> int:
        return 0

    def info(self, share: BuiltinShareRecord) -> ShareInfo:
        return ShareInfo(share.uuid, share.name, share.status, "LOCAL",
                         (f"local:/nonexistent/{share.uuid}",), share.project_id,
                         share.size_gib, share.scope, share.mount_point)


class Images:
    ids = {"debian-busybox": IMAGE_ID, IMAGE_ID: IMAGE_ID, "other": str(uuid.uuid4())}

    def image_id(self, ref: str) -> str:
        if ref not in self.ids:
            raise errors.NotFound(f"Image {ref} could not be found.")
        return self.ids[ref]


@dataclass
class World:
    uow: SqlUnitOfWork
    env: Env
    shares: Shares
    storage: Storage
    wakes: list[int]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    url = f"sqlite:///{tmp_path}/attachfs.db"
    migrate(url)
    db = Database(url)
    shares, storage, wakes = Shares(), Storage(), []
    env = Env(policy=AllowAll(), shares=shares, builtin=storage, images=Images(),
              host="h1", hot_plug=True,
              max_attachments_per_server=3)
    yield World(SqlUnitOfWork(db, lambda host: wakes.append(1)), env, shares, storage, wakes)
    db.dispose()


def _server(w: World, vm_state: str = "stopped") -> str:
    server = handle(commands.CreateServer(ALICE, "vm", "1", "debian-busybox"), w.uow, w.env)
    with w.uow.write() as repos:  # settle it where the agent would leave it
        row = repos.servers.get(server.uuid)
        assert row is not None
        row.vm_state, row.task_state = vm_state, None
    return str(server.uuid)


def test_every_command_has_one_handler() -> None:
    assert set(HANDLERS) == {c for c in vars(commands).values() if isinstance(c, type)
                             and issubclass(c, commands.Command) and c is not commands.Command}


def test_every_client_error_has_a_fault() -> None:
    for cls in (errors.BadRequest, errors.Forbidden, errors.NotFound, errors.Conflict,
                errors.Duplicate, errors.ServiceUnavailable, errors.Unauthorized):
        code, name = faults.status_and_name(cls("x"))
        assert 400 <= code < 600 and name
    assert faults.status_and_name(errors.Duplicate("x")) == (409, "conflictingRequest")


def test_create_server_records_desired_state(world: World) -> None:
    sid = _server(world)
    seen = queries.show_server(world.uow, world.env, ALICE, sid)
    (server,) = seen.servers
    assert (server.host, server.power_intent, seen.attachments, seen.host_status) == (
        "h1", "on", {sid: []}, {})
    assert [a.action for a in queries.list_actions(world.uow, world.env, ALICE, sid)] == ["create"]
    with pytest.raises(errors.NotFound, match="Flavor"):
        handle(commands.CreateServer(ALICE, "vm", "99", "debian-busybox"), world.uow, world.env)
    with pytest.raises(errors.BadRequest, match="block_device_mapping_v2"):
        handle(commands.CreateServer(ALICE, "vm", "1", "debian-busybox",
                                     boot_image_refs=("other",)), world.uow, world.env)


def test_attach_then_retry_only_from_error_when_asked(world: World) -> None:
    sid, share_id = _server(world), world.shares.add("CEPHFS")  # docs: CEPHFS attaches
    mapping = handle(commands.AttachShare(ALICE, sid, share_id, "data"), world.uow, world.env)
    assert (mapping.status, mapping.tag, mapping.share_proto) == ("attaching", "data", "CEPHFS")
    same = f"Share '{share_id}' or tag '{share_id}' already associated to this server."
    with pytest.raises(errors.Conflict) as refused:
        handle(commands.AttachShare(ALICE, sid, share_id), world.uow, world.env)
    assert refused.value.message == same
    with world.uow.write() as repos:
        row = repos.attachments.get(sid, share_id)
        assert row is not None
        repos.attachments.update(row.uuid, status="error")
    with pytest.raises(errors.Conflict):  # a retry is asked for, never implied
        handle(commands.AttachShare(ALICE, sid, share_id), world.uow, world.env)
    again = handle(commands.AttachShare(ALICE, sid, share_id, retry=True), world.uow, world.env)
    assert again.status == "attaching"


def test_a_tag_in_use_is_the_same_conflict(world: World) -> None:
    sid = _server(world)
    first, second, third = world.shares.add(), world.shares.add(), world.shares.add()
    handle(commands.AttachShare(ALICE, sid, first), world.uow, world.env)  # tag: its id
    handle(commands.AttachShare(ALICE, sid, second, "data"), world.uow, world.env)
    for tag in ("data", first):  # another's tag, and another's default tag
        with pytest.raises(errors.Conflict) as refused:
            handle(commands.AttachShare(ALICE, sid, third, tag), world.uow, world.env)
        assert refused.value.message == (f"Share '{third}' or tag '{tag}' already associated "
                                         "to this server.")


@pytest.mark.parametrize(("protocol", "tag", "error"), [
    ("CIFS", None, errors.Conflict),
    ("NFS", "x" * 37, errors.BadRequest),
    ("NFS", "a_b", errors.BadRequest),
])
def test_attach_refusals(world: World, protocol: str, tag: str | None,
                         error: type[Exception]) -> None:
    sid, share_id = _server(world), world.shares.add(protocol)
    with pytest.raises(error):
        handle(commands.AttachShare(ALICE, sid, share_id, tag), world.uow, world.env)
    assert queries.list_attachments(world.uow, world.env, ALICE, sid) == []


def test_other_projects_see_nothing(world: World) -> None:
    sid, share_id = _server(world), world.shares.add()
    bob = RequestContext("bob", "p2", ("member",))
    with pytest.raises(errors.NotFound):
        handle(commands.AttachShare(bob, sid, share_id), world.uow, world.env)
    with pytest.raises(errors.NotFound):
        handle(commands.StartServer(bob, sid), world.uow, world.env)


def test_detach_is_honoured_while_attaching(world: World) -> None:
    sid, share_id = _server(world), world.shares.add()
    handle(commands.AttachShare(ALICE, sid, share_id), world.uow, world.env)
    handle(commands.DetachShare(ALICE, sid, share_id), world.uow, world.env)
    assert queries.show_attachment(world.uow, world.env, ALICE, sid, share_id).status == \
        "detaching"
    handle(commands.DetachShare(ALICE, sid, share_id), world.uow, world.env)  # again: the same
    for missing in (str(world.shares.add()), "not-a-uuid"):
        with pytest.raises(errors.NotFound) as refused:
            handle(commands.DetachShare(ALICE, sid, missing), world.uow, world.env)
        assert refused.value.message == f"Share {missing} could not be found."


def test_detach_from_a_server_in_error(world: World) -> None:
    sid, share_id = _server(world), world.shares.add()
    handle(commands.AttachShare(ALICE, sid, share_id), world.uow, world.env)
    with world.uow.write() as repos:
        row = repos.servers.get(sid)
        assert row is not None
        row.vm_state = "error"
    handle(commands.DetachShare(ALICE, sid, share_id), world.uow, world.env)
    with pytest.raises(errors.Conflict) as refused:
        handle(commands.AttachShare(ALICE, sid, world.shares.add()), world.uow, world.env)
    assert refused.value.message == (f"Cannot 'create share' instance {sid} while it is in "
                                     "vm_state error")


def test_power_changes_need_an_idle_server(world: World) -> None:
    sid = _server(world)
    handle(commands.StartServer(ALICE, sid), world.uow, world.env)
    with pytest.raises(errors.Conflict) as refused:  # vm_state first, as the compute service
        handle(commands.StopServer(ALICE, sid), world.uow, world.env)
    assert refused.value.message == f"Cannot 'stop' instance {sid} while it is in vm_state stopped"
    with pytest.raises(errors.Conflict, match="task_state powering-on"):
        handle(commands.StartServer(ALICE, sid), world.uow, world.env)
    handle(commands.DeleteServer(ALICE, sid), world.uow, world.env)
    handle(commands.DeleteServer(ALICE, sid), world.uow, world.env)  # repeated: no change
    actions = [a.action for a in queries.list_actions(world.uow, world.env, ALICE, sid)]
    assert actions.count("delete") == 1


def test_project_share_reaches_the_projects_servers(world: World) -> None:
    sid = _server(world)
    share = handle(commands.CreateShare(ALICE, "team", 1, "project", "p1",
                                        taken_message="taken"), world.uow, world.env)
    assert [m.share_id for m in queries.list_attachments(world.uow, world.env, ALICE, sid)] \
        == [share.uuid]
    with pytest.raises(errors.Conflict, match="^taken$"):
        handle(commands.CreateShare(ALICE, "team", 1, "instance", "p1", taken_message="taken"),
               world.uow, world.env)
    assert world.storage.dirs == {share.uuid}  # the refused create left no filesystem
    ref = commands.ShareRef(name="team", label="Filesystem team")
    with pytest.raises(errors.Conflict, match="Filesystem team is attached to server"):
        handle(commands.DeleteShare(ALICE, ref), world.uow, world.env)


def test_unique_race_is_a_duplicate(world: World) -> None:
    """What the loser of a concurrent attach meets on PostgreSQL: the unit of work turns the
    unique constraint into a domain Conflict."""
    sid = _server(world)
    with pytest.raises(errors.Duplicate, match="Tag is already used"), world.uow.write() as repos:
        for share_id in (str(uuid.uuid4()), str(uuid.uuid4())):
            repos.attachments.add(uuid=str(uuid.uuid4()), instance_uuid=sid,
                                  share_id=share_id, status="attaching", tag="same",
                                  user_id="u", project_id="p1")
        repos.flush()
