"""LXC driver: servers of a container flavor run as LXC containers; their shares are the host
mounts, injected into the running container (virt/mount_inject.py).

Each container is ``attachfs-<server uuid>`` under this agent's own LXC path (``[state]/
containers``), made at start and destroyed at stop, as the libvirt driver's transient domains
are: a stopped server has no container (`guest_state` MISSING), and nothing of it outlives a
crash but a directory the next `list_guests` removes.

What a container is given (measured with LXC 5.0.2 on Linux 6.1):
- a root filesystem of its own: Debian's static busybox and its applet links, an inittab, and
  an rcS that says ``attachfs-container: up`` on the console and runs the server's user_data
  (when it starts with ``#!``) in the background; no host directory is bound into it (LXC's
  busybox template binds the host's /lib and /usr/lib: not used);
- no network (``lxc.net.0.type = empty``): it reaches nothing of the host;
- its metadata as files, read-only, at ``/run/attachfs/metadata`` (``openstack/latest/
  meta_data.json`` and ``user_data``, and ``attachfs/meta_data.json`` that says how each share
  is mounted): the agent keeps that directory current, and the bind mount shows each change;
- no CAP_SYS_ADMIN (nor mknod, module, raw I/O, time, boot): root inside cannot mount,
  unmount or remount, so an injected read-only share stays read-only (measured: remount
  "permission denied", write "Read-only file system", umount "Operation not permitted");
- its console appended to the server's console log (``lxc.console.logfile``).

A share is injected at its target (`GuestShare.target`) nosuid,nodev (ro when read-only) in
0.05 s, and taken out with a lazy unmount inside the namespace; both need no cooperation from
the container (`GuestView.cooperative` False: the reconciler does not wait for a report).
What was injected is recorded beside the container (``attachfs.json``) and observed for real
in ``/proc/<init>/mountinfo``: a record whose mount is gone is not a device.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from attachfs.storage.mountinfo import unescape_field
from attachfs.virt.base import GuestShare, GuestSpec, GuestView, PowerState, VirtCapabilities
from attachfs.virt.libvirt_xml import NAME_PREFIX, VirtError, domain_name

BUSYBOX = Path("/bin/busybox")
METADATA_TARGET = "run/attachfs/metadata"  # inside the container, relative to its root
RECORD = "attachfs.json"
# Capabilities a container's root does not get: no mounts (so injected mounts stay as they
# are), no device nodes, no modules, raw I/O, clock or reboot of the host.
DROPPED_CAPS = "sys_admin sys_module sys_rawio sys_time sys_boot mknod mac_admin mac_override"
MAX_SHARES = 256  # injected mounts need no slot; a bound all the same
LEFTOVER_AGE = 120.0  # s after which a container made but never started is removed
_TIMEOUT = 30.0

RCS = """#!/bin/sh
echo "attachfs-container: up" >/dev/console
ud=/run/attachfs/metadata/openstack/latest/user_data
if [ -f "$ud" ] && [ "$(head -c 2 "$ud")" = "#!" ]; then
    cp "$ud" /tmp/user_data && chmod 0700 /tmp/user_data
    (/tmp/user_data </dev/null >/dev/console 2>&1
     echo "attachfs-container: user_data exited $?" >/dev/console) &
