"""POST/GET/DELETE /servers/{id}/shares (2.97) and the legacy share_attach/share_detach actions."""

import uuid
from concurrent.futures import ThreadPoolExecutor

from fastapi.testclient import TestClient

from attachfs.db.tables import Share, ShareMapping
from attachfs.service import Parts
from tests.conftest import create_server, create_share, settle_server

EXTENDED = {"OpenStack-API-Version": "compute 2.97, attachfs 1.0"}


def _stopped_server(client: TestClient, parts: Parts, name: str = "vm1") -> str:
    sid = create_server(client, name)
    settle_server(parts, sid, "stopped")
    return sid


def _attach(client: TestClient, sid: str, share_id: object, **extra: object):  # type: ignore[no-untyped-def]
    return client.post(f"/v2.1/servers/{sid}/shares",
                       json={"share": {"share_id": share_id, **extra}})


def test_attach_list_show_detach(client: TestClient, parts: Parts) -> None:
    sid = _stopped_server(client, parts)
    share = create_share(client)
    r = _attach(client, sid, share["id"], tag="data")
    assert r.status_code == 201, r.text
    assert r.json() == {"share": {"share_id": share["id"], "status": "attaching", "tag": "data"}}
    listed = client.get(f"/v2.1/servers/{sid}/shares").json()
    assert listed == {"shares": [{"share_id": share["id"], "status": "attaching", "tag": "data"}]}
    shown = client.get(f"/v2.1/servers/{sid}/shares/{share['id']}").json()["share"]
    assert set(shown) == {"share_id", "status", "tag"}
    admin = client.get(f"/v2.1/servers/{sid}/shares/{share['id']}",
                       headers={"X-Auth-Token": "admin:admin"}).json()["share"]
    assert set(admin) == {"share_id", "status", "tag", "uuid", "export_location"}
    assert admin["export_location"].startswith("local:")
    with parts.db.session() as s:
        s.query(ShareMapping).update({"status": "inactive"})
    r = client.delete(f"/v2.1/servers/{sid}/shares/{share['id']}")
    assert r.status_code == 200 and r.content == b""
    assert r.headers["content-type"] == "application/json"
    assert client.get(f"/v2.1/servers/{sid}/shares").json()["shares"][0]["status"] == "detaching"


def test_default_tag_is_share_id(client: TestClient, parts: Parts) -> None:
    sid = _stopped_server(client, parts)
    share = create_share(client)
    assert _attach(client, sid, share["id"]).json()["share"]["tag"] == share["id"]


def test_below_297_is_404(client: TestClient, parts: Parts) -> None:
    sid = _stopped_server(client, parts)
    old = {"OpenStack-API-Version": "compute 2.96"}
    assert client.get(f"/v2.1/servers/{sid}/shares", headers=old).status_code == 404
    r = client.post(f"/v2.1/servers/{sid}/shares", headers=old,
                    json={"share": {"share_id": str(uuid.uuid4())}})
    assert r.status_code == 404


