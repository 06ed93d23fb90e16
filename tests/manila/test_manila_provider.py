"""ManilaShareProvider and the NFS connector against a real Manila (conftest.py starts it):
shares, locked access rules, revocation with unrestrict, outages; then end to end through the
attachfs API and agent with a stopped server (no guest is booted, so nothing is mounted).

What this proves and what it does not is written down in docs/manila.md.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from attachfs.config import Config, load_config
from attachfs.db.share_leases import LEASE_SECONDS
from attachfs.db.tables import ShareMapping, ShareServiceLock, utcnow
from attachfs.errors import NotFound, PermanentError, TemporaryError
from attachfs.service import Parts, build_api, open_parts
from attachfs.storage.base import RequestContext
from attachfs.storage.manila import ManilaShareProvider, ShareServiceUnavailable
from tests.conftest import converge, create_server, make_image_dir, settle_server
from tests.manila.conftest import (
    SERVICE_USER,
    TEST_PROJECT,
    TEST_TOKEN,
    TEST_USER,
    Manila,
)

pytestmark = [pytest.mark.manila,
              pytest.mark.filterwarnings("ignore:The 'service_type' parameter is unnecesary")]
HOST_ADDRESS = "192.0.2.10"  # the compute host's storage-network address (TEST-NET-1)
USER = RequestContext(user_id=TEST_USER, project_id=TEST_PROJECT, auth_token=TEST_TOKEN,
                      request_id="req-attachfs-test")
NO_TOKEN = RequestContext(user_id="demo", project_id="demo")  # attachfs ran with noauth


def manila_config(manila: Manila, tmp_path: Path, host: str = "test-host",
                  host_address: str = HOST_ADDRESS, database_url: str = "") -> Config:
    return load_config(None, {
        "state_dir": str(tmp_path / host), "database_url": database_url,
        "images.dir": str(make_image_dir(tmp_path / host)),
        "agent.host": host, "storage.provider": "manila",
        "manila.auth_type": "none", "manila.endpoint_override": manila.endpoint,
        "manila.host_address": host_address, "manila.access_timeout": 30})


@pytest.fixture
def parts(manila: Manila, tmp_path: Path) -> Iterator[Parts]:
    parts = open_parts(manila_config(manila, tmp_path))
    yield parts
    parts.db.dispose()


@pytest.fixture
def provider(parts: Parts) -> ManilaShareProvider:
    assert isinstance(parts.provider.external, ManilaShareProvider)
    return parts.provider.external


@contextlib.contextmanager
def api_down(manila: Manila) -> Iterator[None]:
    """manila-api stopped (its process, not a mock); started again on the same port after."""
    manila.stop_api()
    try:
        yield
    finally:
        manila.start_api()


def rule_for(manila: Manila, share_id: str, address: str = HOST_ADDRESS) -> dict[str, Any] | None:
    rules = [r for r in manila.rules(share_id) if r["access_to"] == address]
    assert len(rules) <= 1, rules
    return rules[0] if rules else None


def report(what: str, seconds: float) -> None:
    sys.stderr.write(f"[manila] {what}: {seconds:.2f}s\n")


# ---- shares ------------------------------------------------------------------------------------

def test_every_share_listed_and_the_service_named_when_it_is_down(
        parts: Parts, manila: Manila, manila_share: dict[str, Any]) -> None:
    """The console's shares page: the share service's shares beside the built-in ones; with
    manila-api down, the built-in ones still, and the share service named as unavailable."""
    seen = parts.provider.visible_shares(USER)
    listed = {share.id: (provider, share) for provider, share in seen.shares}
    provider, share = listed[manila_share["id"]]
    assert (provider, share.protocol, share.status, share.size_gib) == ("manila", "NFS",
                                                                        "available", 1)
    assert seen.unavailable == []
    with api_down(manila):
        seen = parts.provider.visible_shares(USER)
    assert not any(p == "manila" for p, _ in seen.shares)
    (why,) = seen.unavailable
    assert why.startswith("manila: ") and "share service" in why


def test_get_share(provider: ManilaShareProvider, manila_share: dict[str, Any]) -> None:
    share = provider.get_share(manila_share["id"], USER)
    assert (share.id, share.status, share.protocol) == (manila_share["id"], "available", "NFS")
    assert share.project_id == TEST_PROJECT and share.size_gib == 1
    # The DummyDriver's exports: 10.0.0.10 is preferred, 11.0.0.11 is admin-only (left out).
    assert share.preferred_export.startswith("10.0.0.10:/path/to/fake/share/")
    assert not any(e.startswith("11.0.0.11:") for e in share.export_locations)
    assert provider.get_share(manila_share["id"], NO_TOKEN).id == manila_share["id"]


def settled(call: Callable[..., bool], *args: Any, timeout: float = 60) -> None:
    """What the agent does with a rule change: ask again until the share service applied it
    (the provider never waits itself)."""
    deadline = time.monotonic() + timeout
    while not call(*args):
        assert time.monotonic() < deadline, f"{call.__name__} not done within {timeout}s"
        time.sleep(0.1)


def test_unknown_share_is_not_found(provider: ManilaShareProvider) -> None:
    with pytest.raises(NotFound):
        provider.get_share("7f0f0f0f-0000-4000-8000-000000000000", USER)
    with pytest.raises(PermanentError, match="no longer exists in the share service"):
        settled(provider.grant_access, "7f0f0f0f-0000-4000-8000-000000000000", "test-host", "rw",
                              "attached to server x", USER)
    settled(provider.revoke_access, "7f0f0f0f-0000-4000-8000-000000000000", "test-host", USER)


def test_other_protocols_are_reported_but_refused(provider: ManilaShareProvider,
                                                   manila: Manila) -> None:
    cifs = manila.create_share("attachfs-test-cifs", proto="CIFS")
    assert provider.get_share(cifs["id"], USER).protocol == "CIFS"
    with pytest.raises(PermanentError, match="uses protocol CIFS; attachfs attaches NFS and "
                                             "CEPHFS shares only"):
        settled(provider.grant_access, cifs["id"], "test-host", "rw", "attached to server x", USER)
    assert manila.rules(cifs["id"]) == []


# ---- access rules ------------------------------------------------------------------------------

def test_user_token_goes_with_the_service_token(provider: ManilaShareProvider) -> None:
    """With the user's token at hand, both go to Manila: the user's as X-Auth-Token (its records
    name the user), attachfs's as X-Service-Token (its locks are the service's)."""
    api = provider._api(USER, "retry")
    headers = api.auth.get_headers(api.proxy.session)
    assert headers == {"X-Auth-Token": TEST_TOKEN, "X-Service-Token": "notused"}
    again = provider._api(NO_TOKEN, "retry")
    assert again.auth.get_headers(again.proxy.session) == {"X-Auth-Token": "notused"}
    assert again.proxy is api.proxy  # one proxy (and HTTP session) for every call


def test_grant_locks_and_revoke_unrestricts(provider: ManilaShareProvider, manila: Manila,
                                            manila_share: dict[str, Any], parts: Parts) -> None:
    share_id = manila_share["id"]
    started = time.monotonic()
    settled(provider.grant_access, share_id, "test-host", "rw", "attached to server vm-1", USER)
    report("grant -> active", time.monotonic() - started)
    try:
        rule = rule_for(manila, share_id)
        assert rule is not None
        assert (rule["access_type"], rule["access_level"], rule["state"]) == ("ip", "rw", "active")
        assert rule["metadata"] == {"attachfs_host": "test-host"}
        locks = manila.locks(rule["id"])
        assert sorted(lock["resource_action"] for lock in locks) == ["delete", "show"]
        for lock in locks:  # the user's token went along: Manila's records name the user
            assert (lock["user_id"], lock["project_id"]) == (TEST_USER, TEST_PROJECT)
            assert "compute host test-host" in lock["lock_reason"]
            assert f"requested by user {TEST_USER}" in lock["lock_reason"]
        assert manila.locks(share_id), "the share itself is locked against deletion"
        # Locked: a plain deny (without unrestrict) is refused by Manila.
        r = manila.request("POST", f"/shares/{share_id}/action",
                           json={"deny_access": {"access_id": rule["id"]}})
        assert r.status_code >= 400, r.text

        # Idempotent: the same rule is found and kept.
        started = time.monotonic()
        settled(provider.grant_access, share_id, "test-host", "rw", "attached to server vm-2", USER)
        report("second grant (reused)", time.monotonic() - started)
        again = rule_for(manila, share_id)
        assert again is not None and again["id"] == rule["id"]
        assert len(manila.rules(share_id)) == 1
        with parts.db.read() as s:  # the database lock row used to serialize rule changes
            assert s.get(ShareServiceLock, share_id) is not None
    finally:
        started = time.monotonic()
        settled(provider.revoke_access, share_id, "test-host", USER)
        report("revoke (unrestrict) -> gone", time.monotonic() - started)
    assert manila.rules(share_id) == []
    assert manila.locks(rule["id"]) == []
    assert manila.locks(share_id) == []
    settled(provider.revoke_access, share_id, "test-host", USER)  # idempotent


def test_service_credentials_without_a_user_token(provider: ManilaShareProvider, manila: Manila,
                                                  manila_share: dict[str, Any]) -> None:
    share_id = manila_share["id"]
    settled(provider.grant_access, share_id, "test-host", "ro", "attached to server vm-3", NO_TOKEN)
    try:
        rule = rule_for(manila, share_id)
        assert rule is not None and rule["access_level"] == "ro"
        assert {lock["user_id"] for lock in manila.locks(rule["id"])} == {SERVICE_USER}
        with pytest.raises(PermanentError, match="already has a read-only access rule"):
            settled(provider.grant_access, share_id, "test-host", "rw", "attached to server vm-4",
                                  NO_TOKEN)
    finally:
        settled(provider.revoke_access, share_id, "test-host", NO_TOKEN)
    assert manila.rules(share_id) == []


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def shared_db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """One attachfs database for two hosts' agents."""
    if request.param == "postgres":
        url: str = request.getfixturevalue("pg_url")
        return url
    return f"sqlite:///{tmp_path / 'attachfs.db'}"


