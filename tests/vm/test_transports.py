"""Transports, proven from inside one real guest: built-in shares over virtio-fs and over 9p,
each read-write and read-only, attached through the compute API (attachfs 1.3's `transport`).

The guest runs what the host writes to its control share (`ctl`, virtio-fs) as root and writes
the output back: every check below is a command run in the guest, and what landed on the host is
looked at in the share's own directory. Covered:
- data both ways on each path, and `mount_info` matching what the guest really mounted;
- read-only as the attacker does it: root in the guest remounts read-write and writes;
- escapes on both paths: symlinks to / and to host paths, `..`, device nodes, FIFOs, setuid
  files, hard links; the host reads nothing through them, and a hostile share is measured,
  detached and deleted without touching anything outside it and without hanging;
- 9p cannot be hot-plugged: attach and detach on the running server are 409s, nothing changes.
"""

from __future__ import annotations

import os
import stat
import time
import uuid
from pathlib import Path

from attachfs.storage import mountinfo
from harness.guest_shell import GuestShell, user_data
from tests.vm.harness import GUEST_TEST, Serve, console_on_failure, serving, wait_for

pytestmark = GUEST_TEST
EXT = {"OpenStack-API-Version": "compute 2.97, attachfs 1.3"}

GUEST_RUNNER = user_data("ctl")
Guest = GuestShell


def attach(serve: Serve, sid: str, share_id: str, tag: str, transport: str | None = None,
           read_only: bool = False) -> None:
    body: dict[str, object] = {"share_id": share_id, "tag": tag, "read_only": read_only}
    if transport is not None:
        body["transport"] = transport
    r = serve.http.post(f"/v2.1/servers/{sid}/shares", headers=EXT, json={"share": body})
    assert r.status_code == 201, r.text
    assert r.json()["share"]["transport"] == (transport or "virtiofs")


def guest_mounts(guest: Guest) -> dict[str, tuple[str, str, str]]:
    """Mount point -> (source, fstype, options) of the guest's /mnt/* mounts."""
    found = {}
    for line in guest.run("cat /proc/mounts\n").splitlines():
        f = line.split()
        if len(f) >= 4 and f[1].startswith("/mnt/"):
            found[f[1]] = (f[0], f[2], f[3])
    return found


def data_both_ways(guest: Guest, tag: str, host_dir: Path) -> None:
    """New files each way (an NFS client may cache a file's attributes for a few seconds)."""
    token = uuid.uuid4().hex
    (host_dir / f"from-host-{token}").write_text(f"host {token}\n")
    out = guest.run(f"cat /mnt/{tag}/from-host-{token}\n"
                    f"echo guest {token} > /mnt/{tag}/from-guest-{token}\n")
    assert f"host {token}" in out and "exit=0" in out, out
    assert (host_dir / f"from-guest-{token}").read_text() == f"guest {token}\n"


def read_only_holds(guest: Guest, tag: str, host_dir: Path) -> str:
    """Root in the guest remounts read-write and writes: nothing lands on the host."""
    (host_dir / "seen").write_text("readable\n")
    out = guest.run(f"cat /mnt/{tag}/seen\n"
                    f"mount -o remount,rw /mnt/{tag}; echo remount=$?\n"
                    f"echo x > /mnt/{tag}/written; echo write=$?\n"
                    f"mkdir /mnt/{tag}/dir; echo mkdir=$?\n"
                    f"rm -f /mnt/{tag}/seen; echo rm=$?\n"
                    f"touch -d 2000-01-01 /mnt/{tag}/seen; echo touch=$?\n")
    assert "readable" in out, out
    for op in ("write", "mkdir", "touch"):
        assert f"{op}=0" not in out, out
    assert not (host_dir / "written").exists() and not (host_dir / "dir").exists()
    assert (host_dir / "seen").read_text() == "readable\n"
    return out


