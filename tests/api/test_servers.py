import base64

from fastapi.testclient import TestClient

from attachfs.service import Parts
from tests.conftest import create_server, settle_server


def test_create_list_show_delete(client: TestClient, wakes: object) -> None:
    user_data = base64.b64encode(b"#!/bin/sh\necho hi\n").decode()
    sid = create_server(client, "web", metadata={"role": "web"}, user_data=user_data)
    assert wakes.count >= 1  # type: ignore[attr-defined]
    listed = client.get("/v2.1/servers").json()["servers"]
    assert [s["id"] for s in listed] == [sid]
    detail = client.get("/v2.1/servers/detail").json()["servers"][0]
    assert detail["status"] == "BUILD"
    server = client.get(f"/v2.1/servers/{sid}").json()["server"]
    assert server["name"] == "web" and server["metadata"] == {"role": "web"}
    assert server["OS-EXT-STS:vm_state"] == "building"
    assert "os-extended-shares:shares_attached" not in server  # only with the extension
    extended = client.get(f"/v2.1/servers/{sid}",
                          headers={"OpenStack-API-Version": "compute 2.97, attachfs 1.0"})
    assert extended.json()["server"]["os-extended-shares:shares_attached"] == []
    assert (extended.json()["server"]["attachfs:attempts"],
            extended.json()["server"]["attachfs:last_error"]) == (0, None)
    assert not [k for k in server if k.startswith("attachfs:")]
    assert "OS-EXT-SRV-ATTR:host" not in server
    r = client.delete(f"/v2.1/servers/{sid}")
    assert r.status_code == 204
    assert client.get(f"/v2.1/servers/{sid}").json()["server"]["OS-EXT-STS:task_state"] == "deleting"


def test_other_project_cannot_see_server(client: TestClient) -> None:
    sid = create_server(client)
    r = client.get(f"/v2.1/servers/{sid}", headers={"X-Auth-Token": "bob:p2"})
    assert r.status_code == 404
    assert r.json()["itemNotFound"]["code"] == 404
    assert client.get("/v2.1/servers", headers={"X-Auth-Token": "bob:p2"}).json()["servers"] == []
    admin = client.get(f"/v2.1/servers/{sid}", headers={"X-Auth-Token": "admin:admin"})
    assert admin.json()["server"]["OS-EXT-SRV-ATTR:host"] == "test-host"


