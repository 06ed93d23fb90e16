"""auth_strategy "keystone" against a real Keystone: who may see, attach and detach what.

Users (tests/keystone/conftest.py): a_reader, a_member in project A; b_reader, b_member in B;
`admin` (admin role, project `admin`). Servers do not boot: settle_server marks them stopped.
"""

from __future__ import annotations

import datetime as dt
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from attachfs.api.keystone import IdentityUnavailable, KeystoneAuthenticator
from attachfs.config import load_config
from attachfs.db.tables import ShareMapping
from attachfs.errors import Unauthorized
from tests.conftest import create_server, create_share, settle_server
from tests.keystone.conftest import ADMIN_PASSWORD, PASSWORD, SERVICE_USER, Cloud, free_port

pytestmark = pytest.mark.keystone

UNAUTHORIZED = {"unauthorized": {"code": 401,
                                 "message": "The request you have made requires authentication."}}
PLAIN_VIEW = {"share_id", "status", "tag"}
ADMIN_VIEW = PLAIN_VIEW | {"uuid", "export_location"}


def _server(cloud: Cloud, user: str) -> str:
    sid = create_server(cloud.client, f"vm-{uuid.uuid4().hex[:6]}", token=cloud.keystone.token(user))
    settle_server(cloud.parts, sid, "stopped")
    return sid


def _share(cloud: Cloud, user: str) -> dict[str, object]:
    return create_share(cloud.client, token=cloud.keystone.token(user))


def _attach(cloud: Cloud, user: str, sid: str, share_id: object) -> httpx.Response:
    return cloud.client.post(f"/v2.1/servers/{sid}/shares", headers=cloud.auth(user),
                             json={"share": {"share_id": share_id}})


def _settle_mappings(cloud: Cloud, sid: str, status: str = "inactive") -> None:
    """Where the agent would leave an attachment on a stopped server."""
    with cloud.parts.db.session() as s:
        s.query(ShareMapping).filter(ShareMapping.instance_uuid == sid).update({"status": status})


def _assert_401(r: httpx.Response, cloud: Cloud) -> None:
    assert r.status_code == 401, r.text
    assert r.json() == UNAUTHORIZED
    assert r.headers["WWW-Authenticate"] == f'Keystone uri="{cloud.keystone.url}"'


# ---- discovery and bad tokens -----------------------------------------------------------------

def test_discovery_needs_no_token(cloud: Cloud) -> None:
    for path in ("/", "/v2.1", "/v2.1/"):
        r = cloud.client.get(path)
        assert r.status_code == 200, (path, r.text)
        assert "WWW-Authenticate" not in r.headers


@pytest.mark.parametrize("token", [None, "", "bogus", "gAAAAABnot-a-real-fernet-token" + "x" * 150,
                                   "notused"])
def test_missing_or_bogus_token_is_401(cloud: Cloud, token: str | None) -> None:
    headers = {} if token is None else {"X-Auth-Token": token}
    for path in ("/v2.1/servers", "/v2.1/os-filesystem",
                 f"/v2.1/servers/{uuid.uuid4()}/shares"):
        _assert_401(cloud.client.get(path, headers=headers), cloud)
    _assert_401(cloud.client.post(f"/v2.1/servers/{uuid.uuid4()}/shares", headers=headers,
                                  json={"share": {"share_id": str(uuid.uuid4())}}), cloud)


def test_forged_identity_headers_are_ignored(cloud: Cloud) -> None:
    forged = {"X-Identity-Status": "Confirmed", "X-User-Id": "admin", "X-Roles": "admin",
              "X-Project-Id": cloud.keystone.project_ids["A"]}
    _assert_401(cloud.client.get("/v2.1/servers", headers={"X-Auth-Token": "bogus", **forged}),
                cloud)
    # A real member token with a forged role header is still just a member.
    sid = _server(cloud, "a_member")
    share = _share(cloud, "a_member")
    assert _attach(cloud, "a_member", sid, share["id"]).status_code == 201
    r = cloud.client.get(f"/v2.1/servers/{sid}/shares/{share['id']}",
                         headers={**cloud.auth("a_member"), "X-Roles": "admin"})
    assert r.status_code == 200 and set(r.json()["share"]) == PLAIN_VIEW


def test_revoked_token_is_401(cloud: Cloud) -> None:
    token = cloud.keystone.issue("a_member", "A")
    cloud.keystone.revoke(token)  # revoked before attachfs ever saw (and cached) it
    _assert_401(cloud.client.get("/v2.1/servers", headers={"X-Auth-Token": token}), cloud)