def test_share_lease_is_held_across_agents(manila: Manila, shared_db: str,
                                           tmp_path: Path) -> None:
    """A lease in the database, not an in-process lock and not an open transaction: while one
    agent changes a share's rules, another agent (its own engine) is told to ask again (its
    grant answers "not yet"), another share is free, and the lease comes back afterwards; a
    lease whose holder died is taken over once it is LEASE_SECONDS old."""
    first = open_parts(manila_config(manila, tmp_path, "host-a", "192.0.2.11", shared_db))
    second = open_parts(manila_config(manila, tmp_path, "host-b", "192.0.2.12", shared_db))
    a, b = first.provider.external, second.provider.external
    assert isinstance(a, ManilaShareProvider) and isinstance(b, ManilaShareProvider)
    share, other = "5a5a5a5a-0000-4000-8000-00000000000a", "5a5a5a5a-0000-4000-8000-00000000000b"
    try:
        with a._share_lease(share) as mine:
            assert mine
            with b._share_lease(share) as theirs, b._share_lease(other) as free:
                assert not theirs and free
            # no transaction is open meanwhile: the other agent writes at once
            with second.db.session() as s:
                s.merge(ShareServiceLock(share_id=other, holder=None))
        with b._share_lease(share) as theirs:
            assert theirs
        with first.db.session() as s:  # a holder that died long ago
            row = s.get(ShareServiceLock, share)
            assert row is not None
            row.holder, row.updated_at = "host-a:dead", utcnow() - dt.timedelta(
                seconds=LEASE_SECONDS + 1)
        with b._share_lease(share) as theirs:
            assert theirs
    finally:
        first.db.dispose()
        second.db.dispose()


