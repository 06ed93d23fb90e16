"""Fencing on the storage side, for real (issue 12): two hosts with their own Ceph IDs
(attachfs-host-a, attachfs-host-b), one PostgreSQL, Manila's real CephFS driver on a real Ceph.
A guest on host A writes through A's ceph-fuse mount; host A fails (its agent is killed, its
guest and ceph-fuse go on running, as on a host cut off from the cloud). The admin evacuates
without any operator step: host B revokes A's rule in Manila first, whose CephFS driver
deauthorizes and evicts A's Ceph ID, so A's still-running ceph-fuse can no longer write; then
the server comes back on B, whose guest answers through Ceph with the data intact. Host A
comes back and removes the moved guest, its mount and its ceph-fuse."""

from __future__ import annotations

import base64
import contextlib
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.ceph import CephCluster
from harness.many_hosts import Cloud, cloud
from harness.process import processes_running, wait_for
from tests.ceph_fixture import CEPH_TEST
from tests.manila.conftest import CEPHFS_TYPE, Manila
from tests.manila.test_cephfs_guest import GUEST_LOOP
from tests.vm.harness import GUEST_TEST, TEST_STATE

pytestmark = [pytest.mark.manila, *CEPH_TEST, *GUEST_TEST,
              pytest.mark.filterwarnings("ignore:The 'service_type' parameter is unnecesary")]


@pytest.fixture
def admin_mount(ceph_cluster: CephCluster, tmp_path: Path,
                manila_cephfs: Manila) -> Iterator[tuple[Path, dict[str, object]]]:
    share = manila_cephfs.create_share(f"fence-{uuid.uuid4().hex[:6]}", "CEPHFS",
                                       share_type=CEPHFS_TYPE)
    r = manila_cephfs.request("GET", f"/shares/{share['id']}/export_locations")
    path = r.json()["export_locations"][0]["path"].rsplit(":", 1)[1]
    mnt = tmp_path / "admin"
    try:
        with ceph_cluster.fuse_mount(path, mnt, "admin", ceph_cluster.admin_key):
            (mnt / "from-ceph.txt").write_text("written-in-ceph\n")
            yield mnt, share
    finally:  # the tests after this one on the same Manila and Ceph get their space back
        manila_cephfs.request("DELETE", f"/shares/{share['id']}")


def ping(admin: Path, name: str, timeout: float = 90) -> bool:
    """Through Ceph: the guest named `name` answers with what it read from the share."""
    token = uuid.uuid4().hex
    pong = admin / f"pong-{name}"
    pong.unlink(missing_ok=True)
    (admin / f"ping-{name}").write_text(token + "\n")
    try:
        wait_for(f"pong {token}", lambda: pong.exists()
                 and pong.read_text().split() == [token, "written-in-ceph"], timeout)
    except AssertionError:
        return False
    return True


def can_write(mount: Path) -> bool:
    """Whether a write through a host's ceph-fuse mount reaches the share (in a child with a
    deadline: a client Ceph has cut off may block rather than fail)."""
    probe = mount / f"probe-{uuid.uuid4().hex[:6]}"
    r = subprocess.run(["timeout", "10", "sh", "-c", f'echo x > "{probe}" && sync "{probe}"'],
                       capture_output=True, timeout=30)
    return r.returncode == 0


def test_a_failed_host_is_cut_off_by_ceph_before_its_server_comes_back(
        manila_cephfs: Manila, ceph_cluster: CephCluster,
        admin_mount: tuple[Path, dict[str, object]]) -> None:
    admin, share = admin_mount
    settings: dict[str, object] = {
        "storage.provider": "manila", "storage.mount_timeout": 5.0,
        "manila.auth_type": "none", "manila.endpoint_override": manila_cephfs.endpoint,
        "manila.access_timeout": 30.0}
    base = TEST_STATE / f"fence-{time.monotonic_ns() % 10**8}"
    with cloud(base, settings=settings, netns=False) as c:
        try:
            _body(c, manila_cephfs, ceph_cluster, admin, str(share["id"]))
        except BaseException:
            for log in sorted(base.rglob("*.log")):
                with contextlib.suppress(OSError):
                    print(f"---- {log}\n{log.read_text(errors='replace')[-3000:]}")
            raise


def _body(c: Cloud, manila: Manila, ceph: CephCluster, admin: Path, share: str) -> None:
    a, b = c.hosts["host-a"], c.hosts["host-b"]
    user_data = base64.b64encode(GUEST_LOOP.replace("NAME", "mover").encode()).decode()
    r = c.http.post("/v2.1/servers", json={"server": {
        "name": "mover", "flavorRef": "2", "imageRef": "debian-busybox",
        "user_data": user_data}})
    assert r.status_code == 202, r.text
    sid = str(r.json()["server"]["id"])
    c.wait_status(sid, "ACTIVE")
    assert c.server(sid)["OS-EXT-SRV-ATTR:host"] == "host-a"
    r = c.http.post(f"/v2.1/servers/{sid}/shares", json={"share": {"share_id": share,
                                                                   "tag": "ceph"}})
    assert r.status_code == 201, r.text
    c.wait_mapping(sid, share, "active")
    assert ping(admin, "mover")  # guest on A -> virtio-fs -> A's ceph-fuse -> Ceph
    (rule,) = manila.rules(share)
    assert rule["access_to"] == "attachfs-host-a"
    (a_mount,) = a.host_mounts()
    assert can_write(a_mount) and processes_running("ceph-fuse", a.state)

    # host A fails; its guest and its ceph-fuse go on
    a.kill()
    c.wait_host("host-a", "down", timeout=30)
    t0 = time.monotonic()
    r = c.admin.post(f"/v2.1/servers/{sid}/action", json={"evacuate": {}},
                     headers={"OpenStack-API-Version": "compute 2.94"})  # keeps it running
    assert r.status_code == 200, r.text
    # the fence: A's rule and Ceph ID are gone, and A's live mount can no longer write
    wait_for("A's rule gone", lambda: all(x["access_to"] != "attachfs-host-a"
                                           for x in manila.rules(share)), 90)
    wait_for("A's Ceph ID gone", lambda: not ceph.auth_exists("attachfs-host-a"), 60)
    wait_for("A's ceph-fuse cut off", lambda: not can_write(a_mount), 60)
    fenced = time.monotonic() - t0
    c.wait_status(sid, "ACTIVE")
    assert c.server(sid)["OS-EXT-SRV-ATTR:host"] == "host-b"
    (rule,) = manila.rules(share)
    assert (rule["access_to"], rule["state"]) == ("attachfs-host-b", "active")
    assert b.host_mounts() and processes_running("ceph-fuse", b.state)
    assert ping(admin, "mover", timeout=240)  # the guest on B reads the share's data
    print(f"\nevacuate: A fenced {fenced:.1f} s, the guest on B answers through Ceph "
          f"{time.monotonic() - t0:.1f} s after the request")

    # host A comes back: the moved guest, its mount and its ceph-fuse go
    a.start()
    wait_for("A's guest gone", lambda: not a.guests(), 120, interval=1)
    wait_for("A's mounts gone", lambda: not a.host_mounts(), 90, interval=1)
    wait_for("A's ceph-fuse gone", lambda: not processes_running("ceph-fuse", a.state), 90)
    assert ping(admin, "mover")  # B's guest is untouched
    assert [x["access_to"] for x in manila.rules(share)] == ["attachfs-host-b"]

    assert c.http.delete(f"/v2.1/servers/{sid}").status_code == 204
    wait_for("the rule gone", lambda: manila.rules(share) == [], 120)