def test_expired_token_is_401(cloud: Cloud) -> None:
    """A token that really expires: issued for an application credential that expires in a few
    seconds (Keystone caps the token's expiry at the credential's). It works, is cached by
    keystonemiddleware, and is refused once past its expiry (the cache checks expiry too)."""
    token, expires_at = cloud.keystone.short_lived_token("a_member", seconds=5)
    headers = {"X-Auth-Token": token}
    assert cloud.client.get("/v2.1/servers", headers=headers).status_code == 200
    wait = (expires_at - dt.datetime.now(dt.UTC)).total_seconds() + 1
    assert 0 < wait < 10, expires_at
    time.sleep(wait)
    _assert_401(cloud.client.get("/v2.1/servers", headers=headers), cloud)


def test_unscoped_token_is_403(cloud: Cloud) -> None:
    body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": "a_member", "domain": {"id": "default"}, "password": PASSWORD}}}}}
    r = httpx.post(f"{cloud.keystone.v3}/auth/tokens", json=body, timeout=30)
    assert r.status_code == 201, r.text
    assert "project" not in r.json()["token"]
    got = cloud.client.get("/v2.1/servers", headers={"X-Auth-Token": r.headers["X-Subject-Token"]})
    assert got.status_code == 403, got.text
    assert got.json()["forbidden"]["code"] == 403


# ---- service tokens -------------------------------------------------------------------------

def test_service_token(cloud: Cloud) -> None:
    user = cloud.auth("a_member")
    ok = cloud.client.get("/v2.1/servers", headers={
        **user, "X-Service-Token": cloud.keystone.token(SERVICE_USER)})
    assert ok.status_code == 200, ok.text
    _assert_401(cloud.client.get("/v2.1/servers", headers={**user, "X-Service-Token": "bogus"}),
                cloud)
    # A valid token without the `service` role is no service token (service_token_roles_required).
    _assert_401(cloud.client.get("/v2.1/servers", headers={
        **user, "X-Service-Token": cloud.keystone.token("b_member")}), cloud)


# ---- the matrix -----------------------------------------------------------------------------

def test_project_b_can_neither_see_nor_attach_to_project_a(cloud: Cloud) -> None:
    sid = _server(cloud, "a_member")
    share = _share(cloud, "a_member")
    assert _attach(cloud, "a_member", sid, share["id"]).status_code == 201
    other = _share(cloud, "a_member")
    b_server = _server(cloud, "b_member")
    for user in ("b_member", "b_reader"):
        h = cloud.auth(user)
        assert cloud.client.get(f"/v2.1/servers/{sid}", headers=h).status_code == 404
        listed = cloud.client.get("/v2.1/servers", headers=h).json()["servers"]
        assert sid not in {s["id"] for s in listed}
        assert cloud.client.get(f"/v2.1/servers/{sid}/shares", headers=h).status_code == 404
        r = cloud.client.get(f"/v2.1/servers/{sid}/shares/{share['id']}", headers=h)
        assert r.status_code == 404 and r.json()["itemNotFound"]["code"] == 404
        assert _attach(cloud, user, sid, other["id"]).status_code == 404
        r = cloud.client.delete(f"/v2.1/servers/{sid}/shares/{share['id']}", headers=h)
        assert r.status_code == 404
        assert cloud.client.get(f"/v2.1/os-filesystem/{share['name']}", headers=h).status_code == 404
        names = {e["name"] for e in cloud.client.get("/v2.1/os-filesystem", headers=h).json()[
            "fs_entries"]}
        assert share["name"] not in names and other["name"] not in names
    # Not even onto B's own server: A's share is not visible to B.
    r = _attach(cloud, "b_member", b_server, other["id"])
    assert r.status_code == 404, r.text
    # A's attachment is untouched.
    shares = cloud.client.get(f"/v2.1/servers/{sid}/shares", headers=cloud.auth("a_reader"))
    assert [s["share_id"] for s in shares.json()["shares"]] == [share["id"]]


