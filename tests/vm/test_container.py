"""A server of a container flavor runs as an LXC container; its shares are injected while it
runs, through the compute API, and checked from inside the container as its root (lxc-attach):
- data both ways, hot attach and hot detach, with the time each took;
- read-only as the attacker does it: remount read-write, write, unmount, make a device node;
- seed 000's /dev/manila/<share id> layout and a share's own mount point;
- its metadata as files, saying where each share is;
- escapes: symlinks to / and to host paths, `..`, FIFOs, setuid files, hard links: nothing of
  the host read, nothing outside the share deleted, no host-side hang;
- stop and start: the container goes and comes back with its shares.
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
from pathlib import Path

from harness.process import wait_for
from tests.vm.harness import GUEST_TEST, Serve, console_on_failure, serving

pytestmark = GUEST_TEST
EXT = {"OpenStack-API-Version": "compute 2.97, attachfs 1.3"}
CONFIG = '[containers]\nmount_layout = "dev-manila"\n'
USER_DATA = "#!/bin/sh\necho user-data-ran-in-the-container\n"


def inside(serve: Serve, sid: str, script: str) -> str:
    """`script` run by root in the container; its output and exit status."""
    proc = subprocess.run(["lxc-attach", "-P", str(serve.state_dir / "containers"), "-n",
                           f"attachfs-{sid}", "--", "sh", "-c", script],
                          capture_output=True, text=True, timeout=60, check=False)
    return proc.stdout + proc.stderr + f"exit={proc.returncode}\n"


def mounts(serve: Serve, sid: str) -> dict[str, str]:
    """Mount point -> options, of the shares' mounts in the container."""
    out = inside(serve, sid, "cat /proc/mounts")
    found = {}
    for line in out.splitlines():
        f = line.split()
        if len(f) >= 4 and (f[1].startswith("/dev/manila/") or f[1].startswith("/srv/")):
            found[f[1]] = f[3]
    return found


def test_container_server_with_shares(tmp_path: Path) -> None:
    with serving(config=CONFIG, prefix="lxc-") as serve, console_on_failure(serve):
        _body(serve, tmp_path)