ESCAPES = """cd /mnt/{tag} || exit 9
ln -s / to-root; ln -s {marker} to-host; ln -s ../../../../.. up; ln -s {outside} to-outside
echo "root-etc=$(ls to-root/etc | head -c 300 | tr '\\n' ' ')"
cat to-host >/dev/null 2>&1 && echo host-file=read || echo host-file=absent
ls to-outside/keep >/dev/null 2>&1 && echo outside=seen || echo outside=absent
cat ../../../../{marker} >/dev/null 2>&1 && echo dotdot=read || echo dotdot=absent
mknod cdev c 1 3 2>/dev/null && echo mknod=made || echo mknod=refused
mknod fifo p 2>/dev/null && echo fifo=made || echo fifo=refused
echo x > suid; chmod 4755 suid; echo "suid=$(stat -c %a suid)"
ln /etc/passwd hard-out 2>/dev/null && echo hardlink-out=made || echo hardlink-out=refused
echo y > inside; ln inside hard-in && echo hardlink-in=made || echo hardlink-in=refused
"""


def escapes(guest: Guest, tag: str, host_dir: Path, marker: Path, outside: Path) -> dict[str, str]:
    out = guest.run(ESCAPES.format(tag=tag, marker=marker, outside=outside))
    seen = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    assert seen.get("exit") == "0", out
    # the guest resolves its symlinks in its own namespace: it reaches the guest's /, never the
    # host's files
    assert seen["host-file"] == "absent" and seen["outside"] == "absent", out
    assert seen["dotdot"] == "absent", out
    assert "attachfs-guest-agent" not in seen["root-etc"]
    # on the host: the links are plain links in the share, nothing was written outside it
    assert os.readlink(host_dir / "to-root") == "/"
    assert (host_dir / "inside").read_text() == "y\n"
    assert not (host_dir / "hard-out").exists()
    assert marker.read_text() == "host secret\n"
    if (host_dir / "cdev").exists() or os.path.lexists(host_dir / "cdev"):
        # a node the guest could make is inert on the host: its mount is nodev
        assert stat.S_ISCHR((host_dir / "cdev").lstat().st_mode)
        try:
            fd = os.open(host_dir / "cdev", os.O_RDONLY)
        except PermissionError:
            pass
        else:
            os.close(fd)
            raise AssertionError("a device node in a share opened on the host")
    if (host_dir / "suid").exists():  # set-user-ID does not run as such from the share (nosuid)
        assert "nosuid" in share_mount_options(host_dir)
    return seen


def share_mount_options(path: Path) -> frozenset[str]:
    best: tuple[Path, frozenset[str]] | None = None
    for point, options in mountinfo.mount_table(Path("/")).items():
        if (path == point or point in path.parents) and (
                best is None or len(str(point)) > len(str(best[0]))):
            best = (point, options)
    assert best is not None, path
    return best[1]


def test_virtiofs_and_9p_from_inside_one_guest(tmp_path: Path) -> None:
    with serving(prefix="transports-") as serve, console_on_failure(serve):
        _body(serve, tmp_path)


