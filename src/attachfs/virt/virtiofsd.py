"""The virtiofsd of each virtio-fs device, run by attachfs (libvirt's `<source socket=.../>`).

Why not let libvirt run it: libvirt stops a device's virtiofsd inside the domain's job when the
guest gives the device back, signalling it and polling for its exit every 200 ms, one device
after another; seven shares unplugged together left the guest 0.2 s apart (measured). A
virtiofsd of our own exits by itself when QEMU drops its socket (measured: exit code 0, seven
devices removed within 0.21 s of the requests), and attachfs sees exactly which process serves
which device.

Each daemon is Debian's C virtiofsd, sandboxed:
- ``sandbox=namespace``: its own mount, pid and network namespaces, pivoted into the share;
- ``no_xattr``: no extended attributes, so no file capabilities, ACLs or security labels;
- ``modcaps=-mknod:-setfcap:-fsetid``: the guest cannot create device nodes; no file
  capabilities; the host kernel clears set-user-ID/set-group-ID bits when it writes or chowns;
- ``killpriv_v2``: the guest kernel clears those bits on write, truncate and chown too;
- ``--rlimit-nofile=65536``: a bound on open files per device.

Files, under a private run directory: ``<key>.sock`` (QEMU connects) and ``<key>.json`` (its
pid, server and tag), `key` a hash of (server, tag) so the socket path stays short. A daemon
outlives an agent restart (its own session) and is adopted by its record.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from attachfs.virt.libvirt_xml import VirtError

VIRTIOFSD = Path("/usr/lib/qemu/virtiofsd")
SANDBOX_OPTIONS = ["-o", "modcaps=-mknod:-setfcap:-fsetid", "-o", "killpriv_v2",
                   "--rlimit-nofile=65536"]
LISTEN_TIMEOUT = 5.0  # s for a new daemon to listen on its socket


def argv(program: Path, socket: Path, source: Path) -> list[str]:
    return [str(program), f"--socket-path={socket}",
            "-o", f"source={source},sandbox=namespace,no_xattr", *SANDBOX_OPTIONS]


class VirtiofsDaemons:
    def __init__(self, run_dir: Path, program: Path = VIRTIOFSD) -> None:
        self.run_dir, self.program = run_dir, program
        self._children: dict[str, subprocess.Popen[bytes]] = {}  # key -> ours, to reap

    def _key(self, uuid: str, tag: str) -> str:
        return hashlib.sha256(f"{uuid}/{tag}".encode()).hexdigest()[:20]

    def socket(self, uuid: str, tag: str) -> Path:
        return self.run_dir / f"{self._key(uuid, tag)}.sock"

    def ensure(self, uuid: str, tag: str, source: Path) -> Path:
        """A virtiofsd serving `source` for this device, listening; its socket. A live one
        for the same device and source is kept (adopted after an agent restart)."""
        self.reap()
        key, sock = self._key(uuid, tag), self.socket(uuid, tag)
        record = self._record(key)
        if record is not None and record.get("source") == str(source) \
                and _serves(int(record["pid"]), sock) and sock.exists():
            return sock
        self.stop(uuid, tag)
        self.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        proc = subprocess.Popen(argv(self.program, sock, source), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        self._children[key] = proc
        (self.run_dir / f"{key}.json").write_text(json.dumps(
            {"pid": proc.pid, "uuid": uuid, "tag": tag, "source": str(source)}))
        deadline = time.monotonic() + LISTEN_TIMEOUT
        while not sock.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                self.stop(uuid, tag)
                raise VirtError(f"virtiofsd for share {tag} of guest {uuid} did not start "
                                f"(exit {proc.returncode}) on {source}")
            time.sleep(0.005)
        return sock

    def pid(self, uuid: str, tag: str) -> int | None:
        record = self._record(self._key(uuid, tag))
        pid = int(record["pid"]) if record is not None else None
        return pid if pid is not None and _serves(pid, self.socket(uuid, tag)) else None

    def source(self, uuid: str, tag: str) -> str | None:
        """What the device's daemon was started on (its record: kept until `tidy`)."""
        record = self._record(self._key(uuid, tag))
        return None if record is None else str(record.get("source", ""))

    def stop(self, uuid: str, tag: str) -> None:
        """Its daemon gone (it usually ends by itself when QEMU drops the device) and its files."""
        key = self._key(uuid, tag)
        pid = self.pid(uuid, tag)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        proc = self._children.pop(key, None)
        if proc is not None:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        (self.run_dir / f"{key}.json").unlink(missing_ok=True)
        (self.run_dir / f"{key}.sock").unlink(missing_ok=True)

    def devices(self) -> dict[tuple[str, str], int | None]:
        """Every recorded daemon: (server, tag) -> pid if it still runs."""
        found: dict[tuple[str, str], int | None] = {}
        for path in self.run_dir.glob("*.json") if self.run_dir.is_dir() else ():
            record = self._record(path.stem)
            if record is not None:
                pid, sock = int(record["pid"]), path.with_suffix(".sock")
                found[(str(record["uuid"]), str(record["tag"]))] = \
                    pid if _serves(pid, sock) else None
        return found

    def tidy(self) -> None:
        """Remove the files of daemons that ended (their device left, or their guest stopped)."""
        self.reap()
        for (uuid, tag), pid in self.devices().items():
            if pid is None:
                self.stop(uuid, tag)

    def reap(self) -> None:
        """Collect our daemons that ended (their device left the guest)."""
        for key, proc in list(self._children.items()):
            if proc.poll() is not None:
                del self._children[key]

    def _record(self, key: str) -> dict[str, Any] | None:
        try:
            record = json.loads((self.run_dir / f"{key}.json").read_text())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) and "pid" in record else None


def _serves(pid: int, sock: Path) -> bool:
    """`pid` is a running virtiofsd on `sock`: not a zombie waiting to be reaped (by us, or by
    a lazy init), not another process that got the number since."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z" and \
        f"--socket-path={sock}".encode() in cmdline
