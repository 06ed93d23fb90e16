"""Seed 003's built-in share API: /v2.1/os-filesystem."""

from fastapi.testclient import TestClient

from attachfs.db.tables import ShareMapping
from attachfs.service import Parts
from tests.conftest import create_server, create_share, settle_server


def test_create_list_show_usage_delete(client: TestClient, parts: Parts) -> None:
    entry = create_share(client, "home1", size="4Gb", mount_point="/home")
    assert entry["size"] == "4Gb" and entry["scope"] == "instance" and entry["project"] == "p1"
    (parts.config.storage_root / str(entry["id"]) / "f").write_bytes(b"x" * 8192)
    shown = client.get("/v2.1/os-filesystem/home1").json()["fs_entry"]
    assert shown["used_bytes"] >= 8192 and shown["mount_point"] == "/home"
    names = [e["name"] for e in client.get("/v2.1/os-filesystem").json()["fs_entries"]]
    assert names == ["home1"]
    assert client.put("/v2.1/os-filesystem/home1", json={"fs_entry": {"size": 1}}).status_code == 409
    assert client.delete("/v2.1/os-filesystem/home1").status_code == 202
    assert client.get("/v2.1/os-filesystem/home1").status_code == 404
    assert not (parts.config.storage_root / str(entry["id"])).exists()


def test_bad_input(client: TestClient) -> None:
    for body in ({}, {"fs_entry": {}}, {"fs_entry": {"size": "0Gb"}},
                 {"fs_entry": {"size": "lots"}}, {"fs_entry": {"size": 1, "scope": "galaxy"}},
                 {"fs_entry": {"size": 1, "x": 1}}, {"fs_entry": {"size": 1, "mount_point": "rel"}}):
        r = client.put("/v2.1/os-filesystem/fsx", json=body)
        assert r.status_code == 400, (body, r.text)
    assert client.put("/v2.1/os-filesystem/bad%20name", json={"fs_entry": {"size": 1}}).status_code == 400
    assert client.get("/v2.1/os-filesystem/missing").status_code == 404


def test_scopes(client: TestClient, parts: Parts) -> None:
    create_share(client, "mine")
    other = {"X-Auth-Token": "bob:p2"}
    assert client.get("/v2.1/os-filesystem/mine", headers=other).status_code == 404
    r = client.put("/v2.1/os-filesystem/g1", json={"fs_entry": {"size": 1, "scope": "global"}})
    assert r.status_code == 403
    create_share(client, "g1", scope="global", token="admin:admin")
    assert client.get("/v2.1/os-filesystem/g1", headers=other).status_code == 200
    r = client.put("/v2.1/os-filesystem/x", json={"fs_entry": {"size": 1, "project": "p2"}})
    assert r.status_code == 403


def test_project_scope_reaches_existing_and_later_servers(client: TestClient, parts: Parts) -> None:
    before = create_server(client, "before")
    entry = create_share(client, "projhome", scope="project")
    after = create_server(client, "after")
    for sid in (before, after):
        shares = client.get(f"/v2.1/servers/{sid}/shares").json()["shares"]
        assert [s["share_id"] for s in shares] == [entry["id"]], sid
    elsewhere = create_server(client, "elsewhere", token="bob:p2")
    assert client.get(f"/v2.1/servers/{elsewhere}/shares",
                      headers={"X-Auth-Token": "bob:p2"}).json()["shares"] == []


def test_connect_disconnect_and_delete_while_attached(client: TestClient, parts: Parts) -> None:
    entry = create_share(client, "data")
    sid = create_server(client)
    settle_server(parts, sid, "stopped")
    r = client.put(f"/v2.1/os-filesystem/data/instances/{sid}")
    assert r.status_code == 202 and r.json() == {"id": sid}
    inst = client.get("/v2.1/os-filesystem/data/instances").json()["instances"]
    assert inst == [{"id": sid, "status": "attaching"}]
    r = client.delete("/v2.1/os-filesystem/data")
    assert r.status_code == 409 and sid in r.json()["conflictingRequest"]["message"]
    with parts.db.session() as s:
        s.query(ShareMapping).update({"status": "inactive"})
    assert client.delete(f"/v2.1/os-filesystem/data/instances/{sid}").status_code == 202
    shares = client.get(f"/v2.1/servers/{sid}/shares").json()["shares"]
    assert shares[0]["status"] == "detaching" and shares[0]["share_id"] == entry["id"]
    assert client.put("/v2.1/os-filesystem/data/instances/not-a-server").status_code == 404


def test_a_nul_in_a_name_is_the_callers_input(client: TestClient) -> None:
    """PostgreSQL cannot compare text with a NUL: the unit of work turns that into a 400, never
    a 500 (SQLite simply finds nothing)."""
    r = client.get("/v2.1/os-filesystem/a%00b")
    assert r.status_code in (400, 404), r.text
    if r.status_code == 400:
        assert "cannot store" in r.json()["badRequest"]["message"]
