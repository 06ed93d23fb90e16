"""Issue 10's headline, end to end through every real layer: a CEPHFS share made by Manila's
real CephFS driver on a real Ceph, attached with the compute API to a running guest of a real
`attachfs serve` (Manila provider): the agent gets a locked cephx rule for its host, mounts the
share with ceph-fuse and only that key, and hands it to the guest over virtio-fs. Checked from
inside the guest (its console and files), against Ceph itself through a separate admin mount
(never the agent's host mount), and on detach: the rule, the cephx ID, ceph-fuse and every
host mount gone."""

from __future__ import annotations

import base64
import uuid
from pathlib import Path

import pytest

from harness.ceph import CephCluster
from harness.process import wait_for
from tests.ceph_fixture import CEPH_TEST
from tests.manila.conftest import CEPHFS_TYPE, Manila
from tests.vm.harness import GUEST_TEST, serving

pytestmark = [pytest.mark.manila, *CEPH_TEST, *GUEST_TEST,
              pytest.mark.filterwarnings("ignore:The 'service_type' parameter is unnecesary")]
HOST = "cephvm"
TAG = "ceph"

# Answers `ping` in every mounted share with a `pong` holding what it read from `from-ceph.txt`;
# prints df of the share once it is mounted.
GUEST_LOOP = r"""#!/bin/sh
(
  while true; do
    if [ ! -f /tmp/df-done ] && grep -q " /mnt/ceph " /proc/mounts; then
      echo "df-ceph: $(df -k /mnt/ceph | tail -1)"; touch /tmp/df-done
    fi
    for p in /mnt/*/ping; do
      [ -f "$p" ] || continue
      d=${p%/ping}
      v=$(cat "$p")
      echo "$v $(cat $d/from-ceph.txt 2>/dev/null)" > "$d/pong.tmp" && mv "$d/pong.tmp" "$d/pong"
      rm -f "$p"
      echo "pong $v from $d"
    done
    sleep 0.3
  done
) &
echo "ping loop started"
"""


def ceph_fuse_pids(under: Path) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if argv and argv[0].endswith("ceph-fuse") and any(a.startswith(str(under)) for a in argv):
            pids.append(int(proc.name))
    return pids


def test_cephfs_share_from_manila_in_a_running_guest(manila_cephfs: Manila,
                                                      ceph_cluster: CephCluster,
                                                      tmp_path: Path) -> None:
    share = manila_cephfs.create_share("attachfs-vm-cephfs", "CEPHFS", share_type=CEPHFS_TYPE)
    r = manila_cephfs.request("GET", f"/shares/{share['id']}/export_locations")
    export = r.json()["export_locations"][0]["path"]
    path = export.rsplit(":", 1)[1]
    config = (f'[storage]\nprovider = "manila"\n'
              f'[manila]\nauth_type = "none"\nendpoint_override = "{manila_cephfs.endpoint}"\n'
              f'access_timeout = 30.0\n[agent]\nhost = "{HOST}"\n')
    with serving(config=config, prefix="ceph-") as serve:
        user_data = base64.b64encode(GUEST_LOOP.encode()).decode()
        r = serve.http.post("/v2.1/servers", json={"server": {
            "name": "cephvm", "flavorRef": "2", "imageRef": "debian-busybox",
            "user_data": user_data}})
        assert r.status_code == 202, r.text
        sid = str(r.json()["server"]["id"])
        serve.wait_status(sid, "ACTIVE")
        serve.wait_console(sid, "ping loop started")

        r = serve.http.post(f"/v2.1/servers/{sid}/shares",
                            json={"share": {"share_id": share["id"], "tag": TAG}})
        assert r.status_code == 201, r.text
        serve.wait_mapping(sid, share["id"], "active", timeout=120)
        (rule,) = manila_cephfs.rules(share["id"])
        assert (rule["access_type"], rule["access_to"], rule["state"]) == (
            "cephx", f"attachfs-{HOST}", "active")
        assert ceph_cluster.auth_exists(f"attachfs-{HOST}")
        assert len(ceph_fuse_pids(serve.state_dir)) == 1

        # Ceph itself, through an admin mount of the share's path: what the guest reads and
        # writes travels guest -> virtio-fs -> ceph-fuse -> Ceph and back
        admin = tmp_path / "admin"
        with ceph_cluster.fuse_mount(path, admin, "admin", ceph_cluster.admin_key):
            (admin / "from-ceph.txt").write_text("written-in-ceph\n")
            token = uuid.uuid4().hex
            (admin / "ping").write_text(token + "\n")
            wait_for("the guest's pong in Ceph",
                     lambda: (admin / "pong").exists()
                     and (admin / "pong").read_text().split() == [token, "written-in-ceph"],
                     90)
        console = serve.wait_console(sid, "df-ceph:")
        line = next(x for x in console.splitlines() if x.startswith("df-ceph:"))
        assert line.split()[2] == str(1024 * 1024), line  # the share's 1 GiB, in 1K blocks

        # detach: the guest lets go, the host unmounts, the rule and the cephx ID go
        assert serve.http.delete(f"/v2.1/servers/{sid}/shares/{share['id']}").status_code == 200
        wait_for("the attachment gone", lambda: serve.mapping(sid, share["id"]) is None, 120)
        wait_for("the rule gone in Manila", lambda: manila_cephfs.rules(share["id"]) == [], 60)
        wait_for("the cephx ID gone in Ceph",
                 lambda: not ceph_cluster.auth_exists(f"attachfs-{HOST}"), 60)
        assert serve.host_mounts() == []
        wait_for("ceph-fuse gone", lambda: ceph_fuse_pids(serve.state_dir) == [], 30)
        assert serve.http.delete(f"/v2.1/servers/{sid}").status_code == 204
        serve.wait_gone(sid)