def test_reader_lists_but_cannot_attach_or_detach(cloud: Cloud) -> None:
    sid = _server(cloud, "a_member")
    share, second = _share(cloud, "a_member"), _share(cloud, "a_member")
    assert _attach(cloud, "a_member", sid, share["id"]).status_code == 201
    _settle_mappings(cloud, sid)
    h = cloud.auth("a_reader")
    r = cloud.client.get(f"/v2.1/servers/{sid}/shares", headers=h)
    assert r.status_code == 200 and [s["share_id"] for s in r.json()["shares"]] == [share["id"]]
    assert cloud.client.get(f"/v2.1/servers/{sid}/shares/{share['id']}", headers=h).status_code == 200
    assert cloud.client.get(f"/v2.1/servers/{sid}", headers=h).status_code == 200
    r = _attach(cloud, "a_reader", sid, second["id"])
    assert r.status_code == 403 and r.json()["forbidden"]["code"] == 403, r.text
    r = cloud.client.delete(f"/v2.1/servers/{sid}/shares/{share['id']}", headers=h)
    assert r.status_code == 403, r.text
    r = cloud.client.put(f"/v2.1/os-filesystem/fs-{uuid.uuid4().hex[:8]}", headers=h,
                         json={"fs_entry": {"size": 1}})
    assert r.status_code == 403, r.text
    # Nothing changed.
    r = cloud.client.get(f"/v2.1/servers/{sid}/shares", headers=h)
    assert [(s["share_id"], s["status"]) for s in r.json()["shares"]] == [(share["id"], "inactive")]


def test_member_attaches_and_detaches(cloud: Cloud) -> None:
    sid = _server(cloud, "a_member")
    share = _share(cloud, "a_member")
    r = _attach(cloud, "a_member", sid, share["id"])
    assert r.status_code == 201, r.text
    assert r.json() == {"share": {"share_id": share["id"], "status": "attaching",
                                  "tag": share["id"]}}
    _settle_mappings(cloud, sid)
    r = cloud.client.delete(f"/v2.1/servers/{sid}/shares/{share['id']}",
                            headers=cloud.auth("a_member"))
    assert r.status_code == 200 and r.content == b""
    listed = cloud.client.get(f"/v2.1/servers/{sid}/shares", headers=cloud.auth("a_member"))
    assert listed.json()["shares"][0]["status"] == "detaching"


def test_only_admin_sees_uuid_and_export_location(cloud: Cloud) -> None:
    sid = _server(cloud, "a_member")
    share = _share(cloud, "a_member")
    r = _attach(cloud, "a_member", sid, share["id"])
    assert set(r.json()["share"]) == PLAIN_VIEW  # the member's own POST answer, too
    path = f"/v2.1/servers/{sid}/shares/{share['id']}"
    for user in ("a_member", "a_reader"):
        r = cloud.client.get(path, headers=cloud.auth(user))
        assert r.status_code == 200 and set(r.json()["share"]) == PLAIN_VIEW, (user, r.text)
    r = cloud.client.get(path, headers=cloud.auth("admin"))
    assert r.status_code == 200, r.text
    admin_view = r.json()["share"]
    assert set(admin_view) == ADMIN_VIEW
    assert str(admin_view["export_location"]).startswith("local:")
    # Admin's list is the plain view (as the compute API does).
    r = cloud.client.get(f"/v2.1/servers/{sid}/shares", headers=cloud.auth("admin"))
    assert set(r.json()["shares"][0]) == PLAIN_VIEW


def test_admin_attaches_and_detaches_in_any_project(cloud: Cloud) -> None:
    sid = _server(cloud, "b_member")
    share = _share(cloud, "b_member")
    r = _attach(cloud, "admin", sid, share["id"])
    assert r.status_code == 201, r.text
    assert set(r.json()["share"]) == ADMIN_VIEW
    _settle_mappings(cloud, sid)
    r = cloud.client.delete(f"/v2.1/servers/{sid}/shares/{share['id']}",
                            headers=cloud.auth("admin"))
    assert r.status_code == 200


# ---- what reaches the RequestContext ---------------------------------------------------------

def test_user_token_reaches_the_attachment(cloud: Cloud) -> None:
    token = cloud.keystone.issue("a_member", "A")  # a token of its own, to tell it apart
    sid = _server(cloud, "a_member")
    share = _share(cloud, "a_member")
    r = cloud.client.post(f"/v2.1/servers/{sid}/shares", headers={"X-Auth-Token": token},
                          json={"share": {"share_id": share["id"]}})
    assert r.status_code == 201, r.text
    with cloud.parts.db.read() as s:
        row = s.query(ShareMapping).filter(ShareMapping.instance_uuid == sid).one()
        assert row.requester_token == token
        assert row.user_id == cloud.keystone.user_ids["a_member"]
        assert row.project_id == cloud.keystone.project_ids["A"]
        assert row.request_id == r.headers["x-openstack-request-id"]


