"""The config drive observed like any other state (agent/config_drives.py): read back from the
ISO (real genisoimage, read with pycdlib) or a container's directory, compared with what the rows
say, rebuilt when it differs and left alone when it does not. The agent on fakes otherwise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from attachfs.agent.config_drives import ABSENT, read_directory, read_iso
from attachfs.agent.state import Snapshot
from attachfs.db.tables import Server
from attachfs.virt.configdrive import build_config_drive
from tests.fakes.world import World, make_world


@pytest.fixture
def world(tmp_path: Path) -> World:
    return make_world(tmp_path)


def drive_tags(iso: Path) -> list[str] | None:
    files = read_iso(iso)
    if files is None:
        return None
    return [d["tag"] for d in json.loads(files["openstack/latest/meta_data.json"])["devices"]]


def stopped_with_drive(world: World) -> tuple[str, Path]:
    """A stopped server with a config drive and share 1 attached (inactive)."""
    sid = world.server(config_drive=True)
    world.attach(sid, 1)
    world.converge(sid)
    iso = world.reconciler.drives.location(world.row(sid))
    assert iso is not None
    return sid, iso


def steps(world: World, sid: str) -> list[str]:
    return world.reconciler.plan_for(sid)[0].names


def test_a_cold_attach_writes_the_share_on_the_drive(world: World) -> None:
    _, iso = stopped_with_drive(world)
    assert drive_tags(iso) == ["t1"]


@pytest.mark.parametrize("damage", ["deleted", "garbage", "an old list"])
def test_a_drive_that_does_not_hold_the_rows_is_rebuilt(world: World, damage: str) -> None:
    sid, iso = stopped_with_drive(world)
    if damage == "deleted":
        iso.unlink()
    elif damage == "garbage":
        iso.write_bytes(b"\0not an iso" * 100)
    else:  # what a crash between a record and its rebuild leaves: the list before the attach
        build_config_drive(iso, {"openstack/latest/meta_data.json": b'{"devices": []}'})
    assert steps(world, sid) == ["repair:config_drive"]
    assert world.converge(sid) == 1
    assert drive_tags(iso) == ["t1"]
    assert steps(world, sid) == []


def test_a_drive_that_holds_the_rows_is_not_rebuilt(world: World) -> None:
    sid, iso = stopped_with_drive(world)
    before = iso.stat().st_mtime_ns, iso.stat().st_ino
    world.set(sid, task_state="powering-on", power_intent="on")
    world.converge(sid)  # the start looks at the drive and finds it right
    assert (iso.stat().st_mtime_ns, iso.stat().st_ino) == before
    world.attach(sid, 2)
    world.converge(sid)  # a hot attach: rebuilt once, for the new list
    after_attach = iso.stat().st_ino
    assert after_attach != before[1] and drive_tags(iso) == ["t1", "t2"]
    assert world.virt.guests[sid].config_drive == iso  # the new media, live
    world.reconcile(sid)  # nothing changed: nothing written
    assert iso.stat().st_ino == after_attach


def test_a_running_guest_gets_a_repaired_drive_live(world: World) -> None:
    sid, iso = stopped_with_drive(world)
    world.set(sid, task_state="powering-on", power_intent="on")
    world.converge(sid)
    world.virt.guests[sid].config_drive = None
    iso.unlink()
    assert world.converge(sid) == 1
    assert drive_tags(iso) == ["t1"] and world.virt.guests[sid].config_drive == iso


def test_a_detach_takes_the_share_off_the_drive_when_it_starts(world: World) -> None:
    sid = world.server(config_drive=True)
    mid = world.attach(sid, 1)
    world.converge(sid)
    world.set(sid, task_state="powering-on", power_intent="on")
    world.converge(sid)
    iso = world.reconciler.drives.location(world.row(sid))
    assert iso is not None and drive_tags(iso) == ["t1"]
    world.set_status(mid, "detaching")
    world.reconcile(sid)  # the guest still has it mounted: the detach waits, the drive does not
    assert world.mapping(mid) is not None and drive_tags(iso) == []
    world.metadata.reports.record(sid, frozenset())  # the guest let go
    world.reconcile(sid)
    world.converge(sid)
    assert world.mapping(mid) is None and drive_tags(iso) == []


def test_delete_removes_the_drive(world: World) -> None:
    sid, iso = stopped_with_drive(world)
    world.set(sid, task_state="deleting")
    world.converge(sid)
    assert not iso.exists()


def test_a_container_directory_is_compared_file_by_file(world: World, tmp_path: Path) -> None:
    server = Server(uuid="c-1", name="c", project_id="p1", flavor_id="6", meta={},
                    config_drive=False, user_data=None)
    drives = world.reconciler.drives
    snap = Snapshot(server=server, mappings=[])
    assert drives.held(server) == ABSENT
    directory = drives.refresh(snap, live=False)
    assert directory is not None and drives.held(server) == drives.wanted(snap)
    (directory / "openstack" / "latest" / "meta_data.json").write_text("{}")  # edited
    assert drives.held(server) != drives.wanted(snap)
    drives.refresh(snap, live=False)
    assert drives.held(server) == drives.wanted(snap)
    (directory / "stray").symlink_to("/etc/shadow")  # a file that is not ours, and a symlink
    assert drives.held(server) != drives.wanted(snap)
    drives.refresh(snap, live=False)
    assert not (directory / "stray").is_symlink() and drives.held(server) == drives.wanted(snap)
    assert read_directory(tmp_path / "nowhere") is None
