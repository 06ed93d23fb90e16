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
