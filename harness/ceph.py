"""A throw-away single-node Ceph cluster with CephFS on 127.0.0.1: one mon, mgr, OSD and MDS from
Debian's Ceph 16.2 packages (scripts/setup-ceph.sh), no systemd, no cephadm. For tests/ceph and
operators' demos (`python -m harness.ceph_demo`, scripts/ceph-demo.sh; docs/ceph.md).

Everything lives under one directory: ceph.conf, keyrings, daemon data, logs (log/), admin
sockets (run/), and cluster.json, which lets another process (the command line's `stop`) find
the daemons again. The mon listens on two free ports; the mgr, OSD and MDS bind free ports of
Ceph's own range, so several clusters (and a developer's own) run side by side.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from attachfs.storage import mountinfo
from harness import cephconf, cephfuse
from harness.cephcmd import Admin, CephError, run
from harness.cephconf import FS_NAME, MDS_ID, MGR_ID, MON_ID, OSD_ID, new_key
from harness.cephfuse import FuseMount
from harness.process import Tracked, free_port, processes_mentioning

__all__ = ["FS_NAME", "CephCluster", "CephError", "FuseMount", "running_ceph"]

_KEY = re.compile(r"AQ[A-Za-z0-9+/]{36}==")  # a cephx secret: 28 bytes in base64


class CephCluster:
    """A single-node cluster under `directory` (empty or absent: `ceph-mon --mkfs` silently
    does nothing on a non-empty data directory). `start()` returns when it is HEALTH_OK with
    an active MDS and the mgr's volumes module answers; `stop()` leaves no daemon and no
    ceph-fuse mount made through it, or raises saying what is left.

    `objectstore`: "memstore" (data in the OSD's memory, fastest) or "bluestore" (a sparse
    10 GiB file under the directory). `die_with_parent`: the daemons get SIGKILL when the
    process that started them dies (tests); False for a cluster that outlives its starter."""

    def __init__(self, directory: Path, *, objectstore: str = "memstore",
                 die_with_parent: bool = True) -> None:
        if objectstore not in ("memstore", "bluestore"):
            raise ValueError(f"objectstore must be memstore or bluestore, not {objectstore!r}")
        self.dir = directory.resolve()
        self.objectstore = objectstore
        self.die_with_parent = die_with_parent
        self.fsid = ""
        self.mon_ports = (0, 0)  # (msgr2, msgr1)
        self.daemons: list[Tracked] = []
        self.mounts: list[FuseMount] = []
        self.start_seconds = 0.0
        self._admin: Admin | None = None

    # ---- where it is -------------------------------------------------------------------------
    @property
    def conf_path(self) -> Path:
        return self.dir / "ceph.conf"

    @property
    def admin_keyring(self) -> Path:
        return self.dir / "ceph.client.admin.keyring"

    @property
    def admin_key(self) -> str:
        found = _KEY.search(self.admin_keyring.read_text())
        assert found, f"no key in {self.admin_keyring}"
        return found.group(0)

    @property
    def mon_addrs(self) -> str:
        """The mon's address vector, as `-m` and `mon host` take it."""
        v2, v1 = self.mon_ports
        return f"[v2:127.0.0.1:{v2},v1:127.0.0.1:{v1}]"

    @property
    def mon_host(self) -> str:
        """host:port of the mon's v1 address, as Manila's export locations name monitors
        (ceph-fuse's `-m` takes it too)."""
        return f"127.0.0.1:{self.mon_ports[1]}"

    def export_location(self, path_in_fs: str) -> str:
        """`path_in_fs` as Manila's CephFS driver exports it: "127.0.0.1:PORT:/volumes/…"."""
        return f"{self.mon_host}:{path_in_fs}"

    # ---- commands ----------------------------------------------------------------------------
    def ceph(self, *args: str, timeout: float = 60) -> str:
        """`ceph ARGS…` (the CLI, an argument list, never a shell string) as client.admin of
        this cluster; its standard output. CephError when it fails."""
        return run(["ceph", "--conf", str(self.conf_path), "--name", "client.admin",
                    "--keyring", str(self.admin_keyring), *args], timeout)

    def ceph_json(self, *args: str, timeout: float = 60) -> Any:
        return json.loads(self.ceph(*args, "--format", "json", timeout=timeout))

    def command(self, prefix: str, *, mgr: bool = False, inbuf: bytes = b"",
                **args: Any) -> str:
        """A mon (or mgr) command as JSON over librados, without the CLI's 0.3–1 s per call:
        command("fs subvolume info", mgr=True, vol_name="cephfs", sub_name="x")."""
        if self._admin is None:
            self._admin = Admin(self.conf_path, self.admin_keyring)
        return self._admin.command(prefix, mgr=mgr, inbuf=inbuf, **args)

    # ---- lifecycle -----------------------------------------------------------------------------
    def start(self, timeout: float = 120) -> None:
        if self.dir.exists() and any(self.dir.iterdir()):
            raise RuntimeError(f"{self.dir} is not empty: a cluster needs a fresh directory")
        began = time.monotonic()
        try:
            self._create()
            self._spawn("mon", MON_ID)
            self._wait_mon(timeout)
            # No device health pool: its PG alone adds ~2 s to the start, for the SMART data
            # of devices a throw-away OSD does not have. (Forced: the mon learns the mgr's
            # module options only from a running mgr.)
            self.command("config set", who="mgr", name="mgr/devicehealth/enable_monitoring",
                         value="false", force=True)
            self._spawn("mgr", MGR_ID)  # the mgr and the MDS start while the OSD is made
            self._spawn("mds", MDS_ID)
            self._create_osd()
            self._spawn("osd", OSD_ID)
            self._create_fs()
            self._wait_ready(timeout)
        except BaseException:
            self.stop(check=False)
            raise
        self.start_seconds = time.monotonic() - began
        self.save()

    def _create(self) -> None:
        for sub in ("log", "run", f"mon.{MON_ID}", f"mgr.{MGR_ID}", f"mds.{MDS_ID}",
                    f"osd.{OSD_ID}"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        cephconf.mgr_modules(self.dir / "mgr-modules")
        self.fsid = str(uuid.uuid4())
        self.mon_ports = (free_port(), free_port())
        self.conf_path.write_text(cephconf.conf(self.dir, self.fsid, self.mon_addrs,
                                                self.objectstore))
        keys = {entity: new_key() for entity in cephconf.CAPS}
        mon_keyring = self.dir / "mon.keyring"
        cephfuse.write_secret(mon_keyring, "".join(cephfuse.keyring_text(e, keys[e], caps)
                                                   for e, caps in cephconf.CAPS.items()))
        for entity, path in (("client.admin", self.admin_keyring),
                             (f"mgr.{MGR_ID}", self.dir / f"mgr.{MGR_ID}" / "keyring"),
                             (f"mds.{MDS_ID}", self.dir / f"mds.{MDS_ID}" / "keyring")):
            cephfuse.write_keyring(path, entity, keys[entity])
        monmap = self.dir / "monmap"
        run(["monmaptool", "--create", "--fsid", self.fsid, "--addv", MON_ID, self.mon_addrs,
             str(monmap)])
        run(["ceph-mon", "--conf", str(self.conf_path), "--mkfs", "-i", MON_ID,
             "--monmap", str(monmap), "--keyring", str(mon_keyring)])

    def _spawn(self, kind: str, ident: str) -> None:
        # Foreground (-f) children in their own session: a daemonized ceph-mgr breaks
        # `fs subvolume authorize` (EBADF), and PID 1 reaps a daemonized process late.
        argv = [f"ceph-{kind}", "-f", "--conf", str(self.conf_path), "-i", ident]
        self.daemons.append(Tracked.spawn(f"{kind}.{ident}", argv,
                                          self.dir / "log" / f"{kind}.{ident}.out",
                                          die_with_parent=self.die_with_parent))

    def _check_daemons(self) -> None:
        for d in self.daemons:
            if not d.alive():
                raise RuntimeError(f"ceph {d.name} (pid {d.pid}) exited; its output:\n"
                                   f"{d.tail()}\nlog: {self.dir}/log/ceph-{d.name}.log")

    def _wait_mon(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self._check_daemons()
            try:
                socket.create_connection(("127.0.0.1", self.mon_ports[1]), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"mon did not listen within {timeout:.0f}s") from None
                time.sleep(0.05)

    def _create_osd(self) -> None:
        osd_uuid, key = str(uuid.uuid4()), new_key()
        osd_id = self.command("osd new", uuid=osd_uuid,
                              inbuf=json.dumps({"cephx_secret": key}).encode()).strip()
        if osd_id != OSD_ID:
            raise RuntimeError(f"expected OSD id {OSD_ID}, got {osd_id!r}")
        cephfuse.write_keyring(self.dir / f"osd.{OSD_ID}" / "keyring", f"osd.{OSD_ID}", key)
        run(["ceph-osd", "--conf", str(self.conf_path), "-i", OSD_ID, "--mkfs",
             "--osd-uuid", osd_uuid], timeout=120)

    def _create_fs(self) -> None:
        for pool in (f"{FS_NAME}_metadata", f"{FS_NAME}_data"):
            self.command("osd pool create", pool=pool, pg_num=8, pgp_num=8)
        self.command("fs new", fs_name=FS_NAME, metadata=f"{FS_NAME}_metadata",
                     data=f"{FS_NAME}_data")
        # one MDS and no standby: not a health warning here
        self.command("fs set", fs_name=FS_NAME, var="standby_count_wanted", val="0")

    def not_ready(self) -> list[str]:
        """Why the cluster is not ready (empty when it is): health, mgr, MDS, PGs."""
        status = json.loads(self.command("status", format="json"))
        why = []
        health = status["health"]
        if health["status"] != "HEALTH_OK":
            why.append(f"{health['status']}: " + "; ".join(
                c["summary"]["message"] for c in health.get("checks", {}).values()))
        if not status["mgrmap"]["available"]:
            why.append("no active mgr")
        ranks = status["fsmap"].get("by_rank", [])
        if not ranks or any(r["status"] != "up:active" for r in ranks):
            why.append(f"MDS not active: {ranks}")
        pgs = status["pgmap"]
        clean = sum(s["count"] for s in pgs.get("pgs_by_state", [])
                    if s["state_name"] == "active+clean")
        if pgs["num_pgs"] == 0 or clean != pgs["num_pgs"]:
            why.append(f"PGs: {pgs.get('pgs_by_state')}")
        return why

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self._check_daemons()
            why = self.not_ready()
            if not why:
                try:  # the volumes module answers once the mgr has loaded it
                    self.command("fs subvolumegroup ls", mgr=True, vol_name=FS_NAME)
                    return
                except CephError as exc:
                    why = [str(exc)]
            if time.monotonic() > deadline:
                raise TimeoutError(f"cluster under {self.dir} not ready after {timeout:.0f}s: "
                                   + "; ".join(why))
            time.sleep(0.1)

    def stop(self, check: bool = True, timeout: float = 30) -> None:
        """Unmount the ceph-fuse mounts made through this object (while the cluster still
        answers, so that they end cleanly), close the librados connection, SIGKILL every
        daemon's process group (the MDS ignores SIGTERM; the data is throw-away) and wait
        until each is reaped, not merely a zombie. `check`: raise if anything is left."""
        errors = []
        for m in list(self.mounts):
            try:
                m.unmount(timeout)
                self.mounts.remove(m)
            except Exception as exc:  # noqa: BLE001 - the daemons are stopped whatever happens
                errors.append(f"unmount {m.mountpoint}: {exc}")
        if self._admin is not None:
            self._admin.close()
            self._admin = None
        for d in self.daemons:
            d.kill()
        for d in self.daemons:
            d.wait_gone(timeout)
        if self.dir.exists():
            self.save()
        left = errors + self.leftovers()
        if check and left:
            raise RuntimeError(f"Ceph cluster under {self.dir} left: " + "; ".join(left))

    @contextmanager
    def monitor_stopped(self, timeout: float = 120) -> Iterator[None]:
        """The monitor killed for the block (clients cannot reach the cluster: an outage as a
        host sees it), then started again on its data, and the cluster ready again after."""
        (mon,) = [d for d in self.daemons if d.name == f"mon.{MON_ID}"]
        if self._admin is not None:  # its librados session would wait for the monitor
            self._admin.close()
            self._admin = None
        mon.kill()
        mon.wait_gone(30)
        self.daemons.remove(mon)
        try:
            yield
        finally:
            self._spawn("mon", MON_ID)
            self._wait_mon(timeout)
            self._wait_ready(timeout)

    def leftovers(self) -> list[str]:
        """What is left of the cluster: its daemons and ceph-fuse processes by pid and start
        time (zombies included), any process whose command line names its directory, its
        mounts."""
        left = []
        for p in [*self.daemons, *(m.proc for m in self.mounts)]:
            state = p.state()
            if state is not None:
                left.append(f"{p.name} pid {p.pid} (state {state})")
        tracked = {p.pid for p in self.daemons} | {m.proc.pid for m in self.mounts}
        left += [f"pid {pid}: {cmd[:120]}" for pid, cmd in processes_mentioning(self.dir)
                 if pid not in tracked]
        left += [f"mount {m.mountpoint}" for m in self.mounts if m.mounted()]
        left += [f"mount {p}" for p in mountinfo.mount_points(self.dir)]
        return left

    def destroy(self) -> None:
        """stop(), then remove the directory."""
        self.stop()
        shutil.rmtree(self.dir)

    # ---- CephFS and cephx ----------------------------------------------------------------
    def subvolume_create(self, name: str, size_bytes: int) -> str:
        """A subvolume of `size_bytes` (its quota); its path in the filesystem."""
        self.command("fs subvolume create", mgr=True, vol_name=FS_NAME, sub_name=name,
                     size=size_bytes)
        return self.command("fs subvolume getpath", mgr=True, vol_name=FS_NAME,
                            sub_name=name).strip()

    def subvolume_authorize(self, name: str, auth_id: str, access_level: str = "rw",
                            tenant_id: str | None = None) -> str:
        """A key for client.`auth_id` limited to the subvolume, as Manila's cephx rule (which
        names its project as `tenant_id`: another tenant then cannot use the same ID)."""
        args: dict[str, Any] = {"tenant_id": tenant_id} if tenant_id else {}
        key = self.command("fs subvolume authorize", mgr=True, vol_name=FS_NAME, sub_name=name,
                           auth_id=auth_id, access_level=access_level, **args).strip()
        if not key:  # the volumes module returns the key only to a caller naming a tenant
            key = self.command("auth get-key", entity=_entity(auth_id)).strip()
        assert _KEY.fullmatch(key), f"not a cephx key: {key!r}"
        return key

    def auth_delete(self, auth_id: str) -> None:
        self.command("auth del", entity=_entity(auth_id))

    def auth_exists(self, auth_id: str) -> bool:
        try:
            self.command("auth get", entity=_entity(auth_id))
        except CephError as exc:
            if exc.errno_name == "ENOENT":
                return False
            raise
        return True

    def fuse_mount(self, path_in_fs: str, mountpoint: Path, auth_id: str, key: str,
                   timeout: float = 30) -> FuseMount:
        """Mount `path_in_fs` on `mountpoint` as client.`auth_id` with only `key` (no conf);
        the handle's unmount() (or `with`) removes it, and `stop()` any left."""
        handle = cephfuse.mount(self.mon_addrs, path_in_fs, mountpoint, auth_id, key, self.dir,
                                die_with_parent=self.die_with_parent, timeout=timeout)
        self.mounts = [m for m in self.mounts if m.proc.state() is not None]
        self.mounts.append(handle)
        return handle

    # ---- for an operator, and for another process (the command line) ----------------------
    def rss_mib(self) -> dict[str, float]:
        """Resident memory of each running daemon, MiB."""
        out = {}
        for d in self.daemons:
            try:
                found = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{d.pid}/status").read_text())
            except OSError:
                continue
            if d.alive() and found:
                out[d.name] = int(found.group(1)) / 1024
        return out

    def save(self) -> None:
        (self.dir / "cluster.json").write_text(json.dumps({
            "fsid": self.fsid, "mon_ports": list(self.mon_ports),
            "objectstore": self.objectstore, "start_seconds": self.start_seconds,
            "daemons": [d.to_json() for d in self.daemons],
            "mounts": [m.to_json() for m in self.mounts]}, indent=1))

    @classmethod
    def load(cls, directory: Path) -> CephCluster:
        """The cluster a `start()`, maybe of another process, left under `directory`."""
        state = json.loads((directory / "cluster.json").read_text())
        cluster = cls(directory, objectstore=state["objectstore"], die_with_parent=False)
        cluster.fsid = state["fsid"]
        cluster.mon_ports = (int(state["mon_ports"][0]), int(state["mon_ports"][1]))
        cluster.start_seconds = float(state["start_seconds"])
        cluster.daemons = [Tracked.from_json(d) for d in state["daemons"]]
        cluster.mounts = [FuseMount.from_json(m) for m in state["mounts"]]
        return cluster


def _entity(auth_id: str) -> str:
    """client.ID for an ID; an entity name (client.x, mds.a, …) as it is."""
    return auth_id if auth_id.split(".", 1)[0] in ("client", "mds", "mgr", "osd", "mon") \
        else f"client.{auth_id}"


@contextmanager
def running_ceph(directory: Path, **kwargs: Any) -> Iterator[CephCluster]:
    """A started cluster under `directory`, stopped on the way out (nothing left, or an
    error saying what is)."""
    cluster = CephCluster(directory, **kwargs)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