def _body(serve: Serve, tmp_path: Path) -> None:
    marker = tmp_path / "host-secret"
    marker.write_text("host secret\n")
    data, data_dir = serve.new_share("data")
    ro, ro_dir = serve.new_share("ro")
    r = serve.http.put("/v2.1/os-filesystem/work",
                       json={"fs_entry": {"size": 1, "mount_point": "/srv/work"}})
    assert r.status_code == 201, r.text
    work = str(r.json()["fs_entry"]["id"])
    r = serve.http.post("/v2.1/servers", json={"server": {
        "name": "box", "flavorRef": "c1.small", "imageRef": "debian-busybox",
        "user_data": base64.b64encode(USER_DATA.encode()).decode()}})
    assert r.status_code == 202, r.text
    sid = str(r.json()["server"]["id"])
    t0 = time.monotonic()
    serve.wait_status(sid, "ACTIVE")
    print(f"\ncontainer server ACTIVE in {time.monotonic() - t0:.2f} s")
    serve.wait_console(sid, "user-data-ran-in-the-container", 30)

    # the agent registered its host: one compute service, up, that runs containers
    admin = {"X-Auth-Token": "admin:admin", "OpenStack-API-Version": "compute 2.53"}
    services = serve.http.get("/v2.1/os-services", headers=admin).json()["services"]
    assert [(s["binary"], s["state"], s["status"]) for s in services] == [
        ("nova-compute", "up", "enabled")]
    (hyp,) = serve.http.get("/v2.1/os-hypervisors/detail", headers=admin).json()["hypervisors"]
    assert hyp["hypervisor_version"] >= 7_000_000 and hyp["running_vms"] == 1, hyp

    # a VM transport on a container: 409, nothing recorded
    r = serve.http.post(f"/v2.1/servers/{sid}/shares", headers=EXT,
                        json={"share": {"share_id": data, "transport": "virtiofs"}})
    assert r.status_code == 409 and "bind" in r.text, r.text
    assert serve.mapping(sid, data) is None

    # hot attach: POST -> visible in the container
    t1 = time.monotonic()
    r = serve.http.post(f"/v2.1/servers/{sid}/shares", headers=EXT,
                        json={"share": {"share_id": data, "tag": "data"}})
    assert r.status_code == 201 and r.json()["share"]["transport"] == "bind", r.text
    target = f"/dev/manila/{data}"
    wait_for("the share in the container", lambda: target in mounts(serve, sid), 30,
             interval=0.05)
    print(f"hot attach POST -> mounted in the container: {time.monotonic() - t1:.2f} s")
    serve.wait_mapping(sid, data, "active")
    (data_dir / "from-host").write_text("host\n")
    out = inside(serve, sid, f"cat {target}/from-host; echo container > {target}/from-box")
    assert "host" in out and out.endswith("exit=0\n"), out
    assert (data_dir / "from-box").read_text() == "container\n"
    assert "nosuid" in mounts(serve, sid)[target] and "nodev" in mounts(serve, sid)[target]

    # read-only, and the share's own mount point
    for share, tag, ro_flag in ((ro, "ro", True), (work, "work", False)):
        r = serve.http.post(f"/v2.1/servers/{sid}/shares", headers=EXT,
                            json={"share": {"share_id": share, "tag": tag,
                                            "read_only": ro_flag}})
        assert r.status_code == 201, r.text
        serve.wait_mapping(sid, share, "active")
    assert "/srv/work" in mounts(serve, sid)
    info = serve.http.get(f"/v2.1/servers/{sid}/shares/{ro}/mount_info").json()["mount_info"]
    assert info == {"transport": "bind", "fstype": "bind", "source": "host",
                    "options": "ro,nosuid,nodev", "target": f"/dev/manila/{ro}",
                    "command": f"none: the host mounts it at /dev/manila/{ro}"}
    (ro_dir / "seen").write_text("readable\n")
    rot = f"/dev/manila/{ro}"
    out = inside(serve, sid, f"cat {rot}/seen; mount -o remount,rw {rot}; echo remount=$?; "
                             f"echo x > {rot}/written; echo write=$?; umount {rot}; "
                             f"echo umount=$?; mknod /tmp/mem c 1 1; echo mknod=$?; "
                             f"mount -t tmpfs none /tmp; echo mount=$?")
    print(f"read-only, as root in the container: {out!r}")
    assert "readable" in out
    for op in ("remount", "write", "umount", "mknod", "mount"):
        assert f"{op}=0" not in out, out
    assert not (ro_dir / "written").exists()
    assert "ro" in mounts(serve, sid)[rot].split(",")

    # the metadata the container sees says where each share is
    meta = json.loads(inside(serve, sid, "cat /run/attachfs/metadata/attachfs/meta_data.json")
                      .rsplit("exit=", 1)[0])
    where = {d["share_id"]: d["attachfs:target"] for d in meta["devices"]}
    assert where == {data: f"/dev/manila/{data}", ro: rot, work: "/srv/work"}, where

    # escapes from inside: the container resolves its links in its own root
    out = inside(serve, sid, f"cd {target} && ln -s / to-root && ln -s {marker} to-host && "
                             f"mkfifo fifo && echo x > suid && chmod 4755 suid && "
                             f"(ln /etc/passwd hard-out; echo hardlink-out=$?); "
                             f"cat to-host; echo host-file=$?; cat ../../../../{marker}; "
                             f"echo dotdot=$?")
    assert "host secret" not in out, out
    assert "host-file=0" not in out and "dotdot=0" not in out and "hardlink-out=0" not in out
    t2 = time.monotonic()
    assert serve.http.get("/v2.1/os-filesystem/data").status_code == 200
    assert time.monotonic() - t2 < 5  # the FIFO is neither opened nor the links followed

    # hot detach: DELETE -> gone from the container, the others stay
    t3 = time.monotonic()
    assert serve.http.delete(f"/v2.1/servers/{sid}/shares/{work}").status_code == 200
    wait_for("the share out of the container", lambda: "/srv/work" not in mounts(serve, sid),
             30, interval=0.05)
    print(f"hot detach DELETE -> gone from the container: {time.monotonic() - t3:.2f} s")
    wait_for("the attachment gone", lambda: serve.mapping(sid, work) is None, 30)
    assert set(mounts(serve, sid)) == {target, rot}

    # stop: the container goes; start: it comes back with its shares (read-only still)
    assert serve.action(sid, {"os-stop": None}).status_code == 202
    serve.wait_status(sid, "SHUTOFF", 60)
    assert not (serve.state_dir / "containers" / f"attachfs-{sid}").exists()
    assert serve.action(sid, {"os-start": None}).status_code == 202
    serve.wait_status(sid, "ACTIVE", 60)
    wait_for("both shares back", lambda: set(mounts(serve, sid)) == {target, rot} or None, 30)
    assert "ro" in mounts(serve, sid)[rot].split(",")
    assert (data_dir / "from-box").read_text() == "container\n"

    assert serve.http.delete(f"/v2.1/servers/{sid}").status_code == 204
    serve.wait_gone(sid, 60)
    for name in ("data", "ro", "work"):
        assert serve.http.delete(f"/v2.1/os-filesystem/{name}").status_code == 202
    assert marker.read_text() == "host secret\n"
    assert serve.host_mounts() == []
    assert list((serve.state_dir / "containers").iterdir()) == []
