"""What a guest writes into its share stays inert on the host, and a share cannot outgrow its size.

One real guest boots with a 1 GiB built-in share and, as root inside it, makes a host-compiled
probe setuid root, makes device nodes, and writes past the share's size. The host then checks,
as the unprivileged user `nobody`, that the setuid bit is not honoured and the device nodes
open nothing, that `nobody` cannot even reach the share, and that the host kept its free space.
"""

from __future__ import annotations

import base64
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from attachfs.storage import mountinfo
from tests.vm.harness import GUEST_TEST, Serve, serving

pytestmark = GUEST_TEST

NOBODY = 65534
GIB = 1 << 30
PROBE_C = '#include <stdio.h>\n#include <unistd.h>\nint main(void){printf("euid=%d\\n", ' \
          '(int)geteuid());return 0;}\n'
# Runs as root in the guest: each step says what happened on the console.
GUEST_SCRIPT = """#!/bin/sh
cd /mnt/data || { echo "hostile: no share"; exit 1; }
chown 0:0 probe && chmod 4755 probe
echo "hostile: probe mode $(stat -c %a probe)"
if mknod nullnode c 1 3 2>/dev/null; then chmod 666 nullnode; echo "hostile: mknod char ok"
else echo "hostile: mknod char refused"; fi
if mknod loopnode b 7 0 2>/dev/null; then chmod 666 loopnode; echo "hostile: mknod block ok"
else echo "hostile: mknod block refused"; fi
dd if=/dev/zero of=fill bs=1M count=1200 2>/tmp/dd.err
echo "hostile: dd rc=$? $(grep -i 'space\\|quota' /tmp/dd.err | head -1)"
sync
echo "hostile: filled $(du -k fill | cut -f1) KiB"
echo "hostile: done"
"""


@dataclass
class Outcome:
    serve: Serve
    share_id: str
    share_dir: Path
    console: str
    free_before: int
    free_after: int


def _free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _as_nobody(argv: list[str], fd: int) -> subprocess.CompletedProcess[str]:
    """Run argv as nobody with no capabilities, with `fd` (an O_PATH descriptor the test
    opened as root) passed in: nobody reaches the file without traversing the 0700 parents,
    so what is tested is the mount's nosuid/nodev, not the directory modes."""
    return subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
         "--inh-caps=-all", "--bounding-set=-all", *argv],
        pass_fds=(fd,), capture_output=True, text=True, timeout=30, check=False)


def _exec_as_nobody(path: Path) -> str:
    fd = os.open(path, os.O_PATH)
    try:
        done = _as_nobody([f"/proc/self/fd/{fd}"], fd)
    finally:
        os.close(fd)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _open_as_nobody(path: Path) -> subprocess.CompletedProcess[str]:
    fd = os.open(path, os.O_PATH)
    try:
        return _as_nobody(["/usr/bin/python3", "-c",
                           f"import os; os.close(os.open('/proc/self/fd/{fd}', os.O_RDONLY))"],
                          fd)
    finally:
        os.close(fd)


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outcome]:
    build = tmp_path_factory.mktemp("probe")
    (build / "probe.c").write_text(PROBE_C)
    subprocess.run(["gcc", "-O2", "-o", str(build / "probe"), str(build / "probe.c")], check=True)
    with serving(prefix="harden-") as serve:
        share_id, share_dir = serve.new_share("hostile-data")
        shutil.copy(build / "probe", share_dir / "probe")
        user_data = base64.b64encode(GUEST_SCRIPT.encode()).decode()
        r = serve.http.post("/v2.1/servers", json={"server": {
            "name": "hostile", "flavorRef": "2", "imageRef": "debian-busybox",
            "user_data": user_data}})
        assert r.status_code == 202, r.text
        sid = str(r.json()["server"]["id"])
        serve.wait_status(sid, "ACTIVE")
        assert serve.action(sid, {"os-stop": None}).status_code == 202
        serve.wait_status(sid, "SHUTOFF")
        assert serve.http.post(f"/v2.1/servers/{sid}/shares", json={
            "share": {"share_id": share_id, "tag": "data"}}).status_code == 201
        serve.wait_mapping(sid, share_id, "inactive")
        free_before = _free(share_dir.parent)
        assert serve.action(sid, {"os-start": None}).status_code == 202
        serve.wait_status(sid, "ACTIVE")
        console = serve.wait_console(sid, "hostile: done", timeout=300)
        yield Outcome(serve, share_id, share_dir, console, free_before, _free(share_dir.parent))