def test_context_roles_are_lower_cased(cloud: Cloud) -> None:
    ks = cloud.keystone
    role = ks.admin_call("POST", "/roles", json={"role": {"name": "Share-Auditor"}}).json()["role"]
    user = ks.admin_call("POST", "/users", json={"user": {
        "name": "auditor", "domain_id": "default", "password": PASSWORD}}).json()["user"]
    ks.admin_call("PUT", f"/projects/{ks.project_ids['A']}/users/{user['id']}/roles/{role['id']}")
    token = ks.issue("auditor", "A")
    ctx = cloud.authenticator.authenticate({"x-auth-token": token}, "req-roles")
    assert ctx.user_id == user["id"] and ctx.project_id == ks.project_ids["A"]
    assert ctx.roles == ("share-auditor",)
    assert ctx.auth_token == token and ctx.request_id == "req-roles"
    assert not ctx.is_admin
    member = cloud.authenticator.authenticate({"x-auth-token": ks.token("a_member")}, "r")
    assert set(member.roles) == {"member", "reader"}
    admin = cloud.authenticator.authenticate({"x-auth-token": ks.token("admin")}, "r")
    assert admin.is_admin and {"admin", "member", "reader"} <= set(admin.roles)


def test_validation_is_cached(cloud: Cloud) -> None:
    """First validation asks Keystone; the next ones come from keystonemiddleware's cache."""
    token = cloud.keystone.issue("a_reader", "A")
    headers = {"x-auth-token": token}
    t0 = time.perf_counter()
    cloud.authenticator.authenticate(headers, "first")
    first = time.perf_counter() - t0
    runs = []
    for _ in range(20):
        t0 = time.perf_counter()
        cloud.authenticator.authenticate(headers, "cached")
        runs.append(time.perf_counter() - t0)
    cached = sorted(runs)[len(runs) // 2]
    print(f"\ntoken validation: first {first * 1000:.1f} ms, cached (median) {cached * 1000:.2f} ms",
          file=sys.stderr)
    assert cached < first


# ---- Keystone unreachable / direct use ---------------------------------------------------------

def test_keystone_unreachable_is_503(tmp_path: object) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    config = load_config(None, {"api.auth_strategy": "keystone",
                                "keystone_authtoken.www_authenticate_uri": dead,
                                "keystone_authtoken.auth_url": dead,
                                "keystone_authtoken.username": "nobody",
                                "keystone_authtoken.password": "nothing",
                                "keystone_authtoken.http_request_max_retries": 0})
    auth = KeystoneAuthenticator(config)
    with pytest.raises(IdentityUnavailable) as err:
        auth.authenticate({"x-auth-token": "whatever"}, "req-dead")
    assert err.value.code == 503
    with pytest.raises(Unauthorized) as no_token:  # no token: refused without asking Keystone
        auth.authenticate({}, "req-none")
    assert getattr(no_token.value, "headers", None) == {"WWW-Authenticate": f'Keystone uri="{dead}"'}



def test_concurrent_validation(cloud: Cloud) -> None:
    """The app validates in worker threads: one AuthProtocol shared by all of them."""
    users = ["a_reader", "a_member", "b_reader", "b_member", "admin"] * 4
    tokens = [cloud.keystone.issue(u, "admin" if u == "admin" else u[0].upper(),
                                   ADMIN_PASSWORD if u == "admin" else PASSWORD) for u in users]
    with ThreadPoolExecutor(8) as pool:
        contexts = list(pool.map(
            lambda t: cloud.authenticator.authenticate({"x-auth-token": t}, "req-c"), tokens))
    for user, token, ctx in zip(users, tokens, contexts, strict=True):
        assert ctx.user_id == cloud.keystone.user_ids[user] and ctx.auth_token == token


def test_who_is_calling_comes_before_the_microversion(cloud: Cloud) -> None:
    """As in the compute service, whose keystonemiddleware answers before its router reads
    the microversion: no token (or a bad one) is a 401 even with a version it would refuse."""
    for asked in ("compute 2.200", "compute two"):
        for token in ({}, {"X-Auth-Token": "not-a-token"}):
            r = cloud.client.get("/v2.1/flavors",
                                 headers={"OpenStack-API-Version": asked, **token})
            assert r.status_code == 401, (asked, token, r.text)
            assert "openstack-api-version" not in r.headers
