"""What the server adds for the web console: its pages without a token (they hold no data),
with headers that keep other sites out; which login to show; and the event stream's checks."""

from __future__ import annotations

from fastapi.testclient import TestClient

from attachfs.service import Parts
from tests.conftest import create_server, create_share, settle_server


def test_the_pages_need_no_token_and_keep_other_sites_out(client: TestClient) -> None:
    r = client.get("/ui", headers={"X-Auth-Token": ""}, follow_redirects=False)
    assert (r.status_code, r.headers["location"]) == (308, "/ui/")
    for path, kind in (("/ui/", "text/html"), ("/ui/console.js", "text/javascript"),
                       ("/ui/console.css", "text/css")):
        r = client.get(path, headers={"X-Auth-Token": ""})
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind), path
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
        assert r.headers["x-frame-options"] == "DENY"
    assert "<script" not in client.get("/ui/").text.replace('<script type="module"', "")
    r = client.get("/ui/../../etc/passwd")
    assert r.status_code == 404


def test_which_login_and_no_keystone_login_under_noauth(client: TestClient) -> None:
    assert client.get("/ui/auth", headers={"X-Auth-Token": ""}).json() == {"strategy": "noauth"}
    r = client.post("/ui/login", json={"username": "a", "password": "b", "project": "c"})
    assert r.status_code == 400
    assert "does not use Keystone" in r.json()["badRequest"]["message"]


def test_the_event_stream_checks_its_query(client: TestClient) -> None:
    r = client.get("/v2.1/os-attachfs-events?follow=1")
    assert r.status_code == 400 and "badRequest" in r.json()


def test_every_share_the_caller_sees_with_where_it_is_attached(client: TestClient,
                                                              parts: Parts) -> None:
    sid = create_server(client)
    settle_server(parts, sid, "stopped")
    mine = str(create_share(client)["id"])
    assert client.post(f"/v2.1/servers/{sid}/shares",
                       json={"share": {"share_id": mine, "tag": "data"}}).status_code == 201
    r = client.get("/v2.1/os-attachfs-shares")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["unavailable"] == []
    (share,) = [s for s in body["shares"] if s["id"] == mine]
    assert (share["provider"], share["protocol"], share["size_gib"]) == ("local", "LOCAL", 1)
    assert 0 <= share["used_bytes"] < 1 << 30  # an empty directory, of its 1 GiB
    assert share["attached_to"] == [{"server": sid, "status": "attaching"}]
    # another project sees neither the share nor the server it is attached to
    other = client.get("/v2.1/os-attachfs-shares", headers={"X-Auth-Token": "bob:p2"}).json()
    assert mine not in {s["id"] for s in other["shares"]}
    assert client.get("/v2.1/os-attachfs-shares?all=1").status_code == 400