def test_create_bad_input(client: TestClient) -> None:
    cases = [
        {"server": {"name": "x", "flavorRef": "1"}},
        {"server": {"name": "x", "flavorRef": "1", "imageRef": "debian-busybox", "bogus": 1}},
        {"server": {"name": "", "flavorRef": "1", "imageRef": "debian-busybox"}},
        {"server": {"name": "x", "flavorRef": "1", "imageRef": "debian-busybox",
                    "user_data": "not base64!"}},
        {"nothing": {}},
        [],
    ]
    for body in cases:
        r = client.post("/v2.1/servers", json=body)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["badRequest"]["code"] == 400
    r = client.post("/v2.1/servers", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    r = client.post("/v2.1/servers", json={"server": {"name": "x", "flavorRef": "9",
                                                      "imageRef": "debian-busybox"}})
    assert r.status_code == 404
    r = client.post("/v2.1/servers", json={"server": {"name": "x", "flavorRef": "1",
                                                      "imageRef": "no-such-image"}})
    assert r.status_code == 404


def test_reader_cannot_create(client: TestClient) -> None:
    r = client.post("/v2.1/servers", headers={"X-Auth-Token": "rita:p1:reader"},
                    json={"server": {"name": "x", "flavorRef": "1", "imageRef": "debian-busybox"}})
    assert r.status_code == 403
    assert r.json()["forbidden"]["code"] == 403


def test_power_actions_follow_states(client: TestClient, parts: Parts) -> None:
    sid = create_server(client)
    act = f"/v2.1/servers/{sid}/action"
    assert client.post(act, json={"os-start": None}).status_code == 409  # building
    settle_server(parts, sid, "active")
    assert client.post(act, json={"os-start": None}).status_code == 409  # already on
    assert client.post(act, json={"reboot": {"type": "BOGUS"}}).status_code == 400
    assert client.post(act, json={"reboot": {"type": "SOFT"}}).status_code == 202
    assert client.get(f"/v2.1/servers/{sid}").json()["server"]["status"] == "REBOOT"
    settle_server(parts, sid, "active")
    assert client.post(act, json={"os-stop": None}).status_code == 202
    assert client.post(act, json={"os-stop": None}).status_code == 409  # task in flight
    settle_server(parts, sid, "stopped")
    assert client.get(f"/v2.1/servers/{sid}").json()["server"]["status"] == "SHUTOFF"
    assert client.post(act, json={"os-start": None}).status_code == 202
    assert client.post(act, json={"os-explode": None}).status_code == 400
    assert client.post(act, json={"os-start": None, "os-stop": None}).status_code == 400


def test_console_output(client: TestClient, parts: Parts) -> None:
    sid = create_server(client)
    log = parts.config.console_dir / f"{sid}.log"
    log.write_text("one\ntwo\nthree\n")
    act = f"/v2.1/servers/{sid}/action"
    r = client.post(act, json={"os-getConsoleOutput": {"length": 2}})
    assert r.json() == {"output": "two\nthree\n"}
    assert client.post(act, json={"os-getConsoleOutput": {}}).json()["output"].startswith("one")
    assert client.post(act, json={"os-getConsoleOutput": {"length": "x"}}).status_code == 400
    assert client.post(act, json={"os-getConsoleOutput": {"length": -5}}).status_code == 400


def test_list_newest_first_with_name_filter_and_paging(client: TestClient) -> None:
    ids = [create_server(client, f"page-{i}") for i in range(5)]
    other = create_server(client, "other")
    listed = [s["id"] for s in client.get("/v2.1/servers").json()["servers"]]
    assert listed == [other, *reversed(ids)]
    named = client.get("/v2.1/servers/detail", params={"name": "^page-"}).json()["servers"]
    assert [s["id"] for s in named] == list(reversed(ids))
    first = client.get("/v2.1/servers", params={"limit": 2, "name": "page"}).json()
    assert [s["id"] for s in first["servers"]] == [ids[4], ids[3]]
    nxt = first["servers_links"][0]
    assert nxt["rel"] == "next" and f"marker={ids[3]}" in nxt["href"]
    second = client.get("/v2.1/servers", params={"limit": 2, "name": "page",
                                                 "marker": ids[3]}).json()
    assert [s["id"] for s in second["servers"]] == [ids[2], ids[1]]
    last = client.get("/v2.1/servers", params={"limit": 2, "name": "page", "marker": ids[1]})
    assert [s["id"] for s in last.json()["servers"]] == [ids[0]]
    assert "servers_links" not in last.json()
    for params in ({"limit": "x"}, {"limit": -1}, {"marker": "nope"}, {"name": "("}):
        r = client.get("/v2.1/servers", params=params)
        assert r.status_code == 400 and "badRequest" in r.json(), params


def test_the_agents_failed_tries_show_on_the_server_with_the_extension(
        client: TestClient, parts: Parts) -> None:
    """What the agent records when a server's own step fails and is retried (agent/server.py
    record_attempt, reconciler.note_stalled) is visible, in the list and on the server."""
    from attachfs.db.tables import Server

    sid = create_server(client)
    with parts.db.session() as s:
        row = s.get(Server, sid)
        assert row is not None
        row.attempts, row.last_error = 3, "start_guest failed: libvirtd is not answering"
    ext = {"OpenStack-API-Version": "compute 2.97, attachfs 1.0"}
    shown = client.get(f"/v2.1/servers/{sid}", headers=ext).json()["server"]
    listed = client.get("/v2.1/servers/detail", headers=ext).json()["servers"][0]
    for body in (shown, listed):
        assert (body["attachfs:attempts"], body["attachfs:last_error"]) == (
            3, "start_guest failed: libvirtd is not answering")
    strict = client.get(f"/v2.1/servers/{sid}").json()["server"]
    assert "attachfs:attempts" not in strict and "attachfs:last_error" not in strict
