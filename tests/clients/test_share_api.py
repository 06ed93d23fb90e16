"""The shared-file-system API subset at /share (api/share_api.py), in-process: bodies, faults,
microversions, scoping. tests/clients/test_openstack_cli.py drives it with the real clients."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from attachfs.service import Parts
from tests.conftest import create_server, settle_server

SHARES = "/share/v2/shares"
V = {"X-OpenStack-Manila-API-Version": "2.98"}


def _create(client: TestClient, name: str | None = "s1", token: str | None = None,
            **extra: Any) -> dict[str, Any]:
    headers = dict(V, **({"X-Auth-Token": token} if token else {}))
    body: dict[str, Any] = {"share_proto": "LOCAL", "size": 1, **extra}
    if name is not None:
        body["name"] = name
    r = client.post(SHARES, json={"share": body}, headers=headers)
    assert r.status_code == 200, r.text
    share: dict[str, Any] = r.json()["share"]
    return share


def test_discovery_and_microversions(client: TestClient) -> None:
    for path in ("/share", "/share/", "/share/v2", "/share/v2/"):
        r = client.get(path, headers={"X-Auth-Token": ""})
        assert r.status_code == 200, path
        (doc,) = r.json()["versions"]
        assert (doc["id"], doc["status"], doc["min_version"]) == ("v2.0", "CURRENT", "2.0")
        assert tuple(int(x) for x in doc["version"].split(".")) >= (2, 98)
    r = client.get(SHARES)
    assert r.headers["X-OpenStack-Manila-API-Version"] == "2.0"  # none asked: the minimum
    r = client.get(SHARES, headers={"OpenStack-API-Version": "shared-file-system 2.60"})
    assert r.headers["X-OpenStack-Manila-API-Version"] == "2.60"
    assert client.get(SHARES, headers={"X-OpenStack-Manila-API-Version": "latest"}).headers[
        "X-OpenStack-Manila-API-Version"] == "2.98"
    r = client.get(SHARES, headers={"X-OpenStack-Manila-API-Version": "2.99"})
    assert r.status_code == 406 and r.json()["notAcceptable"]["code"] == 406
    r = client.get(SHARES, headers={"X-OpenStack-Manila-API-Version": "two"})
    assert r.status_code == 400 and "badRequest" in r.json()
    assert client.get("/share/v2/types/default", headers=V).json()["share_type"]["name"] == "default"
    assert len(client.get("/share/v2/types", headers=V).json()["share_types"]) == 1


def test_create_show_list_export_locations_delete(client: TestClient, parts: Parts) -> None:
    share = _create(client)
    assert share["status"] == "available" and share["share_proto"] == "LOCAL"
    assert share["size"] == 1 and share["project_id"] == "p1" and share["is_public"] is False
    assert share["user_id"] == "alice" and share["metadata"] == {}
    assert "export_location" not in share  # moved to export_locations at 2.9
    sid = share["id"]
    assert (parts.config.storage_root / sid).is_dir()
    shown = client.get(f"{SHARES}/{sid}", headers=V).json()["share"]
    assert shown["name"] == "s1" and shown["links"][0]["href"].endswith(f"/share/v2/shares/{sid}")
    old = client.get(f"{SHARES}/{sid}", headers={"X-OpenStack-Manila-API-Version": "2.8"})
    assert old.json()["share"]["export_location"] == f"local:{parts.config.storage_root / sid}"
    (el,) = client.get(f"{SHARES}/{sid}/export_locations", headers=V).json()["export_locations"]
    assert el["path"] == f"local:{parts.config.storage_root / sid}" and el["preferred"] is True
    assert client.get(f"{SHARES}/{sid}/export_locations/{el['id']}",
                      headers=V).json()["export_location"] == el
    assert client.get(f"{SHARES}/{sid}/export_locations/nope", headers=V).status_code == 404
    assert client.get(SHARES, headers=V).json()["shares"] == [
        {"id": sid, "name": "s1", "links": shown["links"]}]
    # the same share is a built-in share of /os-filesystem
    assert client.get("/v2.1/os-filesystem/s1").json()["fs_entry"]["id"] == sid
    r = client.delete(f"{SHARES}/{sid}", headers=V)
    assert r.status_code == 202 and r.headers["X-OpenStack-Manila-API-Version"] == "2.98"
    r = client.get(f"{SHARES}/{sid}", headers=V)
    assert r.status_code == 404 and r.json()["itemNotFound"]["message"].startswith("Share ")
    assert not (parts.config.storage_root / sid).exists()


def test_filters(client: TestClient) -> None:
    _create(client, "alpha")
    _create(client, "beta")
    def names(query: str) -> list[str]:
        return sorted(s["name"] for s in client.get(f"{SHARES}/detail?{query}",
                                                    headers=V).json()["shares"])
    assert names("") == ["alpha", "beta"]
    assert names("name=alpha") == ["alpha"]
    assert names("name~=ET") == ["beta"]
    assert names("is_soft_deleted=True") == []
    assert names("share_proto=NFS") == []
    assert names("all_tenants=1&is_public=True") == ["alpha", "beta"]
    assert len(client.get(f"{SHARES}?limit=1", headers=V).json()["shares"]) == 1


def test_nfs_share_is_served_over_nfs(client: TestClient) -> None:
    """A built-in NFS share: its NFS export first (preferred), then the host directory."""
    r = client.post(SHARES, json={"share": {"share_proto": "nfs", "size": 1, "name": "n1"}},
                    headers=V)
    assert r.status_code == 200, r.text
    share = r.json()["share"]
    assert share["share_proto"] == "NFS"
    locations = client.get(f"{SHARES}/{share['id']}/export_locations",
                           headers=V).json()["export_locations"]
    assert [(e["path"], e["preferred"]) for e in locations][0] == (
        f"169.254.169.254:/share-{share['id']}", True)
    assert locations[1]["path"].startswith("local:") and not locations[1]["preferred"]
    one = client.get(f"{SHARES}/{share['id']}/export_locations/{locations[0]['id']}", headers=V)
    assert one.json()["export_location"]["path"] == locations[0]["path"]
    listed = client.get(f"{SHARES}/detail?share_proto=NFS", headers=V).json()["shares"]
    assert [s["name"] for s in listed] == ["n1"]


def test_bad_creates(client: TestClient) -> None:
    for share in ({"share_proto": "CEPHFS", "size": 1}, {"share_proto": "LOCAL", "size": 0},
                  {"share_proto": "LOCAL"}, {"share_proto": "LOCAL", "size": 1, "bogus": 1},
                  {"share_proto": "LOCAL", "size": 1, "name": "bad name"},
                  {"share_proto": "LOCAL", "size": 1, "snapshot_id": "x"},
                  {"share_proto": "LOCAL", "size": 1, "metadata": {"a": "b"}},
                  {"share_proto": "LOCAL", "size": 1, "share_type": "gold"}):
        r = client.post(SHARES, json={"share": share}, headers=V)
        assert r.status_code == 400 and r.json()["badRequest"]["code"] == 400, (share, r.text)
    r = client.post(SHARES, json={"share": {"share_proto": "cifs", "size": 1}}, headers=V)
    assert "protocol LOCAL" in r.json()["badRequest"]["message"]
    _create(client, "dup")
    r = client.post(SHARES, json={"share": {"share_proto": "LOCAL", "size": 1, "name": "dup"}},
                    headers=V)
    assert r.status_code == 409 and "conflictingRequest" in r.json()
    unnamed = _create(client, None)
    assert unnamed["name"] == unnamed["id"]


def test_scope_and_policy(client: TestClient) -> None:
    mine = _create(client, "mine")
    bob = dict(V, **{"X-Auth-Token": "bob:p2"})
    assert client.get(f"{SHARES}/{mine['id']}", headers=bob).status_code == 404
    assert client.delete(f"{SHARES}/{mine['id']}", headers=bob).status_code == 404
    assert client.get(f"{SHARES}/detail?all_tenants=1", headers=bob).json()["shares"] == []
    r = client.post(SHARES, json={"share": {"share_proto": "LOCAL", "size": 1, "name": "pub",
                                            "is_public": True}}, headers=V)
    assert r.status_code == 403 and "forbidden" in r.json()
    pub = _create(client, "pub", token="admin:admin", is_public=True)
    assert pub["is_public"] is True
    assert [s["name"] for s in client.get(SHARES, headers=bob).json()["shares"]] == ["pub"]
    assert client.get(f"{SHARES}/{pub['id']}", headers=bob).status_code == 200
    assert client.delete(f"{SHARES}/{pub['id']}", headers=bob).status_code == 403
    admin = dict(V, **{"X-Auth-Token": "admin:admin"})
    assert {s["name"] for s in client.get(f"{SHARES}?all_tenants=1", headers=admin).json()[
        "shares"]} == {"mine", "pub"}
    reader = dict(V, **{"X-Auth-Token": "carol:p1:reader"})
    r = client.post(SHARES, json={"share": {"share_proto": "LOCAL", "size": 1}}, headers=reader)
    assert r.status_code == 403


def test_delete_while_attached_is_409(client: TestClient, parts: Parts) -> None:
    share = _create(client, "busy")
    sid = create_server(client)
    settle_server(parts, sid)
    r = client.post(f"/v2.1/servers/{sid}/shares", json={"share": {"share_id": share["id"]}})
    assert r.status_code == 201, r.text
    r = client.delete(f"{SHARES}/{share['id']}", headers=V)
    assert r.status_code == 409 and sid in r.json()["conflictingRequest"]["message"]
