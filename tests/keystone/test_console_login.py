"""The web console's Keystone login (POST /ui/login) against the session's real Keystone: a
user's name, password and project give a token the compute API takes; anything else a clear
401 (and the API's pages stay reachable without a token)."""

from __future__ import annotations

import pytest

from tests.keystone.conftest import PASSWORD, Cloud


def test_a_member_logs_in_and_the_token_works(cloud: Cloud) -> None:
    r = cloud.client.post("/ui/login", json={"username": "a_member", "password": PASSWORD,
                                             "project": "A"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["user"], body["project"]) == ("a_member", "A")
    assert "member" in body["roles"] and body["expires"]
    assert body["project_id"] == cloud.keystone.project_ids["A"]
    r = cloud.client.get("/v2.1/servers", headers={"X-Auth-Token": body["token"]})
    assert r.status_code == 200, r.text
    assert cloud.client.get("/ui/auth").json() == {"strategy": "keystone"}


@pytest.mark.parametrize("login", [
    {"username": "a_member", "password": "wrong", "project": "A"},
    {"username": "nobody", "password": PASSWORD, "project": "A"},
    {"username": "a_member", "password": PASSWORD, "project": "B"},  # not a member of B
])
def test_a_wrong_login_is_a_401_with_a_message(cloud: Cloud, login: dict[str, str]) -> None:
    r = cloud.client.post("/ui/login", json=login)
    assert r.status_code == 401, r.text
    assert r.json()["unauthorized"]["message"]


@pytest.mark.parametrize("body", [None, [], {"username": "a_member"},
                                  {"username": "a", "password": 1, "project": "A"},
                                  {"username": "a", "password": "b", "project": "A",
                                   "domain": 5}])
def test_a_malformed_login_is_a_400(cloud: Cloud, body: object) -> None:
    r = cloud.client.post("/ui/login", json=body)
    assert r.status_code == 400, r.text