def test_setuid_made_in_the_guest_is_not_honoured_on_the_host(outcome: Outcome) -> None:
    probe = outcome.share_dir / "probe"
    mode = probe.stat().st_mode
    print(f"guest: {[ln for ln in outcome.console.splitlines() if 'probe mode' in ln]}")
    # The guest made it setuid root (root in the guest is root on the files).
    assert mode & stat.S_ISUID and probe.stat().st_uid == 0, oct(mode)
    assert "hostile: probe mode 4755" in outcome.console
    # Run by nobody, through the share's filesystem and through the guest-facing host mount:
    # it runs as nobody, not as root.
    guest_facing = outcome.serve.mount_root / outcome.share_id / "probe"
    for path in (probe, guest_facing):
        assert _exec_as_nobody(path) == f"euid={NOBODY}", path
    for point in (outcome.share_dir, outcome.serve.mount_root / outcome.share_id):
        options = mountinfo.mount_options(point.resolve())
        assert options is not None and {"nosuid", "nodev"} <= options, (point, options)


def test_device_nodes_made_in_the_guest_open_nothing_on_the_host(outcome: Outcome) -> None:
    made = [name for name in ("nullnode", "loopnode")
            if (outcome.share_dir / name).exists()]
    print(f"guest mknod: {[ln for ln in outcome.console.splitlines() if 'mknod' in ln]}")
    # A node the guest could not make is inert too; one the host makes in the share (as a
    # guest with other means would) must be as well, so the mount's nodev is always exercised.
    host_made = outcome.share_dir / "hostnode"
    os.mknod(host_made, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.chmod(host_made, 0o666)
    for name in [*made, "hostnode"]:
        node = outcome.share_dir / name
        assert stat.S_ISCHR(node.lstat().st_mode) or stat.S_ISBLK(node.lstat().st_mode)
        done = _open_as_nobody(node)
        assert done.returncode != 0 and "Permission denied" in done.stderr, (name, done)
    # /dev/null itself opens fine for nobody: the refusal above is the mount's nodev.
    fd = os.open("/dev/null", os.O_PATH)
    try:
        assert _as_nobody(["/usr/bin/python3", "-c",
                           f"import os; os.open('/proc/self/fd/{fd}', os.O_RDONLY)"],
                          fd).returncode == 0
    finally:
        os.close(fd)


def test_nobody_cannot_reach_state_shares_or_mounts(outcome: Outcome) -> None:
    state = outcome.serve.state_dir
    for d in (state, state / "shares", state / "mounts", state / "metadata"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    reach = subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
         "--inh-caps=-all", "/usr/bin/python3", "-c",
         f"import os; os.listdir({str(outcome.share_dir)!r})"],
        capture_output=True, text=True, timeout=30, check=False)
    assert reach.returncode != 0 and "Permission denied" in reach.stderr


def test_writing_past_the_share_size_fails_in_the_guest(outcome: Outcome) -> None:
    line = next(ln for ln in outcome.console.splitlines() if "hostile: dd rc=" in ln)
    print(line)
    assert "No space left on device" in line and "rc=0" not in line
    filled = (outcome.share_dir / "fill").stat().st_size
    image = outcome.share_dir.parent / "images" / f"{outcome.share_id}.ext4"
    allocated = image.stat().st_blocks * 512
    used = outcome.serve.http.get("/v2.1/os-filesystem/hostile-data").json()["fs_entry"][
        "used_bytes"]
    taken = outcome.free_before - outcome.free_after
    print(f"guest filled {filled / 2**20:.0f} MiB of a 1 GiB share; image allocated "
          f"{allocated / 2**20:.0f} MiB; used_bytes {used / 2**20:.0f} MiB; host free space "
          f"went down by {taken / 2**20:.0f} MiB")
    assert 0.85 * GIB < filled < GIB
    assert allocated <= GIB and used <= GIB and abs(used - filled) < 64 << 20
    # The host lost at most the share's size (other writers share this disk: some slack).
    assert taken < GIB + (256 << 20)
