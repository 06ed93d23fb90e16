"""The metadata service's long-poll (metadata/app.py, metadata/sockets.py): a GET of
meta_data.json with If-None-Match of the current ETag and ?wait=N is answered as soon as the
server's rows change and its bell rings, else 304 after the wait; a guest reaches only its own
metadata, holds at most `max_waiting` waiting requests, and one that goes away frees its place.
The requests go straight to the ASGI app (no sockets) unless a test is about the listener."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from attachfs.db.engine import Database, migrate
from attachfs.db.tables import Server, ShareMapping
from attachfs.metadata.app import GuestReports, LongPoll, MetadataBell, etag_of, make_app
from attachfs.metadata.sockets import MetadataLimits, MetadataSockets
from harness.process import wait_for

META = "/openstack/latest/meta_data.json"
# Long enough never to end a test by itself: what answers a waiting request is the ring.
NO_RECHECK = LongPoll(max_wait=60.0, max_waiting=2, recheck=60.0)
SETTLE = 50  # event loop turns that let a rung request re-read and park again


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    url = f"sqlite:///{tmp_path / 'attachfs.db'}"
    migrate(url)
    database = Database(url)
    yield database
    database.dispose()


def add_server(db: Database, name: str) -> str:
    sid = str(uuid.uuid4())
    with db.session() as s:
        s.add(Server(uuid=sid, name=name, project_id="p1", user_id="u1", host="h",
                     flavor_id="1", image_id="i", vcpus=1, memory_mib=256, vm_state="active",
                     power_intent="on", meta={},
                     user_data=base64.b64encode(b"#!/bin/sh\n").decode()))
    return sid


def add_share(db: Database, sid: str, tag: str, status: str = "active") -> None:
    with db.session() as s:
        s.add(ShareMapping(uuid=str(uuid.uuid4()), instance_uuid=sid, share_id=str(uuid.uuid4()),
                           status=status, tag=tag, user_id="u1", project_id="p1"))


def set_status(db: Database, sid: str, tag: str, status: str) -> None:
    with db.session() as s:
        s.execute(update(ShareMapping).where(ShareMapping.instance_uuid == sid,
                                             ShareMapping.tag == tag).values(status=status))


class Answer:
    def __init__(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = b""

    def json(self) -> Any:
        return json.loads(self.body)

    def tags(self) -> list[str]:
        return [d["tag"] for d in self.json()["devices"]]


async def ask(app: Any, query: str = "", headers: dict[str, str] | None = None,
              gone: asyncio.Event | None = None) -> Answer:
    """One GET of meta_data.json straight to the ASGI app; the client goes away when `gone`
    is set (else it stays until the answer)."""
    answer = Answer()
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await (gone or asyncio.Event()).wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answer.status = message["status"]
            answer.headers = {k.decode(): v.decode() for k, v in message["headers"]}
        elif message["type"] == "http.response.body":
            answer.body += message.get("body", b"")

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
             "scheme": "http", "path": META, "raw_path": META.encode(),
             "query_string": query.encode(), "root_path": "",
             "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
             "client": ("169.254.169.15", 1), "server": ("169.254.169.254", 80)}
    await app(scope, receive, send)
    return answer


async def parked(bell: MetadataBell, count: int) -> None:
    """Until `count` requests wait on `bell` (a test that never gets there fails, not hangs)."""
    async def until() -> None:
        while bell.waiting != count:
            await asyncio.sleep(0)

    await asyncio.wait_for(until(), 30)


async def settle() -> None:
    for _ in range(SETTLE):
        await asyncio.sleep(0)


def if_none_match(etag: str) -> dict[str, str]:
    return {"If-None-Match": etag}


def test_the_etag_is_the_sha256_of_the_body_and_old_clients_see_no_change(db: Database) -> None:
    sid = add_server(db, "vm")
    add_share(db, sid, "data")
    app = make_app(db, sid)
    plain = asyncio.run(ask(app))
    assert plain.status == 200 and plain.tags() == ["data"]
    assert plain.headers["etag"] == f'"{hashlib.sha256(plain.body).hexdigest()}"'
    assert plain.headers["etag"] == etag_of(plain.body)
    # no If-None-Match: a wait is ignored, the answer is the same body at once
    assert asyncio.run(ask(app, "wait=30")).body == plain.body
    # a conditional GET without a wait: 304 when unchanged, the body when not
    same = asyncio.run(ask(app, "", if_none_match(plain.headers["etag"])))
    assert same.status == 304 and same.body == b"" and same.headers["etag"] == plain.headers["etag"]
    stale = asyncio.run(ask(app, "wait=30", if_none_match('"0000", W/"1111"')))
    assert stale.status == 200 and stale.body == plain.body


def test_a_waiting_request_is_answered_when_the_rows_change_and_the_bell_rings(
        db: Database) -> None:
    sid = add_server(db, "vm")
    add_share(db, sid, "data")
    bell = MetadataBell()
    app = make_app(db, sid, bell=bell, long_poll=NO_RECHECK)

    async def scenario() -> tuple[Answer, bool]:
        first = await ask(app, "attachfs=1")
        waiting = asyncio.create_task(
            ask(app, "attachfs=1&wait=60", if_none_match(first.headers["etag"])))
        await parked(bell, 1)
        bell.ring()  # a pass that changed nothing: it reads again and keeps waiting
        await settle()
        still_waiting = not waiting.done() and bell.waiting == 1
        add_share(db, sid, "more")
        bell.ring()
        return await asyncio.wait_for(waiting, 30), still_waiting

    answer, still_waiting = asyncio.run(scenario())
    assert still_waiting
    assert answer.status == 200 and answer.tags() == ["data", "more"]
    assert answer.headers["etag"] == etag_of(answer.body)


def test_unchanged_rows_are_answered_304_after_the_wait(db: Database) -> None:
    sid = add_server(db, "vm")
    app = make_app(db, sid, long_poll=LongPoll(max_wait=60.0, max_waiting=2, recheck=0.2))
    etag = asyncio.run(ask(app)).headers["etag"]
    answer = asyncio.run(ask(app, "wait=1", if_none_match(etag)))
    assert answer.status == 304 and answer.headers["etag"] == etag


def test_the_recheck_sees_a_change_nobody_rang_for(db: Database) -> None:
    """Rows written by something that does not ring (another process): the safety net."""
    sid = add_server(db, "vm")
    bell = MetadataBell()
    app = make_app(db, sid, bell=bell,
                   long_poll=LongPoll(max_wait=60.0, max_waiting=2, recheck=0.2))

    async def scenario() -> Answer:
        etag = (await ask(app)).headers["etag"]
        waiting = asyncio.create_task(ask(app, "wait=60", if_none_match(etag)))
        await parked(bell, 1)
        add_share(db, sid, "data")
        return await asyncio.wait_for(waiting, 30)

    answer = asyncio.run(scenario())
    assert answer.status == 200 and answer.tags() == ["data"]


def test_detaching_and_failed_shares_leave_the_answer(db: Database) -> None:
    sid = add_server(db, "vm")
    add_share(db, sid, "data")
    bell = MetadataBell()
    app = make_app(db, sid, bell=bell, long_poll=NO_RECHECK)

    async def scenario() -> Answer:
        etag = (await ask(app)).headers["etag"]
        waiting = asyncio.create_task(ask(app, "wait=60", if_none_match(etag)))
        await parked(bell, 1)
        set_status(db, sid, "data", "detaching")
        bell.ring()
        return await asyncio.wait_for(waiting, 30)

    answer = asyncio.run(scenario())
    assert answer.status == 200 and answer.tags() == []


def test_one_guest_waits_with_at_most_max_waiting_requests(db: Database) -> None:
    """The third waiting request of one guest gets 429 at once; a waiting request whose client
    went away frees its place (another may wait again)."""
    sid = add_server(db, "vm")
    bell = MetadataBell()
    app = make_app(db, sid, bell=bell, long_poll=NO_RECHECK)

    async def scenario() -> tuple[list[Answer], Answer, int]:
        etag = (await ask(app)).headers["etag"]
        gone = [asyncio.Event(), asyncio.Event(), asyncio.Event()]
        first = [asyncio.create_task(ask(app, "wait=60", if_none_match(etag), gone[i]))
                 for i in range(2)]
        await parked(bell, 2)
        over = await asyncio.wait_for(ask(app, "wait=60", if_none_match(etag)), 30)
        gone[0].set()  # the first client hangs up
        left = await asyncio.wait_for(first[0], 30)
        await parked(bell, 1)
        again = asyncio.create_task(ask(app, "wait=60", if_none_match(etag), gone[2]))
        await parked(bell, 2)
        parked_now = bell.waiting
        gone[1].set()
        gone[2].set()
        return [left, await asyncio.wait_for(first[1], 30),
                await asyncio.wait_for(again, 30)], over, parked_now

    ended, over, parked_now = asyncio.run(scenario())
    assert over.status == 429 and over.headers["retry-after"] == "1"
    assert parked_now == 2
    assert [a.status for a in ended] == [304, 304, 304]
    assert bell.waiting == 0


@pytest.mark.parametrize("wait", ["abc", "-1", "1.5", "1e3", "9999999", "٣", " 1"])
def test_a_wait_that_is_not_whole_seconds_is_refused(db: Database, wait: str) -> None:
    sid = add_server(db, "vm")
    app = make_app(db, sid)
    etag = asyncio.run(ask(app)).headers["etag"]
    query = httpx.QueryParams({"wait": wait})
    assert asyncio.run(ask(app, str(query), if_none_match(etag))).status == 400


def test_a_closed_bell_answers_at_once(db: Database) -> None:
    """The listener is going away (server removed): its waiting requests end now."""
    sid = add_server(db, "vm")
    bell = MetadataBell()
    app = make_app(db, sid, bell=bell, long_poll=NO_RECHECK)

    async def scenario() -> tuple[Answer, Answer]:
        etag = (await ask(app)).headers["etag"]
        waiting = asyncio.create_task(ask(app, "wait=60", if_none_match(etag)))
        await parked(bell, 1)
        bell.close()
        return (await asyncio.wait_for(waiting, 30),
                await asyncio.wait_for(ask(app, "wait=60", if_none_match(etag)), 30))

    during, after = asyncio.run(scenario())
    assert during.status == 304 and after.status == 304


def test_another_servers_rows_and_bell_never_answer_this_guest(db: Database) -> None:
    """A waits; B's rows change and both bells ring: A keeps waiting (its own rows did not
    change) and is answered with its own metadata only; B's ETag gets A nothing of B's."""
    a, b = add_server(db, "server-a"), add_server(db, "server-b")
    add_share(db, a, "a-data")
    add_share(db, b, "b-data")
    bell_a, bell_b = MetadataBell(), MetadataBell()
    app_a = make_app(db, a, bell=bell_a, long_poll=NO_RECHECK)
    app_b = make_app(db, b, bell=bell_b, long_poll=NO_RECHECK)

    async def scenario() -> tuple[Answer, Answer, bool]:
        etag_a = (await ask(app_a)).headers["etag"]
        etag_b = (await ask(app_b)).headers["etag"]
        from_b = await ask(app_a, "wait=60", if_none_match(etag_b))
        waiting = asyncio.create_task(ask(app_a, "wait=60", if_none_match(etag_a)))
        await parked(bell_a, 1)
        add_share(db, b, "b-more")
        bell_b.ring()
        bell_a.ring()
        await settle()
        still_waiting = not waiting.done()
        add_share(db, a, "a-more")
        bell_a.ring()
        return await asyncio.wait_for(waiting, 30), from_b, still_waiting

    answer, from_b, still_waiting = asyncio.run(scenario())
    assert still_waiting
    assert answer.status == 200 and answer.json()["uuid"] == a
    assert answer.tags() == ["a-data", "a-more"]
    assert from_b.status == 200 and from_b.json()["uuid"] == a and b not in from_b.body.decode()


def test_a_report_reaches_the_watcher_with_the_reporting_server_only(db: Database) -> None:
    from starlette.testclient import TestClient

    a, b = add_server(db, "server-a"), add_server(db, "server-b")
    add_share(db, a, "a-data")
    reports = GuestReports()
    heard: list[str] = []
    reports.watch(heard.append)
    with TestClient(make_app(db, a, reports)) as client:
        assert client.post("/attachfs/v1/mounts", content=b"a-data\n").status_code == 200
        assert client.post("/attachfs/v1/mounts", content=b"\x00bad").status_code == 400
    assert heard == [a]
    assert reports.mounted(a)[1] == frozenset({"a-data"})  # type: ignore[index]
    assert reports.mounted(b) is None


def test_the_listener_answers_a_waiting_guest_when_the_agent_rings(db: Database) -> None:
    """Through the real listener (uvicorn on the server's unix socket, its request deadline
    and connection limits): a long wait is not cut by `request_timeout`, `changed` answers it,
    and `remove` ends a waiting request rather than waiting for it."""
    sid = add_server(db, "vm")
    limits = MetadataLimits(request_timeout=1.0, long_poll=NO_RECHECK)
    # a short directory: a unix socket's path has at most 107 bytes (pytest's tmp_path is long)
    socket_dir = tempfile.TemporaryDirectory(prefix="md-", dir="/tmp")
    sockets = MetadataSockets(db, Path(socket_dir.name), limits=limits)
    try:
        path = sockets.ensure(sid)
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(path)),
                          base_url="http://169.254.169.254", timeout=60) as client:
            etag = client.get(META).headers["etag"]
            answers: list[httpx.Response] = []

            def long_poll() -> None:
                answers.append(client.get(META, params={"wait": "60"},
                                          headers=if_none_match(etag)))

            waiter = threading.Thread(target=long_poll)
            waiter.start()
            bell = sockets._bells[sid]
            wait_for("the request to wait", lambda: bell.waiting == 1, 30, 0.01)
            time.sleep(limits.request_timeout * 1.5)  # past the deadline for a request to arrive
            add_share(db, sid, "data")
            sockets.changed(sid)
            waiter.join(30)
            assert not waiter.is_alive()
            assert answers[0].status_code == 200
            assert [d["tag"] for d in answers[0].json()["devices"]] == ["data"]

            etag = answers[0].headers["etag"]
            waiter = threading.Thread(target=long_poll)
            waiter.start()
            wait_for("the request to wait", lambda: bell.waiting == 1, 30, 0.01)
            sockets.remove(sid)
            waiter.join(30)
            assert not waiter.is_alive()
            assert answers[1].status_code == 304
    finally:
        sockets.close()
        socket_dir.cleanup()



# A quiet window no test waits out by accident: what ends it is the rows staying the same.
GATHER = LongPoll(max_wait=60.0, max_waiting=2, recheck=60.0, detach_quiet=1.0,
                  detach_gather=30.0)


def test_a_guest_told_to_let_go_hears_of_every_detach_sent_back_to_back(db: Database) -> None:
    """Three DELETEs of one client: one answer without all three, so one round of the guest
    unmounts them together (not a round per share)."""
    sid = add_server(db, "vm")
    for tag in ("a", "b", "c", "d"):
        add_share(db, sid, tag)
    reports, bell = GuestReports(), MetadataBell()
    reports.record(sid, frozenset({"a", "b", "c", "d"}))  # what the guest has mounted
    app = make_app(db, sid, reports=reports, bell=bell, long_poll=GATHER)

    async def scenario() -> Answer:
        etag = (await ask(app)).headers["etag"]
        waiting = asyncio.create_task(ask(app, "wait=60", if_none_match(etag)))
        await parked(bell, 1)
        for tag in ("a", "b", "c"):  # as the API commits each DELETE, the agent ringing
            set_status(db, sid, tag, "detaching")
            bell.ring()
            await asyncio.sleep(0.01)
        return await asyncio.wait_for(waiting, 30)

    answer = asyncio.run(scenario())
    assert answer.status == 200 and answer.tags() == ["d"]


def test_an_attach_is_answered_without_the_detach_window(db: Database) -> None:
    """Nothing the guest holds is taken away (a share added; a guest that never reported):
    the answer goes at once, whatever the quiet window."""
    sid = add_server(db, "vm")
    add_share(db, sid, "a")
    reports, bell = GuestReports(), MetadataBell()
    reports.record(sid, frozenset({"a"}))
    app = make_app(db, sid, reports=reports, bell=bell,
                   long_poll=LongPoll(max_wait=60.0, max_waiting=2, recheck=60.0,
                                      detach_quiet=60.0, detach_gather=60.0))
    unreported = add_server(db, "quiet")
    add_share(db, unreported, "x")
    other_bell = MetadataBell()
    silent = make_app(db, unreported, reports=reports, bell=other_bell,
                      long_poll=LongPoll(max_wait=60.0, max_waiting=2, recheck=60.0,
                                         detach_quiet=60.0, detach_gather=60.0))

    async def scenario() -> tuple[Answer, Answer]:
        etag = (await ask(app)).headers["etag"]
        waiting = asyncio.create_task(ask(app, "wait=60", if_none_match(etag)))
        await parked(bell, 1)
        add_share(db, sid, "b")
        bell.ring()
        added = await asyncio.wait_for(waiting, 10)
        etag = (await ask(silent)).headers["etag"]
        waiting = asyncio.create_task(ask(silent, "wait=60", if_none_match(etag)))
        await parked(other_bell, 1)
        set_status(db, unreported, "x", "detaching")
        other_bell.ring()
        return added, await asyncio.wait_for(waiting, 10)

    added, taken = asyncio.run(scenario())
    assert added.status == 200 and added.tags() == ["a", "b"]
    assert taken.status == 200 and taken.tags() == []