def test_agents_on_two_hosts_take_turns(manila: Manila, manila_share: dict[str, Any],
                                        shared_db: str, tmp_path: Path) -> None:
    """Two hosts' agents (one database) grant on the same share at once: both rules end up
    active, neither request is lost."""
    share_id = manila_share["id"]
    first = open_parts(manila_config(manila, tmp_path, "host-a", "192.0.2.11", shared_db))
    second = open_parts(manila_config(manila, tmp_path, "host-b", "192.0.2.12", shared_db))
    for each in (first, second):  # both connected (the database in WAL mode) before the race
        with each.db.session():
            pass
    providers = {"host-a": first.provider, "host-b": second.provider}
    errors: list[BaseException] = []

    def grant(host: str) -> None:
        try:
            settled(providers[host].grant_access, share_id, host, "rw", "attached to server vm-5", USER)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=grant, args=(h,)) for h in providers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert not errors, errors
        rules = {r["access_to"]: r["state"] for r in manila.rules(share_id)}
        assert rules == {"192.0.2.11": "active", "192.0.2.12": "active"}
    finally:
        for host, p in providers.items():
            settled(p.revoke_access, share_id, host, USER)
        first.db.dispose()
        second.db.dispose()
    assert manila.rules(share_id) == []


def test_outage_during_grant_then_retry(provider: ManilaShareProvider, manila: Manila,
                                        manila_share: dict[str, Any]) -> None:
    share_id = manila_share["id"]
    with api_down(manila):
        with pytest.raises(TemporaryError) as caught:
            settled(provider.grant_access, share_id, "test-host", "rw", "attached to server vm-6", USER)
        message = caught.value.message
        assert f"share service (Manila) unreachable at {manila.endpoint}" in message
        assert message.endswith("retry the attach when it is back")
        with pytest.raises(ShareServiceUnavailable, match="share service"):
            provider.get_share(share_id, USER)
    try:
        settled(provider.grant_access, share_id, "test-host", "rw", "attached to server vm-6", USER)
        rule = rule_for(manila, share_id)
        assert rule is not None and rule["state"] == "active"
    finally:
        settled(provider.revoke_access, share_id, "test-host", USER)
    assert manila.rules(share_id) == []


