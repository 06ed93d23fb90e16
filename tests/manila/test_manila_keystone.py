"""attachfs with api.auth_strategy = "keystone" and storage.provider = "manila" against a real
Manila that authenticates with the same real Keystone (conftest.py: `manila_keystone`, a
keystone-mode manila-api in Keystone's catalog as sharev2; tests/keystone_fixture.py: users
a_member of project A, b_member of project B, `admin`, and attachfs's service user with the
service role).

attachfs reaches Manila through the catalog (no endpoint_override) with its own password
credentials, and sends the requester's real Keystone token along with its own as
X-Service-Token. The server is stopped (no guest boots); the agent runs in process.

What this proves and what it does not is written down in docs/manila.md.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from attachfs.config import load_config
from attachfs.errors import NotFound
from attachfs.service import Parts, build_api, open_parts
from attachfs.storage.base import RequestContext
from attachfs.storage.manila import ManilaShareProvider
from tests.conftest import converge, create_server, make_image_dir, settle_server
from tests.keystone_fixture import SERVICE_PASSWORD, SERVICE_USER, authtoken_overrides
from tests.manila.conftest import REGION, KeystoneManila
from tests.manila.test_manila_provider import HOST_ADDRESS, _agent_or_skip

pytestmark = [pytest.mark.manila, pytest.mark.keystone,
              pytest.mark.filterwarnings("ignore:The 'service_type' parameter is unnecesary")]
COMPUTE = {"OpenStack-API-Version": "compute 2.97"}


@pytest.fixture
def ks_parts(manila_keystone: KeystoneManila, tmp_path: Path) -> Iterator[Parts]:
    """attachfs: Keystone auth for its API, Manila through the catalog for its shares."""
    url = manila_keystone.keystone.url
    config = load_config(None, {
        "state_dir": str(tmp_path / "state"), "images.dir": str(make_image_dir(tmp_path)),
        "agent.host": "test-host", **authtoken_overrides(url),
        "storage.provider": "manila",
        "manila.auth_type": "password", "manila.auth_url": f"{url}/v3",
        "manila.username": SERVICE_USER, "manila.password": SERVICE_PASSWORD,
        "manila.project_name": "service", "manila.region_name": REGION,
        "manila.host_address": HOST_ADDRESS, "manila.access_timeout": 30})
    parts = open_parts(config)
    yield parts
    parts.db.dispose()


@pytest.fixture
def provider(ks_parts: Parts) -> ManilaShareProvider:
    assert isinstance(ks_parts.provider.external, ManilaShareProvider)
    return ks_parts.provider.external


@pytest.fixture(scope="module")
def share_a(manila_keystone: KeystoneManila) -> dict[str, Any]:
    """An NFS share that a_member made in project A, with their own token."""
    return manila_keystone.create_share("attachfs-ks-a", token=manila_keystone.token("a_member"))


def member(mk: KeystoneManila, user: str) -> RequestContext:
    ks = mk.keystone
    return RequestContext(user_id=ks.user_ids[user], project_id=ks.project_ids[user[0].upper()],
                          roles=("member", "reader"), auth_token=ks.token(user),
                          request_id=f"req-{user}")


def report(what: str, value: object) -> None:
    sys.stderr.write(f"[manila+keystone] {what}: {value}\n")


def test_share_belongs_to_the_member_and_is_hidden_from_b(manila_keystone: KeystoneManila,
                                                          share_a: dict[str, Any]) -> None:
    ks = manila_keystone.keystone
    assert share_a["project_id"] == ks.project_ids["A"]
    assert share_a["user_id"] == ks.user_ids["a_member"]
    r = manila_keystone.request("GET", f"/shares/{share_a['id']}", ks.token("b_member"))
    assert r.status_code == 404, r.text
    r = manila_keystone.request("GET", "/shares", "bogus-token")
    assert r.status_code == 401, r.text


def test_manila_checks_the_service_token(manila_keystone: KeystoneManila,
                                         share_a: dict[str, Any]) -> None:
    """The control for the lock_context asserted below: the member's token alone makes `user`
    locks; an X-Service-Token without the service role, or a bogus one, is refused (401)."""
    mk, ks = manila_keystone, manila_keystone.keystone
    a_token = ks.token("a_member")
    r = mk.request("POST", "/resource-locks", a_token, json={"resource_lock": {
        "resource_id": share_a["id"], "resource_type": "share", "resource_action": "delete"}})
    assert r.status_code == 200, r.text
    lock = r.json()["resource_lock"]
    try:
        assert (lock["user_id"], lock["lock_context"]) == (ks.user_ids["a_member"], "user")
    finally:
        r = mk.request("DELETE", f"/resource-locks/{lock['id']}", a_token)
        assert r.status_code == 204, r.text
    for service_token in (ks.token("b_member"), "bogus-service-token"):
        r = mk.request("GET", f"/shares/{share_a['id']}", a_token,
                       headers={"X-Service-Token": service_token})
        assert r.status_code == 401, r.text
    r = mk.request("GET", f"/shares/{share_a['id']}", a_token,
                   headers={"X-Service-Token": ks.token(SERVICE_USER)})
    assert r.status_code == 200, r.text


def test_provider_finds_manila_in_the_catalog(provider: ManilaShareProvider,
                                              manila_keystone: KeystoneManila,
                                              share_a: dict[str, Any]) -> None:
    mk = manila_keystone
    user = member(mk, "a_member")
    api = provider._api(user, "retry")
    assert api.proxy.get_endpoint() == mk.endpoint  # sharev2 in RegionOne, by openstacksdk
    headers = api.auth.get_headers(api.proxy.session)
    assert headers is not None and headers["X-Auth-Token"] == user.auth_token
    assert headers["X-Service-Token"] not in ("", user.auth_token)  # attachfs's own token

    share = provider.get_share(share_a["id"], user)
    assert (share.id, share.status, share.protocol) == (share_a["id"], "available", "NFS")
    assert share.project_id == mk.keystone.project_ids["A"]
    with pytest.raises(NotFound):  # B's member: Manila hides A's share
        provider.get_share(share_a["id"], member(mk, "b_member"))
    # attachfs's service user alone (project service, role service, no admin) does not see
    # project A's share either: without a user token it would need Manila's admin role.
    with pytest.raises(NotFound):
        provider.get_share(share_a["id"], RequestContext(user_id="x", project_id="y"))


def test_member_attaches_through_attachfs_and_manila_names_the_member(
        ks_parts: Parts, manila_keystone: KeystoneManila, share_a: dict[str, Any]) -> None:
    mk, ks = manila_keystone, manila_keystone.keystone
    agent = _agent_or_skip(ks_parts)
    a_member = ks.user_ids["a_member"]
    project_a = ks.project_ids["A"]
    share_id = share_a["id"]
    a_token = ks.token("a_member")
    try:
        with TestClient(build_api(ks_parts)) as client:
            client.headers.update(COMPUTE)
            a = {"X-Auth-Token": a_token}
            b = {"X-Auth-Token": ks.token("b_member")}
            server_id = create_server(client, "ks-manila-vm", token=a_token)
            settle_server(ks_parts, server_id, "stopped")
            shares = f"/v2.1/servers/{server_id}/shares"
            assert client.get(shares).status_code == 401  # Keystone mode: no token, no entry

            # B's member, on their own server: A's Manila share is not found (Manila hides it)
            b_server = create_server(client, "ks-manila-vm-b", token=ks.token("b_member"))
            settle_server(ks_parts, b_server, "stopped")
            r = client.post(f"/v2.1/servers/{b_server}/shares", headers=b,
                            json={"share": {"share_id": share_id}})
            assert r.status_code == 404, r.text
            assert share_id in r.json()["itemNotFound"]["message"]
            # ...nor on A's server (attachfs hides the server)
            r = client.post(shares, headers=b, json={"share": {"share_id": share_id}})
            assert r.status_code == 404, r.text

            # A's member attaches: attaching -> (agent: grant with both tokens) -> inactive
            started = time.monotonic()
            r = client.post(shares, headers=a, json={"share": {"share_id": share_id}})
            assert r.status_code == 201, r.text
            assert r.json()["share"]["status"] == "attaching"
            report("POST (token validation + Manila share look-up)",
                   f"{time.monotonic() - started:.2f}s")
            started = time.monotonic()
            converge(agent.r, server_id)
            report("agent grant -> rule active", f"{time.monotonic() - started:.2f}s")
            got = client.get(f"{shares}/{share_id}", headers=a).json()["share"]
            assert got["status"] == "inactive", got

            # In Manila (as its admin): one active ip rule for this host, locked twice
            rules = mk.rules(share_id)
            assert len(rules) == 1, rules
            rule = rules[0]
            report("access rule (admin view)", rule)
            assert (rule["access_type"], rule["access_to"], rule["access_level"],
                    rule["state"]) == ("ip", HOST_ADDRESS, "rw", "active")
            assert rule["metadata"] == {"attachfs_host": "test-host"}
            locks = mk.locks(rule["id"])
            report("access rule locks", [{k: lk[k] for k in ("resource_action", "user_id",
                                                             "project_id", "lock_context")}
                                         for lk in locks])
            assert sorted(lk["resource_action"] for lk in locks) == ["delete", "show"]
            for lk in locks:
                # the member's token went along: Manila's records name the member...
                assert (lk["user_id"], lk["project_id"]) == (a_member, project_a)
                assert lk["user_id"] != ks.user_ids[SERVICE_USER]
                # ...and attachfs's X-Service-Token was accepted (service role): service locks
                assert lk["lock_context"] == "service"
                assert f"requested by user {a_member} of project {project_a}" in lk[
                    "lock_reason"]
            share_locks = mk.locks(share_id)
            report("share locks", [{k: lk[k] for k in ("resource_action", "user_id",
                                                       "lock_context")} for lk in share_locks])
            assert share_locks and all(lk["user_id"] == a_member for lk in share_locks)

            # The member sees the rule, but redacted (visibility lock), and cannot lift it
            seen = mk.rules(share_id, a_token)
            assert [(x["id"], x["access_to"]) for x in seen] == [(rule["id"], "******")]
            for unrestrict in (False, True):
                r = mk.request("POST", f"/shares/{share_id}/action", a_token, json={
                    "deny_access": {"access_id": rule["id"], "unrestrict": unrestrict}})
                assert r.status_code == 403, (unrestrict, r.status_code, r.text)
            r = mk.request("DELETE", f"/resource-locks/{locks[0]['id']}", a_token)
            assert r.status_code == 403, r.text
            # B's member cannot detach it either (404: not their server)
            assert client.delete(f"{shares}/{share_id}", headers=b).status_code == 404

            # DELETE (A's member) -> agent revokes with unrestrict -> rule and locks gone
            assert client.delete(f"{shares}/{share_id}", headers=a).status_code == 200
            started = time.monotonic()
            converge(agent.r, server_id)
            report("agent revoke -> rule gone", f"{time.monotonic() - started:.2f}s")
            assert client.get(shares, headers=a).json()["shares"] == []
            assert mk.rules(share_id) == []
            assert mk.locks(rule["id"]) == [] and mk.locks(share_id) == []
    finally:
        agent.r.metadata.close()
