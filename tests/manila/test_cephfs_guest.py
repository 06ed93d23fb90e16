"""Issue 10's headline, end to end through every real layer: a CEPHFS share made by Manila's
real CephFS driver on a real Ceph, attached with the compute API to a running guest of a real
`attachfs serve` (Manila provider): the agent gets a locked cephx rule for its host, mounts the
share with ceph-fuse and only that key, and hands it to the guest over virtio-fs. Checked from
inside the guest (its console and files), against Ceph itself through a separate admin mount
(never the agent's host mount), and on detach: the rule, the cephx ID, ceph-fuse and every
host mount gone. Then, on the same service and guests (in file order): two servers on one host
sharing the share's one mount, the agent killed at the steps where a CephFS attachment has a
host mount and no device or a mount and no rule, and the monitor stopped during an attach."""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from harness.ceph import CephCluster
from harness.process import processes_running, wait_for
from tests.ceph_fixture import CEPH_TEST
from tests.manila.conftest import CEPHFS_TYPE, Manila
from tests.vm.harness import GUEST_TEST, Serve, crash_after, serving

pytestmark = [pytest.mark.manila, *CEPH_TEST, *GUEST_TEST,
              pytest.mark.filterwarnings("ignore:The 'service_type' parameter is unnecesary")]
HOST = "cephvm"
AUTH_ID = f"attachfs-{HOST}"
TAG = "ceph"
RETRY = {"OpenStack-API-Version": "compute 2.97, attachfs 1.2"}

# Answers `ping-NAME` in every mounted share with `pong-NAME` holding what it read from
# `from-ceph.txt` (NAME: this guest's, so that two guests on one share answer apart); prints df
# of the share once it is mounted.
GUEST_LOOP = r"""#!/bin/sh
(
  while true; do
    if [ ! -f /tmp/df-done ] && grep -q " /mnt/ceph " /proc/mounts; then
      echo "df-ceph: $(df -k /mnt/ceph | tail -1)"; touch /tmp/df-done
    fi
    for p in /mnt/*/ping-NAME; do
      [ -f "$p" ] || continue
      d=${p%/ping-NAME}
      v=$(cat "$p")
      echo "$v $(cat $d/from-ceph.txt 2>/dev/null)" > "$d/pong.tmp" && mv "$d/pong.tmp" "$d/pong-NAME"
      rm -f "$p"
      echo "pong $v from $d"
    done
    sleep 0.3
  done
) &
echo "ping loop started"
"""


def ceph_fuse_pids(under: Path) -> list[int]:
    return processes_running("ceph-fuse", under)


