"""virtiofsd as libvirt runs it for attachfs: sandboxed, with the options that keep device nodes
and privilege bits out of a share. Measured from inside a real guest, on a boot-time share and on
a hot-plugged one.

The shares here are plain host directories (no nosuid/nodev host mount under them), so what the
guest is refused is refused by virtiofsd itself. Root in the guest tries: device nodes (char,
block), a FIFO, set-user-ID and set-group-ID modes, and a write by an unprivileged user to a
set-user-ID file; the host then looks at what really landed on its disk.
"""

from __future__ import annotations

import os
import re
import stat
import time
from pathlib import Path

import pytest

from attachfs.virt import virtiofsd
from tests.vm.test_hotplug_driver import booted

CAP_FSETID, CAP_MKNOD, CAP_SETFCAP = 4, 27, 31
CHECKS = """#!/bin/sh
grep -q ^tenant: /etc/passwd || echo "tenant:x:1000:1000::/tmp:/bin/sh" >> /etc/passwd
grep -q ^tenant: /etc/group || echo "tenant:x:1000:" >> /etc/group
check() {
    d=$1; t=${d#/mnt/}
    r() { echo "VFS $t $*"; }
    cd "$d" || return
    if mknod cdev c 1 3 2>/dev/null; then r mknod-char ok; else r mknod-char refused; fi
    if mknod bdev b 7 0 2>/dev/null; then r mknod-block ok; else r mknod-block refused; fi
    if mknod fifo p 2>/dev/null; then r mknod-fifo ok; else r mknod-fifo refused; fi
    echo x > suid; chmod 4755 suid; r suid-mode "$(stat -c %a suid)"
    echo x > sgid; chown 0:1234 sgid; chmod 2755 sgid; r sgid-mode "$(stat -c %a sgid)"
    echo x > killpriv; chmod 6777 killpriv
    su -s /bin/sh tenant -c "echo y >> $d/killpriv"
    r killpriv-mode "$(stat -c %a killpriv)"
    echo x > rootwrite; chmod 4755 rootwrite; echo y >> rootwrite
    r rootwrite-mode "$(stat -c %a rootwrite)"
    r done
}
( while :; do
    for g in /mnt/*/go; do
        [ -f "$g" ] || continue
        rm -f "$g"
        check "${g%/go}"
    done
    sleep 0.3
  done ) </dev/null >/dev/console 2>&1 &
"""


def test_each_device_daemon_runs_sandboxed_with_the_narrowed_options() -> None:
    argv = virtiofsd.argv(virtiofsd.VIRTIOFSD, Path("/run/v/k.sock"), Path("/srv/x"))
    assert argv[:4] == [str(virtiofsd.VIRTIOFSD), "--socket-path=/run/v/k.sock",
                        "-o", "source=/srv/x,sandbox=namespace,no_xattr"]
    assert argv[4:] == ["-o", "modcaps=-mknod:-setfcap:-fsetid", "-o", "killpriv_v2",
                        "--rlimit-nofile=65536"]
    assert os.access(virtiofsd.VIRTIOFSD, os.X_OK)


def _daemons(share: Path) -> list[int]:
    """virtiofsd processes serving `share` (the launcher and its sandboxed child)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[0].endswith(b"virtiofsd") and any(f"source={share}".encode() in a for a in argv):
            found.append(int(entry))
    return found


def _caps(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^CapEff:\s*([0-9a-f]+)", status, re.M)[1], 16)  # type: ignore[index]


def _check_daemon(share: Path) -> str:
    pids = _daemons(share)
    assert pids, f"no virtiofsd serves {share}"
    argv = Path(f"/proc/{pids[0]}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    for option in ("sandbox=namespace", "no_xattr", "modcaps=-mknod:-setfcap:-fsetid",
                   "killpriv_v2", "--rlimit-nofile=65536"):
        assert option in argv, f"{option} missing from {argv}"
    host_ns = {ns: os.readlink(f"/proc/self/ns/{ns}") for ns in ("mnt", "net", "pid")}
    sandboxed = [p for p in pids if all(os.readlink(f"/proc/{p}/ns/{ns}") != host_ns[ns]
                                        for ns in host_ns)]
    assert sandboxed, "no virtiofsd runs in its own mount, network and pid namespaces"
    for pid in sandboxed:
        caps = _caps(pid)
        assert not caps & (1 << CAP_MKNOD | 1 << CAP_FSETID | 1 << CAP_SETFCAP), hex(caps)
    return argv


def _results(console: str, tag: str) -> dict[str, str]:
    return dict(re.findall(rf"^VFS {re.escape(tag)} (\S+) ?(\S*)", console, re.M))


def _run_checks(guest_console: object, share: Path, tag: str) -> dict[str, str]:
    (share / "go").write_text("")
    guest_console.wait(f"VFS {tag} done", 60)  # type: ignore[attr-defined]
    return _results(guest_console.text(), tag)  # type: ignore[attr-defined]


def _assert_inert(share: Path, seen: dict[str, str]) -> None:
    assert seen["mknod-char"] == "refused" and seen["mknod-block"] == "refused"
    assert (share / "killpriv").read_text() == "x\ny\n"  # the unprivileged write happened
    assert not (share / "cdev").exists() and not (share / "bdev").exists()
    assert stat.S_ISFIFO((share / "fifo").lstat().st_mode)  # a FIFO is no device: allowed
    # set-group-ID for a group the writer (virtiofsd, fsgid 0) is not in: cleared on the host
    assert not (share / "sgid").stat().st_mode & stat.S_ISGID
    # a write by an unprivileged guest user clears set-user-ID and set-group-ID
    assert not (share / "killpriv").stat().st_mode & (stat.S_ISUID | stat.S_ISGID)
    # and so does any write that virtiofsd (without CAP_FSETID) makes, even for guest root
    assert not (share / "rootwrite").stat().st_mode & stat.S_ISUID


@pytest.mark.vm
def test_guest_cannot_make_device_nodes_and_privilege_bits_do_not_survive_writes() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: libvirt qemu:///system, virtiofsd")
    from attachfs.virt.base import GuestShare

    with booted(1, served=CHECKS, boot_shares=("boot",)) as (guest, rows):
        assert rows is not None
        rows.list_share("boot")
        guest.console.wait("attachfs-guest: mounted share boot at /mnt/boot", 60)
        boot = guest.shares / "boot"
        print(f"\nvirtiofsd (boot-time device): {_check_daemon(boot)}")
        seen = _run_checks(guest.console, boot, "boot")
        print(f"guest saw on the boot-time share: {seen}")
        _assert_inert(boot, seen)
        modes = {n: oct((boot / n).stat().st_mode & 0o7777) for n in
                 ("suid", "sgid", "killpriv", "rootwrite")}
        print(f"host modes: {modes}")

        hot = guest.shares / "hot"
        hot.mkdir()
        t0 = time.monotonic()
        guest.driver.attach_share(guest.uuid, GuestShare("hot", hot))
        rows.list_share("hot")
        guest.console.wait("attachfs-guest: mounted share hot at /mnt/hot", 60)
        print(f"hot-plugged share mounted in {time.monotonic() - t0:.1f} s; "
              f"virtiofsd: {_check_daemon(hot)}")
        seen = _run_checks(guest.console, hot, "hot")
        print(f"guest saw on the hot-plugged share: {seen}")
        _assert_inert(hot, seen)
