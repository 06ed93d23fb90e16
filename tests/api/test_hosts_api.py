"""Compute hosts at the API (issue 12, item 1): what the agents register shows as os-services
and os-hypervisors in the compute API's shapes, up or down by heartbeat, admin only; an admin
disables, enables and forces down a host."""

from __future__ import annotations

import datetime as dt

from fastapi.testclient import TestClient

from attachfs.agent.hosts import heartbeat, register
from attachfs.config import load_config
from attachfs.db.tables import Host
from attachfs.service import Parts
from tests.conftest import create_server

ADMIN = {"X-Auth-Token": "admin:admin"}


def v(version: str) -> dict[str, str]:
    return {**ADMIN, "OpenStack-API-Version": f"compute {version}"}


def _two_hosts(parts: Parts) -> None:
    register(parts.db, parts.config)  # "test-host", the API's own
    other = load_config(None, {"state_dir": parts.config.state_dir, "agent.host": "h2",
                               "containers.enabled": False,
                               "agent.share_transports": ["virtiofs"]})
    register(parts.db, other)


def _age(parts: Parts, name: str, seconds: float) -> None:
    with parts.db.session() as s:
        host = s.query(Host).filter_by(name=name).one()
        host.heartbeat_at -= dt.timedelta(seconds=seconds)


def test_services_list_up_and_down(client: TestClient, parts: Parts) -> None:
    _two_hosts(parts)
    _age(parts, "h2", 61)
    services = client.get("/v2.1/os-services", headers=v("2.53")).json()["services"]
    assert [(s["host"], s["binary"], s["zone"], s["status"], s["state"], s["forced_down"])
            for s in services] == [("test-host", "nova-compute", "nova", "enabled", "up", False),
                                   ("h2", "nova-compute", "nova", "enabled", "down", False)]
    assert all(len(s["id"]) == 36 for s in services)
    old = client.get("/v2.1/os-services", headers=v("2.1")).json()["services"]
    assert [s["id"] for s in old] == [1, 2] and "forced_down" not in old[0]
    heartbeat(parts.db, "h2")
    again = client.get("/v2.1/os-services?host=h2", headers=v("2.53")).json()["services"]
    assert [(s["host"], s["state"]) for s in again] == [("h2", "up")]
    assert client.get("/v2.1/os-services?binary=nova-scheduler",
                      headers=v("2.53")).json()["services"] == []
    assert client.get("/v2.1/os-services?bogus=1", headers=v("2.53")).status_code == 400


def test_only_admins(client: TestClient, parts: Parts) -> None:
    _two_hosts(parts)
    for path in ("/v2.1/os-services", "/v2.1/os-hypervisors", "/v2.1/os-hypervisors/detail",
                 "/v2.1/os-hypervisors/1"):
        assert client.get(path).status_code == 403, path
    r = client.put("/v2.1/os-services/1", json={"status": "disabled"},
                   headers={"OpenStack-API-Version": "compute 2.53"})
    assert r.status_code == 403


def test_disable_enable_force_down(client: TestClient, parts: Parts) -> None:
    _two_hosts(parts)
    sid = client.get("/v2.1/os-services?host=h2", headers=v("2.53")).json()["services"][0]["id"]
    r = client.put(f"/v2.1/os-services/{sid}", headers=v("2.53"),
                   json={"status": "disabled", "disabled_reason": "maintenance"})
    assert r.status_code == 200, r.text
    assert (r.json()["service"]["status"], r.json()["service"]["disabled_reason"]) == (
        "disabled", "maintenance")
    register(parts.db, load_config(None, {"state_dir": parts.config.state_dir,
                                          "agent.host": "h2"}))  # an agent restart keeps it
    shown = client.get("/v2.1/os-services?host=h2", headers=v("2.53")).json()["services"][0]
    assert (shown["status"], shown["disabled_reason"]) == ("disabled", "maintenance")
    r = client.put(f"/v2.1/os-services/{sid}", headers=v("2.53"), json={"forced_down": True})
    assert r.json()["service"]["state"] == "down"
    r = client.put(f"/v2.1/os-services/{sid}", headers=v("2.53"),
                   json={"status": "enabled", "forced_down": False})
    assert (r.json()["service"]["status"], r.json()["service"]["state"],
            r.json()["service"]["disabled_reason"]) == ("enabled", "up", None)
    for body, message in (({"status": "enabled", "disabled_reason": "x"}, "disabled_reason"),
                          ({}, "'status' and/or 'forced_down' must be specified."),
                          ({"status": "off"}, "status"), ({"bogus": 1}, "bogus")):
        r = client.put(f"/v2.1/os-services/{sid}", headers=v("2.53"), json=body)
        assert r.status_code == 400 and message in r.text, (body, r.text)
    missing = "00000000-0000-0000-0000-000000000000"
    assert client.put(f"/v2.1/os-services/{missing}", headers=v("2.53"),
                      json={"status": "disabled"}).status_code == 404