@dataclass
class World:
    serve: Serve
    manila: Manila
    ceph: CephCluster
    share: dict[str, Any]
    path: str  # the share's path in CephFS
    sid: str  # the first guest
    names: dict[str, str]  # server id -> the name its guest loop answers to

    def attach(self, sid: str, **extra: Any) -> None:
        r = self.serve.http.post(f"/v2.1/servers/{sid}/shares", headers=RETRY if extra else {},
                                 json={"share": {"share_id": self.share["id"], "tag": TAG,
                                                 **extra}})
        assert r.status_code == 201, r.text

    def detach(self, sid: str) -> None:
        r = self.serve.http.delete(f"/v2.1/servers/{sid}/shares/{self.share['id']}")
        assert r.status_code == 200, r.text

    def ping(self, admin: Path, sid: str) -> None:
        """Through Ceph (an admin mount): the guest answers a ping in the share."""
        token, name = uuid.uuid4().hex, self.names[sid]
        pong = admin / f"pong-{name}"
        (admin / f"ping-{name}").write_text(token + "\n")
        try:
            wait_for(f"the guest's pong in Ceph ({token})",
                     lambda: pong.exists()
                     and pong.read_text().split() == [token, "written-in-ceph"], 90)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- console:\n{self.serve.console(sid)[-2000:]}\n"
                                 f"--- agent:\n{self.serve.tail(4000)}") from exc

    def boot(self, name: str) -> str:
        user_data = base64.b64encode(GUEST_LOOP.replace("NAME", name).encode()).decode()
        r = self.serve.http.post("/v2.1/servers", json={"server": {
            "name": name, "flavorRef": "2", "imageRef": "debian-busybox",
            "user_data": user_data}})
        assert r.status_code == 202, r.text
        sid = str(r.json()["server"]["id"])
        self.names[sid] = name
        self.serve.wait_status(sid, "ACTIVE")
        self.serve.wait_console(sid, "ping loop started")
        return sid

    def nothing_left(self) -> None:
        """No attachment of the share anywhere: no rule, no cephx ID, no ceph-fuse, no mount."""
        wait_for("the rule gone in Manila", lambda: self.manila.rules(self.share["id"]) == [], 60)
        wait_for("the cephx ID gone in Ceph", lambda: not self.ceph.auth_exists(AUTH_ID), 60)
        wait_for("no host mount", lambda: self.serve.host_mounts() == [], 30)
        wait_for("ceph-fuse gone", lambda: ceph_fuse_pids(self.serve.state_dir) == [], 30)
        assert not (self.serve.state_dir / "cephfs" / self.share["id"]).exists()

    def crash(self, point: str, request: Callable[[], None], restart: bool = True) -> None:
        """`attachfs serve` exits (SIGKILL's code) right after `point`; started again."""
        crash_after(self.serve, point, request)
        if restart:
            self.serve.start()



@pytest.fixture(scope="module")
def world(manila_cephfs: Manila, ceph_cluster: CephCluster) -> Iterator[World]:
    share = manila_cephfs.create_share("attachfs-vm-cephfs", "CEPHFS", share_type=CEPHFS_TYPE)
    r = manila_cephfs.request("GET", f"/shares/{share['id']}/export_locations")
    path = r.json()["export_locations"][0]["path"].rsplit(":", 1)[1]
    # mount_timeout 5: a stopped monitor is an `error` within seconds, not half a minute
    config = (f'[storage]\nprovider = "manila"\nmount_timeout = 5.0\n'
              f'[manila]\nauth_type = "none"\nendpoint_override = "{manila_cephfs.endpoint}"\n'
              f'access_timeout = 30.0\n[agent]\nhost = "{HOST}"\ndetach_timeout = 5.0\n')
    with serving(config=config, prefix="ceph-") as serve:
        w = World(serve, manila_cephfs, ceph_cluster, share, path, "", {})
        w.sid = w.boot("cephvm")
        yield w


@pytest.fixture
def admin(world: World, tmp_path: Path) -> Iterator[Path]:
    """The share's path through a separate admin ceph-fuse mount: Ceph itself, not the agent's."""
    mnt = tmp_path / "admin"
    with world.ceph.fuse_mount(world.path, mnt, "admin", world.ceph.admin_key):
        if not (mnt / "from-ceph.txt").exists():
            (mnt / "from-ceph.txt").write_text("written-in-ceph\n")
        yield mnt


def test_cephfs_share_from_manila_in_a_running_guest(world: World, admin: Path) -> None:
    serve, sid, share = world.serve, world.sid, world.share
    world.attach(sid)
    serve.wait_mapping(sid, share["id"], "active", timeout=120)
    (rule,) = world.manila.rules(share["id"])
    assert (rule["access_type"], rule["access_to"], rule["state"]) == ("cephx", AUTH_ID, "active")
    assert world.ceph.auth_exists(AUTH_ID)
    assert len(ceph_fuse_pids(serve.state_dir)) == 1

    # what the guest reads and writes travels guest -> virtio-fs -> ceph-fuse -> Ceph and back
    world.ping(admin, sid)
    console = serve.wait_console(sid, "df-ceph:")
    line = next(x for x in console.splitlines() if x.startswith("df-ceph:"))
    assert line.split()[2] == str(1024 * 1024), line  # the share's 1 GiB, in 1K blocks

    # detach: the guest lets go, the host unmounts, the rule and the cephx ID go
    world.detach(sid)
    wait_for("the attachment gone", lambda: serve.mapping(sid, share["id"]) is None, 120)
    world.nothing_left()