# ---- end to end: attachfs API + agent, storage.provider = "manila" ---------------------------

def _agent_or_skip(parts: Parts) -> Any:
    if os.geteuid() != 0:
        pytest.skip("the agent's steps use libvirt (qemu:///system) and need root")
    from attachfs.service import build_agent

    try:
        agent = build_agent(parts)
        agent.r.virt.guest_state("00000000-0000-4000-8000-000000000000")
    except Exception as exc:  # libvirtd not running here
        pytest.skip(f"libvirt is not usable: {exc}")
    return agent


def _mapping(parts: Parts, server_id: str, share_id: str) -> ShareMapping | None:
    with parts.db.read() as s:
        return s.query(ShareMapping).filter_by(instance_uuid=server_id,
                                                share_id=share_id).one_or_none()


EXTENDED = {"OpenStack-API-Version": "compute 2.97, attachfs 1.0"}


def test_end_to_end_attach_outage_retry_detach(parts: Parts, manila: Manila) -> None:
    agent = _agent_or_skip(parts)
    first = manila.create_share("attachfs-e2e-1")
    second = manila.create_share("attachfs-e2e-2")
    third = manila.create_share("attachfs-e2e-3")
    try:
        with TestClient(build_api(parts)) as client:
            client.headers.update({"X-Auth-Token": "alice:p1",
                                   "OpenStack-API-Version": "compute 2.97"})
            server_id = create_server(client, "manila-vm")
            settle_server(parts, server_id, "stopped")  # never boots: no guest needed
            shares = f"/v2.1/servers/{server_id}/shares"

            # attach: attaching -> inactive, with a locked rule for this host in Manila
            r = client.post(shares, json={"share": {"share_id": first["id"]}})
            assert r.status_code == 201, r.text
            assert r.json()["share"]["status"] == "attaching"
            converge(agent.r, server_id)
            assert client.get(f"{shares}/{first['id']}").json()["share"]["status"] == "inactive"
            rule = rule_for(manila, first["id"])
            assert rule is not None and rule["state"] == "active"
            assert sorted(lk["resource_action"] for lk in manila.locks(rule["id"])) == [
                "delete", "show"]

            m = _mapping(parts, server_id, first["id"])
            assert m is not None and m.share_proto == "NFS"

            # Manila's API goes away between the request and the agent's grant -> error
            r = client.post(shares, json={"share": {"share_id": second["id"]}})
            assert r.status_code == 201, r.text
            with api_down(manila):
                converge(agent.r, server_id)
                view = client.get(f"/v2.1/servers/{server_id}", headers=EXTENDED).json()[
                    "server"]
                attached = {a["share_id"]: a for a in view["os-extended-shares:shares_attached"]}
                assert attached[second["id"]]["status"] == "error"
                fault = attached[second["id"]]["fault"]
                assert "share service (Manila) unreachable at" in fault, fault
                assert "retry the attach when it is back" in fault
                # ...and while it is away, a new attach is refused up front with a 503
                r = client.post(shares, json={"share": {"share_id": third["id"]}})
                assert r.status_code == 503, r.text
                assert "share service (Manila) unreachable" in r.json()["serviceUnavailable"][
                    "message"]
            assert rule_for(manila, second["id"]) is None

            # back: the same share again is a 409 (2.97), unless a retry is asked for
            r = client.post(shares, json={"share": {"share_id": second["id"]}})
            assert r.status_code == 409, r.text
            r = client.post(shares, headers={"OpenStack-API-Version": "compute 2.97, attachfs 1.2"},
                            json={"share": {"share_id": second["id"], "retry": True}})
            assert r.status_code == 201, r.text
            converge(agent.r, server_id)
            assert client.get(f"{shares}/{second['id']}").json()["share"]["status"] == "inactive"
            rule2 = rule_for(manila, second["id"])
            assert rule2 is not None and rule2["state"] == "active"

            # detach both: rules and locks gone in Manila
            for share in (first, second):
                assert client.delete(f"{shares}/{share['id']}").status_code == 200
            converge(agent.r, server_id)
            assert client.get(shares).json()["shares"] == []
            for share, rid in ((first, rule["id"]), (second, rule2["id"])):
                assert manila.rules(share["id"]) == []
                assert manila.locks(rid) == [] and manila.locks(share["id"]) == []
    finally:
        agent.r.metadata.close()