def test_legacy_service_actions(client: TestClient, parts: Parts) -> None:
    _two_hosts(parts)
    r = client.put("/v2.1/os-services/disable-log-reason", headers=v("2.52"),
                   json={"host": "h2", "binary": "nova-compute", "disabled_reason": "r"})
    assert r.status_code == 200 and r.json() == {"service": {
        "host": "h2", "binary": "nova-compute", "status": "disabled", "disabled_reason": "r"}}
    r = client.put("/v2.1/os-services/enable", headers=v("2.52"),
                   json={"host": "h2", "binary": "nova-compute"})
    assert r.json() == {"service": {"host": "h2", "binary": "nova-compute",
                                    "status": "enabled"}}
    assert client.put("/v2.1/os-services/enable", headers=v("2.52"), json={
        "host": "nope", "binary": "nova-compute"}).status_code == 404
    assert client.put("/v2.1/os-services/reboot", headers=v("2.52"), json={
        "host": "h2", "binary": "nova-compute"}).status_code == 404


def test_hypervisors(client: TestClient, parts: Parts) -> None:
    _two_hosts(parts)
    create_server(client)  # placed on one of the two (core/scheduler.py)
    listed = client.get("/v2.1/os-hypervisors", headers=v("2.53")).json()["hypervisors"]
    assert [(h["hypervisor_hostname"], h["state"], h["status"]) for h in listed] == [
        ("test-host", "up", "enabled"), ("h2", "up", "enabled")]
    assert set(listed[0]) == {"id", "hypervisor_hostname", "state", "status"}
    detail = client.get("/v2.1/os-hypervisors/detail", headers=v("2.53")).json()["hypervisors"]
    assert sum(h["running_vms"] for h in detail) == 1 == sum(h["vcpus_used"] for h in detail)
    assert detail[0]["hypervisor_type"] == "QEMU"
    assert detail[0]["memory_mb"] > 0 and detail[0]["service"]["host"] == "test-host"
    new = client.get(f"/v2.1/os-hypervisors/{listed[1]['id']}", headers=v("2.88")).json()
    assert "running_vms" not in new["hypervisor"] and "uptime" in new["hypervisor"]
    assert client.get("/v2.1/os-hypervisors?hypervisor_hostname_pattern=h2",
                      headers=v("2.53")).json()["hypervisors"][0]["hypervisor_hostname"] == "h2"
    assert client.get("/v2.1/os-hypervisors?hypervisor_hostname_pattern=zz",
                      headers=v("2.53")).status_code == 404
    assert client.get("/v2.1/os-hypervisors/9999", headers=v("2.53")).status_code == 404


def test_placement(client: TestClient, parts: Parts) -> None:
    """POST /servers picks an up, enabled host that can run it; none: ERROR, as the compute
    service answers, and a delete that needs no agent."""
    _two_hosts(parts)  # test-host runs containers, h2 does not

    def placed(sid: str) -> tuple[str, str]:
        body = client.get(f"/v2.1/servers/{sid}", headers=v("2.53")).json()["server"]
        return body["OS-EXT-SRV-ATTR:host"], body["status"]

    with parts.db.session() as s:
        s.query(Host).filter_by(name="h2").one().memory_mib = 10 ** 7  # the most free memory
    assert placed(create_server(client))[0] == "h2"
    assert placed(create_server(client, flavorRef="c1.small"))[0] == "test-host"
    sid = client.get("/v2.1/os-services?host=h2", headers=v("2.53")).json()["services"][0]["id"]
    client.put(f"/v2.1/os-services/{sid}", headers=v("2.53"), json={"status": "disabled"})
    assert placed(create_server(client))[0] == "test-host"
    _age(parts, "test-host", 3600)
    nowhere = create_server(client)
    body = client.get(f"/v2.1/servers/{nowhere}", headers=v("2.53")).json()["server"]
    assert body["status"] == "ERROR", body
    assert body["fault"]["message"] == ("No valid host was found. Of 2 host(s): 1 down, "
                                        "1 disabled."), body["fault"]
    assert client.delete(f"/v2.1/servers/{nowhere}").status_code == 204
    assert client.get(f"/v2.1/servers/{nowhere}").status_code == 404