def test_two_servers_on_one_host_share_one_mount(world: World, admin: Path) -> None:
    serve, share = world.serve, world.share
    other = world.boot("cephvm-2")
    for sid in (world.sid, other):
        world.attach(sid)
    for sid in (world.sid, other):
        serve.wait_mapping(sid, share["id"], "active", timeout=120)
    assert len(world.manila.rules(share["id"])) == 1  # one rule for the host
    assert len(ceph_fuse_pids(serve.state_dir)) == 1  # one ceph-fuse mount for both guests
    world.ping(admin, other)

    # one goes: the other keeps its access, its mount and its data path
    world.detach(other)
    wait_for("the attachment gone", lambda: serve.mapping(other, share["id"]) is None, 120)
    assert [r["state"] for r in world.manila.rules(share["id"])] == ["active"]
    assert world.ceph.auth_exists(AUTH_ID) and len(ceph_fuse_pids(serve.state_dir)) == 1
    world.ping(admin, world.sid)
    assert serve.http.delete(f"/v2.1/servers/{other}").status_code == 204
    serve.wait_gone(other)
    world.ping(admin, world.sid)  # the other server's deletion took nothing of ours
    world.detach(world.sid)
    wait_for("the attachment gone", lambda: serve.mapping(world.sid, share["id"]) is None, 120)
    world.nothing_left()


@pytest.mark.parametrize("attach_at,detach_at", [("mount", "unmount"),
                                                 ("plug", "revoke_access")])
def test_agent_killed_between_mount_and_device_and_between_unmount_and_revoke(
        world: World, admin: Path, attach_at: str, detach_at: str) -> None:
    """hot_attach:mount dies with the ceph-fuse mount made and no device; hot_detach:unmount
    with the mount gone and the rule (and cephx ID) still there; plug and revoke_access one
    step later. Each converges: attached and working, or gone with nothing left."""
    serve, sid, share = world.serve, world.sid, world.share
    started = time.monotonic()
    world.crash(f"hot_attach:{attach_at}", lambda: world.attach(sid))
    serve.wait_mapping(sid, share["id"], "active", timeout=120)
    world.ping(admin, sid)
    assert len(ceph_fuse_pids(serve.state_dir)) == 1
    world.crash(f"hot_detach:{detach_at}", lambda: world.detach(sid))
    wait_for("the attachment gone", lambda: serve.mapping(sid, share["id"]) is None, 120)
    world.nothing_left()
    print(f"\ncephfs crash at hot_attach:{attach_at} and hot_detach:{detach_at}: converged in "
          f"{time.monotonic() - started:.1f} s")


def test_monitor_stopped_during_an_attach_then_retry(world: World, admin: Path) -> None:
    """The rule is granted, then the monitor goes (the agent is killed after the grant and the
    monitor stopped before it comes back): the mount fails naming the monitors, nothing is
    left mounted; with the monitor back, a retry attaches."""
    serve, sid, share = world.serve, world.sid, world.share
    world.crash("hot_attach:grant_access", lambda: world.attach(sid), restart=False)
    with world.ceph.monitor_stopped():
        serve.start()
        m = serve.wait_mapping(sid, share["id"], "error", timeout=120)
        fault = serve.server(sid)["os-extended-shares:shares_attached"]  # type: ignore[index]
        (mine,) = [a for a in fault if a["share_id"] == share["id"]]
        assert f"from monitors {world.ceph.mon_host}" in mine["fault"], mine
        assert m["status"] == "error" and serve.host_mounts() == []
        assert ceph_fuse_pids(serve.state_dir) == []
    world.attach(sid, retry=True)
    serve.wait_mapping(sid, share["id"], "active", timeout=120)
    world.ping(admin, sid)
    world.detach(sid)
    wait_for("the attachment gone", lambda: serve.mapping(sid, share["id"]) is None, 120)
    world.nothing_left()
