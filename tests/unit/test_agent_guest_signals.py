"""What passes between the agent and a server's guest, on fakes: the agent rings the server's
metadata after each pass over it (a guest waiting for a change is answered at once), and a
guest's mount report brings forward the pass that waits for it (hot detach), not any other."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from attachfs.agent.runner import HOST as HOST_KEY
from tests.fakes.world import World, make_world


@pytest.fixture
def world(tmp_path: Path) -> World:
    return make_world(tmp_path)


def running_server(world: World, *shares: int) -> tuple[str, list[int]]:
    sid = world.server(running=False)
    ids = [world.attach(sid, n) for n in shares]
    world.converge(sid)
    world.set(sid, task_state="powering-on", power_intent="on")
    world.converge(sid)
    return sid, ids


def run_pass(world: World, key: str) -> None:
    """One pass as the runner's worker makes it."""
    world.agent._inflight.add(key)
    world.agent._run_one(key)


def test_each_pass_over_a_server_rings_its_metadata(world: World) -> None:
    sid, _ = running_server(world, 1)
    other, _ = running_server(world)
    world.metadata.rung.clear()
    run_pass(world, sid)
    run_pass(world, HOST_KEY)  # the host's own pass concerns no guest's metadata
    assert world.metadata.rung == [sid]
    mid = world.attach(other, 2)
    run_pass(world, other)  # a hot attach, recorded in this pass: the guest is told after it
    assert world.mapping(mid).status == "active"  # type: ignore[union-attr]
    assert world.metadata.rung == [sid, other]


def test_a_report_brings_forward_the_pass_waiting_for_the_guest(world: World) -> None:
    agent = world.agent
    world.metadata.reports.watch(agent.guest_reported)
    sid, (mid,) = running_server(world, 1)
    idle, _ = running_server(world, 2)
    world.set_status(mid, "detaching")
    run_pass(world, sid)  # waits for the guest to unmount: looks again in POLL_GUEST
    assert agent._due[sid] > time.monotonic()
    assert "t1" in world.virt.guests[sid].devices

    world.metadata.reports.record(sid, frozenset())  # the guest let go
    assert agent._due[sid] <= time.monotonic()
    run_pass(world, sid)
    assert "t1" in world.virt.guests[sid].unplugging  # asked in the pass the report woke

    world.metadata.reports.record(idle, frozenset({"t2"}))  # nothing waits on it
    assert idle not in agent._due


def test_a_report_during_the_pass_runs_it_again_after(world: World) -> None:
    agent = world.agent
    world.metadata.reports.watch(agent.guest_reported)
    sid, (mid,) = running_server(world, 1)
    world.set_status(mid, "detaching")
    agent._inflight.add(sid)
    world.metadata.reports.record(sid, frozenset())
    assert sid in agent._again


def test_a_report_leaves_a_backoff_alone(world: World) -> None:
    agent = world.agent
    world.metadata.reports.watch(agent.guest_reported)
    sid, _ = running_server(world, 1)
    agent._retrying.add(sid)
    agent.enqueue(sid, 30.0, exact=True)
    world.metadata.reports.record(sid, frozenset({"t1"}))
    assert agent._due[sid] > time.monotonic() + 10


def test_a_detach_rings_as_soon_as_its_start_is_recorded(world: World) -> None:
    """The guest hears of a detach from within the pass that first sees it, after the moment
    its report must follow is recorded (the runner rings after the pass as well)."""
    sid, (mid,) = running_server(world, 1)
    world.metadata.rung.clear()
    world.set_status(mid, "detaching")
    world.reconcile(sid)  # the pass alone, without the runner
    assert world.metadata.rung == [sid]
    world.reconcile(sid)  # still waiting for the guest: no new start, no ring from the pass
    assert world.metadata.rung == [sid]


def test_a_look_for_work_keeps_a_waiting_pass_at_its_time(world: World) -> None:
    """The loop looks for work at every wake; rows that did not change since the last look
    leave a planned pass where it is (a detach waiting for its guest looks again in
    POLL_GUEST, not at once)."""
    agent = world.agent
    sid, (mid,) = running_server(world, 1)
    agent._poll()  # the runner's first look: remembers the rows as seen
    world.set_status(mid, "detaching")
    agent._poll()  # changed: due now
    assert agent._due[sid] <= time.monotonic()
    del agent._due[sid]
    run_pass(world, sid)  # waits for the guest: planned later
    planned = agent._due[sid]
    assert planned > time.monotonic()
    agent._poll()  # the same rows: nothing new
    assert agent._due[sid] == planned