def test_bad_bodies_are_400(client: TestClient, parts: Parts) -> None:
    sid = _stopped_server(client, parts)
    share = create_share(client)
    bodies = [
        {},
        {"share": {}},
        {"share": {"share_id": "not-a-uuid"}},
        {"share": {"share_id": share["id"], "extra": 1}},
        {"share": {"share_id": share["id"]}, "more": 1},
        {"share": {"share_id": share["id"], "tag": ""}},
        {"share": {"share_id": share["id"], "tag": "bad tag!"}},
        {"share": {"share_id": share["id"], "tag": "x" * 37}},  # > virtio-fs's 36 bytes
        {"share": {"share_id": share["id"], "tag": "x" * 256}},
        {"share": {"share_id": share["id"], "tag": 5}},
        {"share": "nope"},
    ]
    for body in bodies:
        r = client.post(f"/v2.1/servers/{sid}/shares", json=body)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["badRequest"]["code"] == 400
    r = client.post(f"/v2.1/servers/{sid}/shares", content=b"{",
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    assert client.get(f"/v2.1/servers/{sid}/shares").json()["shares"] == []
    assert _attach(client, sid, share["id"], tag="x" * 36).status_code == 201


def test_policy_forbids_reader(client: TestClient, parts: Parts) -> None:
    sid = _stopped_server(client, parts)
    share = create_share(client)
    reader = {"X-Auth-Token": "rita:p1:reader"}
    assert client.get(f"/v2.1/servers/{sid}/shares", headers=reader).status_code == 200
    r = client.post(f"/v2.1/servers/{sid}/shares", headers=reader,
                    json={"share": {"share_id": share["id"]}})
    assert r.status_code == 403 and r.json()["forbidden"]["code"] == 403
    assert _attach(client, sid, share["id"]).status_code == 201
    with parts.db.session() as s:
        s.query(ShareMapping).update({"status": "inactive"})
    r = client.delete(f"/v2.1/servers/{sid}/shares/{share['id']}", headers=reader)
    assert r.status_code == 403


def test_unknown_server_and_share_are_404(client: TestClient, parts: Parts) -> None:
    sid = _stopped_server(client, parts)
    share = create_share(client)
    r = _attach(client, str(uuid.uuid4()), share["id"])
    assert r.status_code == 404 and "itemNotFound" in r.json()
    r = _attach(client, sid, str(uuid.uuid4()))
    assert r.status_code == 404
    assert client.get(f"/v2.1/servers/{sid}/shares/{uuid.uuid4()}").status_code == 404
    assert client.delete(f"/v2.1/servers/{sid}/shares/{uuid.uuid4()}").status_code == 404
    # another project's server and another project's instance-scope share look absent
    assert _attach(client, sid, share["id"]).status_code == 201
    other = {"X-Auth-Token": "bob:p2"}
    assert client.get(f"/v2.1/servers/{sid}/shares", headers=other).status_code == 404
    bob_sid = create_server(client, "bobvm", token="bob:p2")
    settle_server(parts, bob_sid, "stopped")
    r = client.post(f"/v2.1/servers/{bob_sid}/shares", headers=other,
                    json={"share": {"share_id": share["id"]}})
    assert r.status_code == 404


def test_conflicts_are_409(client: TestClient, parts: Parts) -> None:
    share = create_share(client)
    building = create_server(client, "building")
    r = _attach(client, building, share["id"])
    assert r.status_code == 409 and r.json()["conflictingRequest"]["code"] == 409
    stopping = create_server(client, "stopping")
    settle_server(parts, stopping, "active")
    assert client.post(f"/v2.1/servers/{stopping}/action", json={"os-stop": None}).status_code == 202
    assert _attach(client, stopping, share["id"]).status_code == 409  # task in flight

    sid = _stopped_server(client, parts)
    assert _attach(client, sid, share["id"], tag="t1").status_code == 201
    assert _attach(client, sid, share["id"], tag="t2").status_code == 409  # duplicate share
    other = create_share(client)
    r = _attach(client, sid, other["id"], tag="t1")  # duplicate tag
    assert r.status_code == 409 and "t1" in r.json()["conflictingRequest"]["message"]
    broken = create_share(client)
    with parts.db.session() as s:
        row = s.get(Share, broken["id"])
        assert row is not None
        row.status = "error"
    r = _attach(client, sid, broken["id"])
    assert r.status_code == 409 and "available" in r.json()["conflictingRequest"]["message"]
    # detach while the server is busy (rebooting) is refused too
    with parts.db.session() as s:
        s.query(ShareMapping).update({"status": "active"})
    settle_server(parts, sid, "active")
    assert client.post(f"/v2.1/servers/{sid}/action",
                       json={"reboot": {"type": "SOFT"}}).status_code == 202
    assert client.delete(f"/v2.1/servers/{sid}/shares/{share['id']}").status_code == 409


def test_error_attachment_can_be_retried(client: TestClient, parts: Parts) -> None:
    sid = _stopped_server(client, parts)
    share = create_share(client)
    assert _attach(client, sid, share["id"]).status_code == 201
    with parts.db.session() as s:
        s.query(ShareMapping).update({"status": "error", "fault_message": "boom"})
    r = _attach(client, sid, share["id"])  # 2.97: already associated, whatever its status
    assert r.status_code == 409
    assert r.json()["conflictingRequest"]["message"] == (
        f"Share '{share['id']}' or tag '{share['id']}' already associated to this server.")
    retry = {"OpenStack-API-Version": "compute 2.97, attachfs 1.2"}
    r = client.post(f"/v2.1/servers/{sid}/shares", headers=retry,
                    json={"share": {"share_id": share["id"], "retry": True}})
    assert r.status_code == 201 and r.json()["share"]["status"] == "attaching"
    assert r.json()["share"]["read_only"] is False  # 1.2 includes 1.1's views


def test_parallel_posts_exactly_one_wins(client: TestClient, parts: Parts) -> None:
    sid = _stopped_server(client, parts)
    share = create_share(client)

    def post(i: int) -> int:
        return _attach(client, sid, share["id"], tag=f"tag{i}").status_code

    with ThreadPoolExecutor(20) as pool:
        codes = list(pool.map(post, range(20)))
    assert sorted(codes) == [201] + [409] * 19, codes
    assert len(client.get(f"/v2.1/servers/{sid}/shares").json()["shares"]) == 1


def test_legacy_actions(client: TestClient, parts: Parts) -> None:
    sid = _stopped_server(client, parts)
    share = create_share(client)
    act = f"/v2.1/servers/{sid}/action"
    r = client.post(act, json={"share_attach": {"share_id": share["id"],
                                                "mount_point": "/net/mymount"}})
    assert r.status_code == 202 and r.content == b""
    plain = client.get(f"/v2.1/servers/{sid}").json()["server"]
    assert "os-extended-shares:shares_attached" not in plain  # strict 2.97 body
    server = client.get(f"/v2.1/servers/{sid}", headers=EXTENDED).json()["server"]
    attached = server["os-extended-shares:shares_attached"]
    assert attached == [{"share_id": share["id"], "status": "attaching", "tag": share["id"],
                         "mount_point": "/net/mymount"}]
    assert client.post(act, json={"share_attach": {"share_id": share["id"]}}).status_code == 409
    assert client.post(act, json={"share_attach": {"share_id": "x"}}).status_code == 400
    assert client.post(act, json={"share_attach": {}}).status_code == 400
    with parts.db.session() as s:
        s.query(ShareMapping).update({"status": "inactive"})
        assert s.query(ShareMapping).one().mount_point == "/net/mymount"
    assert client.post(act, json={"share_detach": {"share_id": share["id"]}}).status_code == 202
    assert client.get(f"/v2.1/servers/{sid}/shares").json()["shares"][0]["status"] == "detaching"
    assert client.post(act, json={"share_detach": {"share_id": str(uuid.uuid4())}}).status_code == 404
