"""The metadata service (metadata/app.py) against a hostile guest: forged identity headers
change nothing (the server is the socket the request came by), forged mount reports are
bounded, checked, reduced to this server's own tags, and never touch another server's."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from starlette.testclient import TestClient as AppClient

from attachfs.db.tables import ShareMapping
from attachfs.metadata.app import MAX_REPORT, GuestReports, make_app
from attachfs.service import Parts
from tests.conftest import create_server, create_share, settle_server

REPORT = "/attachfs/v1/mounts"
META = "/openstack/latest/meta_data.json"


@pytest.fixture
def two_servers(client: TestClient, parts: Parts) -> dict[str, Any]:
    """Server A (p1) with share tag "a-data", server B (p2) with share tag "b-data"."""
    a = create_server(client, "server-a")
    b = create_server(client, "server-b", token="bob:p2")
    for sid in (a, b):
        settle_server(parts, sid)
    sa = create_share(client, "sa")
    sb = create_share(client, "sb", token="bob:p2")
    assert client.post(f"/v2.1/servers/{a}/shares",
                       json={"share": {"share_id": sa["id"], "tag": "a-data"}}).status_code == 201
    assert client.post(f"/v2.1/servers/{b}/shares", headers={"X-Auth-Token": "bob:p2"},
                       json={"share": {"share_id": sb["id"], "tag": "b-data"}}).status_code == 201
    with parts.db.session() as s:
        s.query(ShareMapping).update({"status": "active"})
    return {"a": a, "b": b, "share_a": sa["id"], "share_b": sb["id"]}


@pytest.fixture
def guests(parts: Parts, two_servers: dict[str, Any]) -> Iterator[tuple[AppClient, AppClient,
                                                                         GuestReports]]:
    """Each server's own metadata app, as metadata/sockets.py serves them (one per socket)."""
    reports = GuestReports()
    with AppClient(make_app(parts.db, two_servers["a"], reports)) as a, \
            AppClient(make_app(parts.db, two_servers["b"], reports)) as b:
        yield a, b, reports


FORGED_HEADERS = [
    {"X-Instance-ID": "{b}"}, {"X-Instance-ID-Signature": "x", "X-Instance-ID": "{b}"},
    {"X-Forwarded-For": "169.254.169.99"}, {"X-Tenant-ID": "p2"}, {"X-Project-ID": "p2"},
    {"Host": "{b}"}, {"X-Auth-Token": "admin:admin"}, {"X-Real-IP": "10.0.0.2"},
]


@pytest.mark.parametrize("forged", FORGED_HEADERS)
def test_forged_headers_change_nothing(guests: tuple[AppClient, AppClient, GuestReports],
                                       two_servers: dict[str, Any],
                                       forged: dict[str, str]) -> None:
    a, _b, reports = guests
    headers = {k: v.format(**two_servers) for k, v in forged.items()}
    plain = a.get(META).json()
    r = a.get(META, headers=headers)
    assert r.status_code == 200 and r.json() == plain
    assert plain["uuid"] == two_servers["a"] and plain["project_id"] == "p1"
    assert [d["tag"] for d in plain["devices"]] == ["a-data"]
    assert two_servers["b"] not in r.text and two_servers["share_b"] not in r.text
    # a report under forged headers is still (and only) server A's
    assert a.post(REPORT, content=b"a-data\nb-data\n", headers=headers).status_code == 200
    assert reports.mounted(two_servers["a"])[1] == frozenset({"a-data"})  # type: ignore[index]
    assert reports.mounted(two_servers["b"]) is None


def test_paths_cannot_reach_another_server(guests: tuple[AppClient, AppClient, GuestReports],
                                           two_servers: dict[str, Any]) -> None:
    a, _b, _reports = guests
    b = two_servers["b"]
    for path in (f"/openstack/{b}/meta_data.json", f"/openstack/latest/../{b}/meta_data.json",
                 f"/openstack/latest/meta_data.json?uuid={b}", "/openstack/latest/%2e%2e/x",
                 "/openstack/../../etc/passwd", "/openstack/latest/user_data/..%2f..%2f",
                 f"/{b}", "/openstack/latest/meta_data.json%00"):
        r = a.get(path)
        assert r.status_code < 500, (path, r.status_code)
        assert b not in r.text.replace(path, "") and "server-b" not in r.text, path
        if r.status_code == 200:
            assert r.json()["uuid"] == two_servers["a"]