def test_garbage_ids_are_4xx(client: TestClient, parts: Parts) -> None:
    _two_hosts(parts)
    for junk in ("%00", "9" * 30, "x" * 2000, "%ff", "\u00b2"):  # ("..": the client resolves it)
        for r in (client.get(f"/v2.1/os-hypervisors/{junk}", headers=v("2.53")),
                  client.put(f"/v2.1/os-services/{junk}", headers=v("2.53"),
                             json={"status": "enabled"}),
                  client.get(f"/v2.1/os-hypervisors?hypervisor_hostname_pattern={junk}",
                             headers=v("2.53"))):
            assert 400 <= r.status_code < 500, (junk, r.status_code, r.text[:200])


def _stall(parts: Parts, server_id: str, seconds: float) -> None:
    """The server's one attachment has been `attaching` for `seconds` without a word."""
    from attachfs.db.tables import ShareMapping

    with parts.db.session() as s:
        (m,) = s.query(ShareMapping).filter_by(instance_uuid=server_id).all()
        assert m.status == "attaching"
        m.updated_at -= dt.timedelta(seconds=seconds)


def test_host_status_and_an_attachment_stalled_on_a_silent_host(client: TestClient,
                                                                parts: Parts) -> None:
    from tests.conftest import settle_server

    register(parts.db, parts.config)  # test-host, where the API places servers
    sid = create_server(client)
    settle_server(parts, sid)
    share = client.put("/v2.1/os-filesystem/stalled", json={"fs_entry": {"size": 1}}).json()
    r = client.post(f"/v2.1/servers/{sid}/shares",
                    json={"share": {"share_id": share["fs_entry"]["id"]}})
    assert r.status_code == 201, r.text
    extended = {"OpenStack-API-Version": "compute 2.97, attachfs 1.0"}

    def shown(headers: dict[str, str]) -> tuple[object, object]:
        server = client.get(f"/v2.1/servers/{sid}", headers=headers).json()["server"]
        (attached,) = server.get("os-extended-shares:shares_attached", [{}])
        return server.get("host_status"), attached.get("fault")

    # the host's agent is up: host_status UP, and an attachment in flight is only that
    _stall(parts, sid, 600)
    assert shown({**ADMIN, **extended}) == ("UP", None)
    # its agent is silent (no heartbeat for down_after s): DOWN, and the stalled attachment
    # says why: to an admin with the host's name, to its owner without
    _age(parts, "test-host", 61)
    status, fault = shown({**ADMIN, **extended})
    assert status == "DOWN"
    assert isinstance(fault, str) and fault.startswith("no progress for 6")
    assert "host test-host's agent is not running" in fault, fault
    status, fault = shown(extended)
    assert status is None and isinstance(fault, str) and "test-host" not in fault
    assert "the agent of the server's host is not running" in fault
    # the same in the list, and the compute API's own body (2.97) is unchanged
    listed = client.get("/v2.1/servers/detail?all_tenants=1",
                        headers={**ADMIN, **extended}).json()
    (row,) = [x for x in listed["servers"] if x["id"] == sid]
    assert row["host_status"] == "DOWN"
    assert "not running" in row["os-extended-shares:shares_attached"][0]["fault"]
    plain = client.get(f"/v2.1/servers/{sid}/shares").json()["shares"][0]
    assert plain["status"] == "attaching" and "fault" not in plain
    # a recent request on a silent host is not stalled yet; a disabled host is MAINTENANCE
    _stall(parts, sid, -590)
    assert shown({**ADMIN, **extended}) == ("DOWN", None)
    heartbeat(parts.db, "test-host")
    with parts.db.session() as s:
        s.query(Host).filter_by(name="test-host").one().disabled = True
    assert shown({**ADMIN, **extended})[0] == "MAINTENANCE"
