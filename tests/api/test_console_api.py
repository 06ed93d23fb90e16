"""What the server adds for the web console: its pages without a token (they hold no data),
with headers that keep other sites out; which login to show; and the event stream's checks."""

from __future__ import annotations

from fastapi.testclient import TestClient


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