def _body(serve: Serve, tmp_path: Path) -> None:
    marker = tmp_path / "host-secret"
    marker.write_text("host secret\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("keep me\n")
    ctl, ctl_dir = serve.new_share("ctl")
    p9, p9_dir = serve.new_share("p9")
    p9ro, p9ro_dir = serve.new_share("p9ro")
    vro, vro_dir = serve.new_share("vro")
    r = serve.http.post("/v2.1/servers", json={"server": {
        "name": "transports", "flavorRef": "2", "imageRef": "debian-busybox",
        "user_data": GUEST_RUNNER}})
    assert r.status_code == 202, r.text
    sid = str(r.json()["server"]["id"])
    serve.wait_status(sid, "ACTIVE")

    # 9p on the running server: a 409 that says why, nothing recorded
    r = serve.http.post(f"/v2.1/servers/{sid}/shares", headers=EXT,
                        json={"share": {"share_id": p9, "tag": "p9", "transport": "9p"}})
    assert r.status_code == 409, r.text
    assert "cannot be hot-plugged" in r.json()["conflictingRequest"]["message"]
    assert serve.mapping(sid, p9) is None

    attach(serve, sid, ctl, "ctl")  # hot-plugged virtio-fs
    attach(serve, sid, vro, "vro", read_only=True)
    serve.wait_mapping(sid, ctl, "active")
    serve.wait_mapping(sid, vro, "active")
    assert serve.action(sid, {"os-stop": None}).status_code == 202
    serve.wait_status(sid, "SHUTOFF")
    attach(serve, sid, p9, "p9", transport="9p")
    attach(serve, sid, p9ro, "p9ro", transport="9p", read_only=True)
    t0 = time.monotonic()
    assert serve.action(sid, {"os-start": None}).status_code == 202
    serve.wait_status(sid, "ACTIVE")
    for share in (ctl, vro, p9, p9ro):
        serve.wait_mapping(sid, share, "active")
    serve.wait_console(sid, "runner started")
    guest = Guest(ctl_dir)
    wait_for("the guest to mount all four",
             lambda: len(guest_mounts(guest)) == 4 or None, 90)
    print(f"\nstart with 2 virtio-fs + 2 9p shares -> all mounted: "
          f"{time.monotonic() - t0:.1f} s")

    # what the guest mounted is what mount_info says
    mounts = guest_mounts(guest)
    for share, tag in ((ctl, "ctl"), (vro, "vro"), (p9, "p9"), (p9ro, "p9ro")):
        r = serve.http.get(f"/v2.1/servers/{sid}/shares/{share}/mount_info")
        assert r.status_code == 200, r.text
        info = r.json()["mount_info"]
        source, fstype, options = mounts[info["target"]]
        assert (source, fstype) == (info["source"], info["fstype"]) == (
            (tag, "9p") if tag.startswith("p9") else (tag, "virtiofs")), (info, mounts)
        assert ("ro" in options.split(",")) == tag.endswith("ro"), (tag, options)
        assert info["command"].startswith(f"mount -t {fstype} -o ")
    print(f"guest mounts: {mounts}")

    data_both_ways(guest, "ctl", ctl_dir)
    data_both_ways(guest, "p9", p9_dir)
    print(f"read-only over virtio-fs: {read_only_holds(guest, 'vro', vro_dir)!r}")
    print(f"read-only over 9p: {read_only_holds(guest, 'p9ro', p9ro_dir)!r}")

    # a guest user's write reaches the host with the guest's ids on both paths
    out = guest.run("for t in ctl p9; do echo u > /mnt/$t/owned; chown 1234:1234 "
                    "/mnt/$t/owned; done\n")
    assert "exit=0" in out, out
    for d in (ctl_dir, p9_dir):
        assert (d / "owned").stat().st_uid == 1234

    for tag, d in (("ctl", ctl_dir), ("p9", p9_dir)):
        seen = escapes(guest, tag, d, marker, outside)
        print(f"escapes over {tag}: {seen}")

    # the host measures a hostile share without following or opening anything
    (p9_dir / "deep").mkdir()
    t1 = time.monotonic()
    r = serve.http.get("/v2.1/os-filesystem/p9")
    assert r.status_code == 200 and time.monotonic() - t1 < 5, r.text

    # 9p cannot leave the running guest: 409, still attached and mounted
    r = serve.http.delete(f"/v2.1/servers/{sid}/shares/{p9}")
    assert r.status_code == 409, r.text
    assert serve.mapping(sid, p9)["status"] == "active"  # type: ignore[index]

    # stopped: detach both 9p shares; the next boot has neither
    assert serve.action(sid, {"os-stop": None}).status_code == 202
    serve.wait_status(sid, "SHUTOFF")
    for share in (p9, p9ro):
        assert serve.http.delete(f"/v2.1/servers/{sid}/shares/{share}").status_code == 200
    wait_for("the 9p attachments gone",
             lambda: serve.mapping(sid, p9) is None and serve.mapping(sid, p9ro) is None, 60)
    assert serve.action(sid, {"os-start": None}).status_code == 202
    serve.wait_status(sid, "ACTIVE")
    wait_for("the guest to mount its two virtio-fs shares",
             lambda: len(guest_mounts(guest)) == 2 or None, 90)
    assert set(guest_mounts(guest)) == {"/mnt/ctl", "/mnt/vro"}

    # the hostile shares are deleted without touching anything outside them
    assert serve.http.delete(f"/v2.1/servers/{sid}").status_code == 204
    serve.wait_gone(sid)
    for name in ("ctl", "p9", "p9ro", "vro"):
        assert serve.http.delete(f"/v2.1/os-filesystem/{name}").status_code == 202
    assert not p9_dir.exists() and not ctl_dir.exists()
    assert marker.read_text() == "host secret\n"
    assert (outside / "keep").read_text() == "keep me\n"
    assert serve.host_mounts() == []
