"""Issue 3 at the API: attach/detach on running servers, slots, read-only, the audit trail."""

import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from attachfs.config import Config
from attachfs.db.tables import Server, ShareMapping
from attachfs.service import Parts, build_api, open_parts
from tests.conftest import Wakes, create_server, create_share, settle_server

EXT = {"OpenStack-API-Version": "compute 2.97, attachfs 1.1"}


def _running(client: TestClient, parts: Parts, slots: int | None = 2) -> str:
    sid = create_server(client)
    settle_server(parts, sid, "active")
    with parts.db.session() as s:
        row = s.get(Server, sid)
        assert row is not None
        row.share_slots = slots
    return sid


def test_hot_attach_and_detach_on_running_server(client: TestClient, parts: Parts) -> None:
    sid = _running(client, parts)
    share = create_share(client)
    r = client.post(f"/v2.1/servers/{sid}/shares", json={"share": {"share_id": share["id"]}})
    assert r.status_code == 201 and r.json()["share"]["status"] == "attaching"
    with parts.db.session() as s:
        s.query(ShareMapping).update({"status": "active"})
    assert client.delete(f"/v2.1/servers/{sid}/shares/{share['id']}").status_code == 200
    assert client.get(f"/v2.1/servers/{sid}/shares").json()["shares"][0]["status"] == "detaching"


def test_slots_exhausted_is_409_and_leaves_others(client: TestClient, parts: Parts) -> None:
    sid = _running(client, parts, slots=2)
    a, b, c = (create_share(client) for _ in range(3))
    for share in (a, b):
        r = client.post(f"/v2.1/servers/{sid}/shares", json={"share": {"share_id": share["id"]}})
        assert r.status_code == 201
    r = client.post(f"/v2.1/servers/{sid}/shares", json={"share": {"share_id": c["id"]}})
    assert r.status_code == 409
    assert "hot-plug slot" in r.json()["conflictingRequest"]["message"]
    shares = client.get(f"/v2.1/servers/{sid}/shares").json()["shares"]
    assert sorted(x["share_id"] for x in shares) == sorted([a["id"], b["id"]])


@pytest.fixture
def strict_client(config: Config, wakes: Wakes) -> Iterator[tuple[TestClient, Parts]]:
    strict = config.model_copy(update={"api": config.api.model_copy(update={"hot_plug": False})})
    parts = open_parts(strict)
    with TestClient(build_api(parts, wakes)) as c:
        c.headers.update({"X-Auth-Token": "alice:p1", "OpenStack-API-Version": "compute 2.97"})
        yield c, parts
    parts.db.dispose()


def test_strict_297_rule_restored_by_config(strict_client: tuple[TestClient, Parts]) -> None:
    client, parts = strict_client
    sid = _running(client, parts)
    share = create_share(client)
    r = client.post(f"/v2.1/servers/{sid}/shares", json={"share": {"share_id": share["id"]}})
    assert r.status_code == 409
    assert r.json()["conflictingRequest"]["message"] == (
        f"Cannot 'create share' instance {sid} while it is in vm_state active")
    # the server's state is checked before the share is looked up (2.97's order)
    missing = str(uuid.uuid4())
    r = client.post(f"/v2.1/servers/{sid}/shares", json={"share": {"share_id": missing}})
    assert r.status_code == 409


def test_read_only_is_an_extension(client: TestClient, parts: Parts) -> None:
    sid = create_server(client)
    settle_server(parts, sid, "stopped")
    share = create_share(client)
    body = {"share": {"share_id": share["id"], "read_only": True}}
    # strict 2.97 bodies are validated exactly as before: no read_only there
    assert client.post(f"/v2.1/servers/{sid}/shares", json=body).status_code == 400
    r = client.post(f"/v2.1/servers/{sid}/shares", json=body, headers=EXT)
    assert r.status_code == 201
    assert r.json()["share"] == {"share_id": share["id"], "status": "attaching",
                                 "tag": share["id"], "read_only": True}
    assert r.headers["OpenStack-API-Version"] == "compute 2.97, attachfs 1.1"
    plain = client.get(f"/v2.1/servers/{sid}/shares/{share['id']}").json()["share"]
    assert set(plain) == {"share_id", "status", "tag"}  # exactly the compute service's keys
    shown = client.get(f"/v2.1/servers/{sid}/shares/{share['id']}", headers=EXT).json()
    assert shown["share"]["read_only"] is True
    bad = client.post(f"/v2.1/servers/{sid}/shares", headers=EXT,
                      json={"share": {"share_id": share["id"], "read_only": "yes please"}})
    assert bad.status_code == 400
    assert client.get("/v2.1/", headers={"OpenStack-API-Version":
                                          "compute 2.97, attachfs 9.9"}).status_code == 406


def test_config_drive_flag_on_create(client: TestClient) -> None:
    sid = create_server(client, config_drive=True)
    assert client.get(f"/v2.1/servers/{sid}").json()["server"]["config_drive"] == "True"


def test_instance_actions_name_the_user(client: TestClient, parts: Parts) -> None:
    sid = create_server(client)
    settle_server(parts, sid, "stopped")
    share = create_share(client)
    r = client.post(f"/v2.1/servers/{sid}/shares", json={"share": {"share_id": share["id"]}},
                    headers={"X-Auth-Token": "carol:p1"})
    request_id = r.headers["x-openstack-request-id"]
    actions = client.get(f"/v2.1/servers/{sid}/os-instance-actions").json()["instanceActions"]
    assert [a["action"] for a in actions] == ["attach_share", "create"]
    assert actions[0]["user_id"] == "carol" and actions[0]["request_id"] == request_id
    one = client.get(f"/v2.1/servers/{sid}/os-instance-actions/{request_id}").json()
    event = one["instanceAction"]["events"][0]
    assert event["event"] == "compute_attach_share" and event["result"] is None
    assert client.get(f"/v2.1/servers/{sid}/os-instance-actions/req-nope").status_code == 404
    other = client.get(f"/v2.1/servers/{sid}/os-instance-actions",
                       headers={"X-Auth-Token": "bob:p2"})
    assert other.status_code == 404
    assert client.get(f"/v2.1/servers/{uuid.uuid4()}/os-instance-actions").status_code == 404
