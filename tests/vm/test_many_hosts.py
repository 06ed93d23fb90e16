"""Many hosts (issue 12): two agents, each in its own network namespace with its own address,
one API, one PostgreSQL, real guests. Host A fails (its agent is killed; its guest, mounts and
virtiofsd stay, as on a host cut off from the cloud); the admin evacuates the server: host A
is fenced on the storage side first, the server is rebuilt on host B with its shares, and the
data written on A is read back from inside the guest on B. Host A comes back and removes the
guest that moved away, its mounts and its virtiofsd. Then a cold migration back to A with the
share, confirmed, leaves nothing on B."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from harness.guest_shell import GuestShell, user_data
from harness.many_hosts import Cloud, cloud
from harness.process import wait_for
from tests.vm.harness import GUEST_TEST, TEST_STATE

pytestmark = [*GUEST_TEST, pytest.mark.skipif(shutil.which("nsenter") is None,
                                              reason="nsenter (util-linux) missing")]


def boot_on_a(c: Cloud) -> tuple[str, str, str]:
    """A server (placed on host-a: the tie goes to the first name) with a control share and a
    data share; (server, control share, data share)."""
    shares = []
    for name in ("ctl", "data"):
        r = c.http.put(f"/v2.1/os-filesystem/{name}", json={"fs_entry": {"size": 1}})
        assert r.status_code == 201, r.text
        shares.append(str(r.json()["fs_entry"]["id"]))
    r = c.http.post("/v2.1/servers", json={"server": {
        "name": "mover", "flavorRef": "2", "imageRef": "debian-busybox",
        "user_data": user_data("ctl")}})
    assert r.status_code == 202, r.text
    sid = str(r.json()["server"]["id"])
    c.wait_status(sid, "ACTIVE")
    for share, tag in zip(shares, ("ctl", "data"), strict=True):
        r = c.http.post(f"/v2.1/servers/{sid}/shares",
                        json={"share": {"share_id": share, "tag": tag}})
        assert r.status_code == 201, r.text
        c.wait_mapping(sid, share, "active")
    return sid, shares[0], shares[1]


def shell(c: Cloud, ctl: str) -> GuestShell:
    return GuestShell(c.shares_root / ctl)


def wait_runner(c: Cloud, host: str, sid: str) -> None:
    wait_for(f"the guest's runner on {host}", lambda: "runner started" in
             c.hosts[host].console(sid), 240, interval=1)


def test_evacuate_fence_come_back_and_cold_migrate() -> None:
    base = TEST_STATE / f"hosts-{time.monotonic_ns() % 10**8}"
    with cloud(base) as c:
        try:
            _body(c)
        except BaseException:
            for log in sorted(Path(base).rglob("*.log")):
                print(f"---- {log}\n{log.read_text(errors='replace')[-3000:]}")
            raise


def _body(c: Cloud) -> None:
    a, b = c.hosts["host-a"], c.hosts["host-b"]
    services = c.services()
    assert services["host-a"]["state"] == services["host-b"]["state"] == "up"
    sid, ctl, data = boot_on_a(c)
    assert c.server(sid)["OS-EXT-SRV-ATTR:host"] == "host-a"
    wait_runner(c, "host-a", sid)
    out = shell(c, ctl).run("echo written-on-a > /mnt/data/f; sync; cat /mnt/data/f\n",
                            timeout=120)
    assert "written-on-a" in out and "exit=0" in out, out
    assert c.access_rules(data) == ["host-a"]

    # host A fails: its agent dies; its guest, host mounts and virtiofsd stay
    a.kill()
    c.wait_host("host-a", "down", timeout=30)
    assert a.guests() and a.host_mounts() and a.virtiofsd_pids()
    # built-in shares: the storage cannot cut host A off, so the operator fences it first
    r = c.admin.post(f"/v2.1/servers/{sid}/action", json={"evacuate": {}})
    assert r.status_code == 409 and "fence the host yourself" in r.text, r.text
    # (its guest would otherwise go on running the control share's commands beside the new one)
    a.fence()
    host_id = c.services()["host-a"]["id"]
    r = c.admin.put(f"/v2.1/os-services/{host_id}", json={"forced_down": True},
                    headers={"OpenStack-API-Version": "compute 2.53"})
    assert r.status_code == 200, r.text
    t0 = time.monotonic()
    r = c.admin.post(f"/v2.1/servers/{sid}/action", json={"evacuate": {}})
    assert r.status_code == 200, r.text
    # from 2.95 an evacuated server is stopped on its new host
    server = c.wait_status(sid, "SHUTOFF")
    assert server["OS-EXT-SRV-ATTR:host"] == "host-b"
    assert c.access_rules(data) == ["host-b"] and c.access_rules(ctl) == ["host-b"]
    r = c.admin.get(f"/v2.1/servers/{sid}/os-instance-actions")
    evacuate = next(x for x in r.json()["instanceActions"] if x["action"] == "evacuate")
    assert evacuate["message"] is None or "fenced" in evacuate["message"]
    assert c.http.post(f"/v2.1/servers/{sid}/action", json={"os-start": None}).status_code == 202
    c.wait_status(sid, "ACTIVE")
    wait_runner(c, "host-b", sid)
    out = shell(c, ctl).run("cat /mnt/data/f; echo written-on-b >> /mnt/data/f; sync\n",
                            timeout=120)
    print(f"\nevacuate -> the guest on host B reads the share: {time.monotonic() - t0:.1f} s")
    assert "written-on-a" in out and "exit=0" in out, out
    assert b.guests() and b.host_mounts()

    # host A comes back: the guest that moved away goes, with its mounts and virtiofsd
    assert a.guests()  # still there while A is away
    a.start()
    wait_for("host A to remove the moved guest", lambda: not a.guests(), 120, interval=1)
    wait_for("host A's mounts to go", lambda: not a.host_mounts(), 90, interval=1)
    wait_for("host A's virtiofsd to go", lambda: not a.virtiofsd_pids(), 90, interval=1)
    assert c.access_rules(data) == ["host-b"]  # the new host's access is untouched
    out = shell(c, ctl).run("cat /mnt/data/f\n", timeout=60)
    assert "written-on-b" in out, out

    # cold migration back to A with the share (the operator lifts forced_down first)
    r = c.admin.put(f"/v2.1/os-services/{host_id}", json={"forced_down": False},
                    headers={"OpenStack-API-Version": "compute 2.53"})
    assert r.status_code == 200, r.text
    c.wait_host("host-a", "up", timeout=30)
    t0 = time.monotonic()
    r = c.admin.post(f"/v2.1/servers/{sid}/action", json={"migrate": {"host": "host-a"}},
                     headers={"OpenStack-API-Version": "compute 2.56"})
    assert r.status_code == 202, r.text
    server = c.wait_status(sid, "VERIFY_RESIZE")
    assert server["OS-EXT-SRV-ATTR:host"] == "host-a"
    assert c.access_rules(data) == ["host-a"]
    assert not b.guests() and not b.host_mounts() and not b.virtiofsd_pids()
    c.wait_mapping(sid, data, "active")
    wait_runner(c, "host-a", sid)
    out = shell(c, ctl).run("cat /mnt/data/f\n", timeout=120)
    print(f"cold migrate -> the guest on host A reads the share: {time.monotonic() - t0:.1f} s")
    assert "written-on-a" in out and "written-on-b" in out, out
    r = c.admin.post(f"/v2.1/servers/{sid}/action", json={"confirmResize": None})
    assert r.status_code == 204, r.text
    c.wait_status(sid, "ACTIVE")
    r = c.admin.get("/v2.1/os-migrations", params={"instance_uuid": sid},
                    headers={"OpenStack-API-Version": "compute 2.80"})
    assert r.status_code == 200, r.text
    kinds = sorted((m["migration_type"], m["status"]) for m in r.json()["migrations"])
    assert kinds == [("evacuation", "done"), ("migration", "confirmed")], kinds

    assert c.http.delete(f"/v2.1/servers/{sid}").status_code == 204
    wait_for("the server deleted", lambda: c.admin.get(
        f"/v2.1/servers/{sid}").status_code == 404, 120)
    wait_for("nothing left on A", lambda: not a.guests() and not a.host_mounts(), 60)
    assert c.access_rules(data) == [] and c.access_rules(ctl) == []