fi
"""
INITTAB = "::sysinit:/etc/init.d/rcS\n::shutdown:/bin/sync\n"


def _run(argv: list[str], what: str, timeout: float = _TIMEOUT) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError as exc:
        raise VirtError(f"{what}: {argv[0]} not found (apt-get install lxc)") from exc
    except subprocess.TimeoutExpired as exc:
        raise VirtError(f"{what}: {argv[0]} did not finish in {timeout:g} s") from exc
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise VirtError(f"{what}: {detail[-1] if detail else f'exit {proc.returncode}'}")
    return proc.stdout


class LxcDriver:
    def __init__(self, path: Path, inject: list[str] | None = None) -> None:
        """path: LXC's path for this agent's containers (nothing else may live there).
        inject: the program that moves mounts into a container (virt/mount_inject.py)."""
        self.path = Path(path)
        self.inject = inject or [sys.executable, "-m", "attachfs.virt.mount_inject"]
        self.capabilities = VirtCapabilities(hot_plug=True, read_only_enforced_by_hypervisor=True,
                                             share_transports=("bind",))

    # ---- where things are ----------------------------------------------------------------
    def _dir(self, uuid: str) -> Path:
        return self.path / domain_name(uuid)

    def owns(self, uuid: str) -> bool:
        return self._dir(uuid).is_dir()

    def _lxc(self, tool: str, uuid: str, *args: str, what: str,
             timeout: float = _TIMEOUT) -> str:
        return _run([tool, "-P", str(self.path), "-n", domain_name(uuid), *args], what, timeout)

    def _info(self, uuid: str) -> tuple[str, int | None]:
        """(state, init pid) as lxc-info says; ("MISSING", None) when there is no container."""
        if not self.owns(uuid):
            return "MISSING", None
        try:
            out = self._lxc("lxc-info", uuid, "-s", "-p", what=f"container {uuid}")
        except VirtError:
            return "MISSING", None
        fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        state = fields.get("State", "STOPPED").strip()
        pid = fields.get("PID", "").strip()
        if state == "STOPPED" and self._record(uuid).get("started"):
            self._destroy(uuid)  # it powered off: like a transient domain, it is gone
            return "MISSING", None
        return state, int(pid) if pid.isdigit() else None

    def _record(self, uuid: str) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads((self._dir(uuid) / RECORD).read_text())
            return data
        except (OSError, ValueError):
            return {"generation": None, "shares": {}}

    def _save(self, uuid: str, record: dict[str, Any]) -> None:
        path = self._dir(uuid) / RECORD
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record))
        tmp.replace(path)

    # ---- lifecycle ------------------------------------------------------------------------
    def start_guest(self, spec: GuestSpec) -> None:
        state, _ = self._info(spec.uuid)
        if state == "RUNNING":
            return
        if self.owns(spec.uuid):  # a crash's leftover (never started): start afresh
            self._destroy(spec.uuid)
        self._create(spec)
        self._lxc("lxc-start", spec.uuid, "-d", what=f"starting container {spec.uuid}")
        deadline = time.monotonic() + _TIMEOUT
        state, pid = self._info(spec.uuid)
        while (state != "RUNNING" or pid is None) and time.monotonic() < deadline:
            time.sleep(0.05)
            state, pid = self._info(spec.uuid)
        if state != "RUNNING" or pid is None:
            raise VirtError(f"container {spec.uuid} is {state}, not running")
        record = self._record(spec.uuid)
        record["started"] = True  # from now on, stopped means gone
        self._save(spec.uuid, record)
        for share in spec.shares:
            self.attach_share(spec.uuid, share)

    def _create(self, spec: GuestSpec) -> None:
        d = self._dir(spec.uuid)
        root = d / "rootfs"
        for sub in ("bin", "etc/init.d", "proc", "sys", "dev", "tmp", "mnt", "run", "root",
                    "var", METADATA_TARGET):
            (root / sub).mkdir(parents=True, exist_ok=True)
        (root / "sbin").symlink_to("bin")
        shutil.copyfile(BUSYBOX, root / "bin/busybox")
        (root / "bin/busybox").chmod(0o755)
        applets = _run([str(BUSYBOX), "--list"], "listing busybox applets").split()
        for applet in applets:
            if applet != "busybox" and "/" not in applet:
                (root / "bin" / applet).symlink_to("busybox")
        (root / "etc/inittab").write_text(INITTAB)
        (root / "etc/init.d/rcS").write_text(RCS)
        (root / "etc/init.d/rcS").chmod(0o755)
        (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
        (root / "etc/group").write_text("root:x:0:\n")
        (root / "tmp").chmod(0o1777)
        lines = [f"lxc.rootfs.path = dir:{root}", f"lxc.uts.name = {domain_name(spec.uuid)}",
                 "lxc.net.0.type = empty", "lxc.autodev = 1",
                 "lxc.signal.halt = SIGUSR2",  # busybox init's poweroff
                 f"lxc.cap.drop = {DROPPED_CAPS}", "lxc.mount.auto = proc:mixed sys:ro",
                 "lxc.init.cmd = /bin/init", f"lxc.console.logfile = {spec.console_log}",
                 "lxc.tty.max = 0", "lxc.pty.max = 1"]
        if spec.config_drive is not None:  # for a container, a directory of metadata files
            lines.append(f"lxc.mount.entry = {spec.config_drive} {METADATA_TARGET} none "
                         "ro,bind,nosuid,nodev,noexec 0 0")
        for line in lines:
            if "\n" in line:
                raise VirtError(f"container {spec.uuid}: a path with a newline")
        Path(spec.console_log).parent.mkdir(parents=True, exist_ok=True)
        (d / "config").write_text("\n".join(lines) + "\n")
        self._save(spec.uuid, {"generation": spec.generation, "shares": {}})

    def stop_guest(self, uuid: str, timeout: float) -> None:
        if not self.owns(uuid):
            return
        state, _ = self._info(uuid)
        if state != "MISSING":
            args = ["-k"] if timeout <= 0 else ["-t", str(max(1, int(timeout)))]
            self._lxc("lxc-stop", uuid, *args, what=f"stopping container {uuid}",
                      timeout=max(timeout, 0) + _TIMEOUT)
        self._destroy(uuid)

    def _destroy(self, uuid: str) -> None:
        try:
            self._lxc("lxc-destroy", uuid, "-f", what=f"destroying container {uuid}")
        except VirtError:
            if (self._dir(uuid) / "config").exists():  # still defined: the error stands
                raise
        shutil.rmtree(self._dir(uuid), ignore_errors=True)

    def request_shutdown(self, uuid: str) -> None:
        if self._info(uuid)[0] == "RUNNING":
            self._lxc("lxc-stop", uuid, "--nowait", what=f"shutting down container {uuid}")

    def guest_state(self, uuid: str) -> PowerState:
        state = self._info(uuid)[0]
        if state == "MISSING":
            return PowerState.MISSING
        return PowerState.RUNNING if state == "RUNNING" else PowerState.SHUTOFF

    def list_guests(self) -> dict[str, PowerState]:
        found: dict[str, PowerState] = {}
        if self.path.is_dir():
            for d in self.path.iterdir():
                if d.name.startswith(NAME_PREFIX) and d.is_dir():
                    uuid = d.name[len(NAME_PREFIX):]
                    state = self.guest_state(uuid)
                    if state == PowerState.SHUTOFF and _age(d) > LEFTOVER_AGE:
                        self._destroy(uuid)  # made, never started (a crash in between)
                        continue
                    if state != PowerState.MISSING:
                        found[uuid] = state
        return found

    def watch(self, changed: Callable[[str | None], None]) -> None:
        """No events: the agent's polling sees a container that stopped."""

    # ---- what it has ----------------------------------------------------------------------
    def observe(self, uuid: str) -> GuestView:
        state, pid = self._info(uuid)
        if state != "RUNNING" or pid is None:
            return GuestView(self.guest_state(uuid), cooperative=False)
        record = self._record(uuid)
        mounted = _mounts(pid)
        devices, writable = {}, set()
        for tag, entry in record.get("shares", {}).items():
            options = mounted.get(entry["target"])
            if options is None:
                continue  # recorded, but not mounted (any more): not a device
            devices[tag] = Path(entry["host_path"])
            if "ro" not in options:
                writable.add(tag)
        return GuestView(PowerState.RUNNING, devices, frozenset(writable),
                         record.get("generation"), cooperative=False)

    def guest_share_tags(self, uuid: str) -> set[str]:
        return set(self.observe(uuid).devices)

    def guest_devices(self, uuid: str) -> dict[str, Path]:
        return self.observe(uuid).devices

    # ---- shares ---------------------------------------------------------------------------
    def attach_share(self, uuid: str, share: GuestShare) -> None:
        doing = f"attaching share {share.tag} to container {uuid}"
        if share.transport != "bind" or not share.target:
            raise VirtError(f"{doing}: a container takes bind mounts at a target")
        state, pid = self._info(uuid)
        if state != "RUNNING" or pid is None:
            raise VirtError(f"{doing}: the container is not running")
        record = self._record(uuid)
        entry = record["shares"].get(share.tag)
        if entry is not None and entry["target"] in _mounts(pid):
            return
        argv = [*self.inject, "attach", str(pid), str(share.host_path), share.target]
        _run(argv + (["--read-only"] if share.read_only else []), doing)
        record["shares"][share.tag] = {"host_path": str(share.host_path),
                                       "target": share.target, "read_only": share.read_only}
        self._save(uuid, record)

    def request_detach(self, uuid: str, tag: str) -> None:
        state, pid = self._info(uuid)
        record = self._record(uuid)
        entry = record["shares"].get(tag)
        if entry is None:
            return
        if state == "RUNNING" and pid is not None:
            _run([*self.inject, "detach", str(pid), entry["target"]],
                 f"detaching share {tag} from container {uuid}")
        del record["shares"][tag]
        self._save(uuid, record)

    def detach_share(self, uuid: str, tag: str, timeout: float) -> None:
        self.request_detach(uuid, tag)

    def free_share_slots(self, uuid: str) -> int:
        return max(0, MAX_SHARES - len(self._record(uuid).get("shares", {})))

    def set_config_drive(self, uuid: str, iso: Path) -> None:
        """The metadata directory is bound into the container: a change shows by itself."""


def _mounts(pid: int) -> dict[str, frozenset[str]]:
    """Mount point -> per-mount options, as the container's init sees them."""
    table: dict[str, frozenset[str]] = {}
    try:
        with open(f"/proc/{pid}/mountinfo") as f:
            for line in f:
                fields = line.split()
                table[unescape_field(fields[4])] = frozenset(fields[5].split(","))
    except OSError:
        pass
    return table


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0
