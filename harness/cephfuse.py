"""A CephFS directory mounted on the host with ceph-fuse and one cephx key, the way attachfs's
host connector mounts a share: no ceph.conf (`-c /dev/null`), the monitors, the ID and a
keyring file (mode 0600) on the command line, `-r PATH` for the directory.

ceph-fuse runs in the foreground (`-f`) as a child in its own session, so that a mount failure
is its exit (with Ceph's reason in its output) and its end is ours to reap: a daemonized
ceph-fuse is an orphan that PID 1 reaps only seconds after the unmount.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from attachfs.storage import mountinfo
from harness.process import Tracked

_serial = itertools.count()


class CephMountError(RuntimeError):
    """ceph-fuse did not mount: the message holds its output (e.g. "ceph mount failed with
    (1) Operation not permitted")."""


class FuseMount:
    """One ceph-fuse mount; `unmount()` (or leaving the `with` block) removes it, waits for
    ceph-fuse to be gone and removes the keyring file."""

    def __init__(self, mountpoint: Path, proc: Tracked, keyring: Path) -> None:
        self.mountpoint, self.proc, self.keyring = mountpoint, proc, keyring

    def mounted(self) -> bool:
        return mountinfo.is_mountpoint(self.mountpoint)

    def unmount(self, timeout: float = 30) -> None:
        """Idempotent. A busy mount is detached lazily (`umount -l`) rather than left."""
        if self.mounted():
            done = subprocess.run(["umount", str(self.mountpoint)], capture_output=True,
                                  timeout=timeout, check=False)
            if done.returncode != 0 and self.mounted():
                subprocess.run(["umount", "-l", str(self.mountpoint)], capture_output=True,
                               timeout=timeout, check=True)
        # ceph-fuse exits once its mount is gone; one that does not (a cluster already gone
        # and a flush that cannot finish) is killed.
        if not self.proc.wait_gone(timeout):
            self.proc.kill()
            self.proc.wait_gone(timeout)
        self.keyring.unlink(missing_ok=True)

    def __enter__(self) -> FuseMount:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.unmount()

    def to_json(self) -> dict[str, Any]:
        return {"mountpoint": str(self.mountpoint), "proc": self.proc.to_json(),
                "keyring": str(self.keyring)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> FuseMount:
        return cls(Path(d["mountpoint"]), Tracked.from_json(d["proc"]), Path(d["keyring"]))


def keyring_text(entity: str, key: str, caps: dict[str, str] | None = None) -> str:
    lines = [f"[{entity}]", f"\tkey = {key}"]
    lines += [f'\tcaps {kind} = "{cap}"' for kind, cap in (caps or {}).items()]
    return "\n".join(lines) + "\n"


def write_secret(path: Path, text: str) -> None:
    """A file readable by its owner only (a keyring is a credential), never readable first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def write_keyring(path: Path, entity: str, key: str) -> None:
    write_secret(path, keyring_text(entity, key))


def mount(mons: str, path_in_fs: str, mountpoint: Path, auth_id: str, key: str, workdir: Path,
          *, die_with_parent: bool = True, timeout: float = 30) -> FuseMount:
    """Mount `path_in_fs` of the cluster at `mons` on `mountpoint` as client.`auth_id`.
    Keyring, ceph-fuse log and output go under `workdir`. CephMountError if it does not."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", auth_id):  # it names files below
        raise ValueError(f"bad cephx ID {auth_id!r}")
    mountpoint = mountpoint.resolve()
    mountpoint.mkdir(parents=True, exist_ok=True)
    serial = f"{os.getpid()}.{next(_serial)}"
    name = f"{auth_id}.{serial}"
    keyring = workdir / "clients" / f"{name}.keyring"
    write_keyring(keyring, f"client.{auth_id}", key)
    log = workdir / "log" / f"ceph-fuse.{name}.out"
    log.parent.mkdir(parents=True, exist_ok=True)
    argv = ["ceph-fuse", "-f", "-c", "/dev/null", "-m", mons, "--id", auth_id,
            "--keyring", str(keyring), "-r", path_in_fs,
            # without a conf these would default to /var/log/ceph and /var/run/ceph
            "--log-file", str(workdir / "log" / f"ceph-fuse.{name}.log"),
            # short: a socket path has at most 107 bytes
            "--admin-socket", str(workdir / "run" / f"fuse.{serial}.asok"),
            # unreachable mons fail the mount after `timeout` s (measured), not Ceph's 300 s
            "--client-mount-timeout", str(int(timeout)),
            str(mountpoint)]
    (workdir / "run").mkdir(parents=True, exist_ok=True)
    proc = Tracked.spawn(f"ceph-fuse {name}", argv, log, die_with_parent=die_with_parent)
    handle = FuseMount(mountpoint, proc, keyring)
    deadline = time.monotonic() + timeout + 5
    while not handle.mounted():
        if not proc.alive() or time.monotonic() > deadline:
            why = "exited" if not proc.alive() else f"did not mount within {timeout + 5:.0f}s"
            with contextlib.suppress(Exception):
                handle.unmount(timeout=10)
            raise CephMountError(f"ceph-fuse {why} (client.{auth_id}, -r {path_in_fs}):\n"
                                 f"{proc.tail().strip()}")
        time.sleep(0.02)
    return handle
