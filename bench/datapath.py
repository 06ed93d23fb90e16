"""Part 6: data through each path into a guest, beside the same I/O on the host.

One running guest of a real `attachfs serve` has three shares attached, one of each kind:
- built-in: an ext4 image on this host, bind-mounted, over virtio-fs;
- CephFS: a throw-away single-node Ceph (harness/ceph.py, memstore), declared as a static CEPHFS
  share with its own cephx user; the agent mounts it with ceph-fuse, over virtio-fs;
- NFS: a throw-away NFS-Ganesha (harness/ganesha.py, FSAL VFS), declared as a static NFS share;
  the agent mounts it with attachfs's FUSE client (storage/nfs_fuse.py), over virtio-fs.
In each, the guest writes SIZE_MIB (dd, then fsync) and reads it back after its page cache and
the host's are dropped, timed with /proc/uptime (10 ms steps). The baselines, in the same run:
the same I/O on the host, on the built-in share's directory, on a ceph-fuse mount of the same
CephFS path with the same key, and on a FUSE NFS mount of the same export (the connectors the
agent uses, mounted by the bench itself). Best of 3 each; ratio: guest MiB/s / host MiB/s.
"""

from __future__ import annotations

import argparse
import base64
import os
import tempfile
import time
import uuid
from pathlib import Path

from attachfs.storage.base import HostCredentials
from attachfs.storage.cephfs import CephFsConnector
from attachfs.storage.nfs import NfsConnector
from bench.console import tail
from bench.measure import Figures, log
from harness.ceph import running_ceph
from harness.ganesha import running_ganesha
from harness.serve import Serve

SIZE_MIB = 64
KINDS = ("builtin", "cephfs", "nfs")
GUEST_IO = r"""#!/bin/sh
# `io-write` in a mounted share: write SIZE MiB there with fsync; `io-read`: drop the page
# cache, read it back. Each prints the /proc/uptime stamps around its I/O.
(
  while true; do
    for r in /mnt/*/io-write /mnt/*/io-read; do
      [ -f "$r" ] || continue
      d=${r%/*}; n=$(cat "$r"); rm -f "$r"; sync
      case "$r" in
        */io-write)
          t0=$(cut -d' ' -f1 /proc/uptime)
          dd if=/dev/zero of="$d/io.dat" bs=1M count=SIZE conv=fsync 2>/dev/null
          t1=$(cut -d' ' -f1 /proc/uptime) ;;
        */io-read)
          echo 3 > /proc/sys/vm/drop_caches
          t0=$(cut -d' ' -f1 /proc/uptime)
          dd if="$d/io.dat" of=/dev/null bs=1M 2>/dev/null
          t1=$(cut -d' ' -f1 /proc/uptime)
          rm -f "$d/io.dat" ;;
      esac
      echo "guest-io $n $t0 $t1"
    done
    sleep 0.2
  done
) </dev/null >/dev/console 2>&1 &
echo "guest-io: ready"
""".replace("SIZE", str(SIZE_MIB))


def drop_host_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def host_io(directory: Path, size_mib: int = SIZE_MIB) -> tuple[float, float]:
    """(write + fsync, read after dropping the page cache) of `size_mib` on the host, in s."""
    path = directory / f"host-io-{uuid.uuid4().hex[:8]}.dat"
    block = b"\0" * (1 << 20)
    t0 = time.perf_counter()
    with open(path, "wb") as f:
        for _ in range(size_mib):
            f.write(block)
        f.flush()
        os.fsync(f.fileno())
    written = time.perf_counter() - t0
    drop_host_caches()
    t0 = time.perf_counter()
    with open(path, "rb") as f:
        while f.read(1 << 20):
            pass
    read = time.perf_counter() - t0
    path.unlink()
    return written, read


def guest_io(sid: str, share_dir: Path, console: Path) -> tuple[float, float]:
    """The same in the guest, asked through the share itself (`share_dir`: a host view of it);
    the host's page cache is dropped between the write and the read, as for host_io."""
    times = []
    for step in ("io-write", "io-read"):
        if step == "io-read":
            drop_host_caches()
        nonce = uuid.uuid4().hex[:12]
        with tail(console) as con:
            (share_dir / step).write_text(nonce)
            con.wait(f"guest-io {nonce} ", 300)
            line = next(x for x in con.text.splitlines() if x.startswith(f"guest-io {nonce} "))
        t0, t1 = (float(x) for x in line.split()[2:4])
        times.append(t1 - t0)
    return times[0], times[1]