GARBAGE = [
    b"\xff\xfe\x00garbage", b"a-data\x00", b"a-data\x1b[31m", b"a-data\r\nb\x07",
    b"a data", b"a-data\t/etc", b"../../a-data", b"x" * 256, ("\u00e9").encode(),
    b"\n".join([b"t%d" % i for i in range(2000)]),
]


@pytest.mark.parametrize("body", GARBAGE, ids=range(len(GARBAGE)))
def test_garbage_reports_are_refused_and_record_nothing(
        guests: tuple[AppClient, AppClient, GuestReports], two_servers: dict[str, Any],
        body: bytes) -> None:
    a, _b, reports = guests
    assert a.post(REPORT, content=b"a-data\n").status_code == 200
    before = reports.mounted(two_servers["a"])
    r = a.post(REPORT, content=body)
    assert r.status_code == 400, r.text
    assert reports.mounted(two_servers["a"]) == before  # the last good report stands


async def _post_chunks(app: Any, chunk: bytes, count: int) -> tuple[int, int]:
    """POST `count` chunks straight to the ASGI app: (status, chunks it read)."""
    consumed = 0
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal consumed
        consumed += 1
        return {"type": "http.request", "body": chunk, "more_body": consumed < count}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": REPORT, "raw_path": REPORT.encode(),
             "query_string": b"", "root_path": "", "headers": [(b"transfer-encoding", b"chunked")],
             "client": ("169.254.169.15", 1), "server": ("169.254.169.254", 80)}
    await app(scope, receive, send)
    return status, consumed


def test_huge_reports_are_refused_unread(guests: tuple[AppClient, AppClient, GuestReports],
                                         two_servers: dict[str, Any], parts: Parts) -> None:
    a, _b, reports = guests
    r = a.post(REPORT, content=b"a-data\n" * (MAX_REPORT // 7 + 1))
    assert r.status_code == 413
    # chunked, no Content-Length: the app stops reading just past the bound
    status, consumed = asyncio.run(_post_chunks(make_app(parts.db, two_servers["a"], reports),
                                                chunk=b"a" * 4096, count=10_000))
    assert status == 413 and consumed * 4096 <= MAX_REPORT + 4096, consumed
    assert reports.mounted(two_servers["a"]) is None


def test_reports_only_concern_the_reporting_server(
        guests: tuple[AppClient, AppClient, GuestReports], two_servers: dict[str, Any]) -> None:
    """B's guest claims it let go of everything, and names A's tag: A's record is untouched;
    unknown tags are dropped; B's own report is what the host uses to pull B's devices."""
    a, b, reports = guests
    assert a.post(REPORT, content=b"a-data\n").status_code == 200
    a_before = reports.mounted(two_servers["a"])
    assert b.post(REPORT, content=b"a-data\nnot-mine\n").status_code == 200
    assert reports.mounted(two_servers["b"])[1] == frozenset()  # type: ignore[index]
    assert b.post(REPORT, content=b"").status_code == 200
    assert reports.mounted(two_servers["a"]) == a_before
    assert b.post(REPORT, content=b"b-data\n").status_code == 200
    assert reports.mounted(two_servers["b"])[1] == frozenset({"b-data"})  # type: ignore[index]


def test_other_methods_and_versions_never_fail(
        guests: tuple[AppClient, AppClient, GuestReports]) -> None:
    a, _b, _reports = guests
    for method, path in (("PUT", META), ("DELETE", META), ("POST", META), ("GET", REPORT),
                         ("GET", "/openstack/1999-01-01/meta_data.json"),
                         ("GET", "/openstack/" + "x" * 5000), ("PATCH", REPORT)):
        r = a.request(method, path)
        assert 400 <= r.status_code < 500, (method, path, r.status_code)
