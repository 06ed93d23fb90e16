"""An NFS export from a real NFS-Ganesha, into a running guest through this host (whose kernel
has no NFS client): declared as a static share, attached with the compute API, mounted by the
agent with attachfs's FUSE client (storage/nfs_fuse.py) and handed to the guest over virtio-fs.
Checked from inside the guest and against the export's own directory on the server side (never
through the agent's mount); then an export nobody serves: `error` naming the server, nothing
left, and a retry that attaches once it is served; and on detach: no FUSE client, no mount."""

from __future__ import annotations

import base64
import uuid
from pathlib import Path

from harness.ganesha import GaneshaServer
from harness.process import free_port, processes_running, wait_for
from tests.nfs_fixture import NFS_TEST
from tests.vm.harness import GUEST_TEST, serving

pytestmark = [*NFS_TEST, *GUEST_TEST]
SHARE, DEAD = str(uuid.uuid4()), str(uuid.uuid4())
RETRY = {"OpenStack-API-Version": "compute 2.97, attachfs 1.2"}

# Answers `ping` in every mounted share with `pong` holding the ping and what it read from
# `from-server.txt`; prints df of /mnt/nfs once it is mounted.
GUEST_LOOP = r"""#!/bin/sh
(
  while true; do
    if [ ! -f /tmp/df-done ] && grep -q " /mnt/nfs " /proc/mounts; then
      echo "df-nfs: $(df -k /mnt/nfs | tail -1)"; touch /tmp/df-done
    fi
    for p in /mnt/*/ping; do
      [ -f "$p" ] || continue
      d=${p%/ping}
      v=$(cat "$p")
      echo "$v $(cat $d/from-server.txt 2>/dev/null)" > "$d/pong.tmp" && mv "$d/pong.tmp" "$d/pong"
      rm -f "$p"
    done
    sleep 0.3
  done
) &
echo "ping loop started"
"""


def fuse_clients(under: Path) -> list[int]:
    """The NFS FUSE client processes whose mount is below `under`."""
    return processes_running("attachfs.storage.nfs_fuse", under)


def ping(export: Path) -> None:
    token = uuid.uuid4().hex
    (export / "ping").write_text(token + "\n")
    wait_for("the guest's pong on the NFS server",
             lambda: (export / "pong").exists()
             and (export / "pong").read_text().split() == [token, "written-on-the-server"], 90)


def test_nfs_export_in_a_running_guest(ganesha_server: GaneshaServer) -> None:
    export = ganesha_server.export_dir
    (export / "from-server.txt").write_text("written-on-the-server\n")
    dead_port = free_port()  # nothing listens there (yet)
    config = ("[storage]\nmount_timeout = 5.0\n"
              f'[[static_shares]]\nid = "{SHARE}"\nname = "ganesha"\n'
              f'export = "{ganesha_server.export_location}"\n'
              f'[[static_shares]]\nid = "{DEAD}"\nname = "nobody-serves-it"\n'
              f'export = "nfs://127.0.0.1:{dead_port}/export"\n')
    with serving(config=config, prefix="nfs-") as serve:
        user_data = base64.b64encode(GUEST_LOOP.encode()).decode()
        r = serve.http.post("/v2.1/servers", json={"server": {
            "name": "nfsvm", "flavorRef": "2", "imageRef": "debian-busybox",
            "user_data": user_data}})
        assert r.status_code == 202, r.text
        sid = str(r.json()["server"]["id"])
        serve.wait_status(sid, "ACTIVE")
        serve.wait_console(sid, "ping loop started")

        r = serve.http.post(f"/v2.1/servers/{sid}/shares",
                            json={"share": {"share_id": SHARE, "tag": "nfs"}})
        assert r.status_code == 201, r.text
        serve.wait_mapping(sid, SHARE, "active")
        assert len(fuse_clients(serve.state_dir)) == 1
        # guest -> virtio-fs -> FUSE client -> NFS -> the server's directory, and back
        ping(export)
        console = serve.wait_console(sid, "df-nfs:")
        line = next(x for x in console.splitlines() if x.startswith("df-nfs:"))
        assert int(line.split()[2]) > 0, line  # the export's filesystem, not an empty FUSE

        # An export nobody serves: `error` naming the server, nothing mounted, no client left
        r = serve.http.post(f"/v2.1/servers/{sid}/shares",
                            json={"share": {"share_id": DEAD, "tag": "dead"}})
        assert r.status_code == 201, r.text
        serve.wait_mapping(sid, DEAD, "error")
        server = serve.server(sid)
        assert server is not None
        (fault,) = [a["fault"] for a in server["os-extended-shares:shares_attached"]
                    if a["share_id"] == DEAD]
        assert f"127.0.0.1:{dead_port}" in fault, fault
        assert not (serve.mount_root / DEAD).exists()
        assert len(fuse_clients(serve.state_dir)) == 1  # only the working share's

        # ...served now (a second Ganesha on that port): a retry attaches
        with GaneshaServer(export.parent.parent / "second", port=dead_port) as second:
            (second.export_dir / "from-server.txt").write_text("written-on-the-server\n")
            r = serve.http.post(f"/v2.1/servers/{sid}/shares", headers=RETRY,
                                json={"share": {"share_id": DEAD, "tag": "dead",
                                                "retry": True}})
            assert r.status_code == 201, r.text
            serve.wait_mapping(sid, DEAD, "active")
            ping(second.export_dir)
            assert serve.http.delete(f"/v2.1/servers/{sid}/shares/{DEAD}").status_code == 200
            wait_for("the second attachment gone", lambda: serve.mapping(sid, DEAD) is None, 90)

        assert serve.http.delete(f"/v2.1/servers/{sid}/shares/{SHARE}").status_code == 200
        wait_for("the attachment gone", lambda: serve.mapping(sid, SHARE) is None, 90)
        assert serve.host_mounts() == []
        wait_for("no FUSE client left", lambda: fuse_clients(serve.state_dir) == [], 30)
        assert not (serve.state_dir / "nfs" / SHARE).exists()
        assert serve.http.delete(f"/v2.1/servers/{sid}").status_code == 204
        serve.wait_gone(sid)