def datapath_part(state_root: Path, args: argparse.Namespace, fig: Figures) -> None:
    work = Path(tempfile.mkdtemp(prefix="dp-", dir=state_root))  # short: socket paths below
    with running_ceph(work / "ceph") as ceph, running_ganesha(work / "ganesha") as ganesha:
        path = ceph.subvolume_create("bench", 4 << 30)
        auth_id = "attachfs-bench"
        key = ceph.subvolume_authorize("bench", auth_id)
        keyring = work / "bench.keyring"
        keyring.write_text(f"[client.{auth_id}]\n\tkey = {key}\n")
        keyring.chmod(0o600)
        ids = {"cephfs": str(uuid.uuid4()), "nfs": str(uuid.uuid4())}
        config = ("[agent]\nresync_interval = 1000000.0\n"
                  f'[[static_shares]]\nid = "{ids["cephfs"]}"\nname = "bench-cephfs"\n'
                  f'protocol = "CEPHFS"\nexport = "{ceph.export_location(path)}"\n'
                  f'cephx_id = "{auth_id}"\ncephx_keyring = "{keyring}"\nsize_gib = 4\n'
                  f'[[static_shares]]\nid = "{ids["nfs"]}"\nname = "bench-nfs"\n'
                  f'export = "{ganesha.export_location}"\n')
        serve = Serve(work / "s", config, token="bench:bench",
                      images_dir=Path(args.images_dir), http_timeout=60)
        try:
            serve.start()
            ids["builtin"] = serve.new_share(f"bench-io-{uuid.uuid4().hex[:6]}")[0]
            _measure(serve, ids, ceph.export_location(path), HostCredentials(auth_id, key),
                     ganesha.export_location, work, args, fig)
        finally:
            serve.cleanup()


def _measure(serve: Serve, ids: dict[str, str], ceph_export: str, creds: HostCredentials,
             nfs_export: str, work: Path, args: argparse.Namespace, fig: Figures) -> None:
    user_data = base64.b64encode(GUEST_IO.encode()).decode()
    r = serve.http.post("/v2.1/servers", json={"server": {
        "name": "bench-io", "flavorRef": "2", "imageRef": "debian-busybox",
        "user_data": user_data}})
    r.raise_for_status()
    sid = str(r.json()["server"]["id"])
    serve.wait_status(sid, "ACTIVE", 900, 0.2)
    console = serve.state_dir / "console" / f"{sid}.log"
    serve.wait_console(sid, "guest-io: ready", 300)
    for kind in KINDS:
        r = serve.http.post(f"/v2.1/servers/{sid}/shares",
                            json={"share": {"share_id": ids[kind], "tag": kind}})
        if r.status_code != 201:
            raise RuntimeError(f"attach {kind}: HTTP {r.status_code}: {r.text[:300]}")
    for kind in KINDS:
        serve.wait_mapping(sid, ids[kind], "active", 300)
        serve.wait_console(sid, f"attachfs-guest: mounted share {kind} at", 120)
    # The host's own views of the same data: the same clients the agent mounts with.
    ceph_host = CephFsConnector(work / "host-mounts", work / "host-cephfs")
    nfs_host = NfsConnector(work / "host-mounts", work / "host-nfs", client="fuse")
    views = {"builtin": serve.state_dir / "shares" / ids["builtin"],
             "cephfs": work / "host-mounts" / "cephfs", "nfs": work / "host-mounts" / "nfs"}
    ceph_host.mount(ceph_export, views["cephfs"], False, creds)
    nfs_host.mount(nfs_export, views["nfs"], False)
    try:
        runs = 1 if args.quick else 3
        for kind in KINDS:
            host = [host_io(views[kind]) for _ in range(runs)]
            guest = [guest_io(sid, views[kind], console) for _ in range(runs)]
            for side, samples in (("host", host), ("guest", guest)):
                write = min(w for w, _ in samples)
                read = min(r for _, r in samples)
                fig[f"io_{kind}_{side}_write_mib_s"] = SIZE_MIB / write
                fig[f"io_{kind}_{side}_read_mib_s"] = SIZE_MIB / read
            log(f"{kind}: guest write {fig[f'io_{kind}_guest_write_mib_s']:.1f} MiB/s "
                f"(host {fig[f'io_{kind}_host_write_mib_s']:.1f}), read "
                f"{fig[f'io_{kind}_guest_read_mib_s']:.1f} MiB/s "
                f"(host {fig[f'io_{kind}_host_read_mib_s']:.1f})")
    finally:
        ceph_host.unmount(views["cephfs"])
        nfs_host.unmount(views["nfs"])
        serve.http.delete(f"/v2.1/servers/{sid}")
        serve.wait_gone(sid, 300)
