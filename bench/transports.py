"""Part 7: the same I/O through each transport into one guest, beside the host and beside the
guest's own memory.

One guest of a real `attachfs serve` has three built-in shares (ext4 images on this host), one
per transport: virtio-fs (`vfs`, also the command channel), 9p (`p9`, attached while stopped:
no hot plug) and NFS from the host's NFS-Ganesha over the guest's private link (`nfs`). In each,
and in the guest's own tmpfs (/tmp), the guest runs as root:
- sequential: write SIZE_MIB with dd (bs 1 MiB) and fsync; read it back after dropping caches
  (the guest's and the host's);
- random: RANDOM_OPS 4 KiB writes (then one fsync) and reads at random offsets of a 16 MiB file,
  each a busybox dd (a process per operation: the guest's tmpfs row shows that cost alone).
The host does the same on the shares' directories and on its own tmpfs (/dev/shm), from Python
(no process per operation). Ratios: each transport against the host's run on the same share,
and against the guest's tmpfs; the guest's tmpfs against the host's tmpfs says how much TCG
(no KVM here) slows everything a guest does, before any transport.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
import uuid
from pathlib import Path

from bench.datapath import drop_host_caches
from bench.datapath import host_io as host_seq_io
from bench.measure import Figures, log
from harness.guest_shell import READY, GuestShell, user_data
from harness.serve import Serve

SIZE_MIB = 256  # ~0.3 s at the fastest: /proc/uptime's 10 ms steps are ~3 %
RANDOM_OPS = 200
RANDOM_FILE_MIB = 16
TRANSPORTS = (("vfs", "virtiofs"), ("p9", "9p"), ("nfs", "nfs"))
EXT = {"OpenStack-API-Version": "compute 2.97, attachfs 1.3"}
# Each step prints "<what> <seconds>", timed with /proc/uptime (10 ms steps); the host drops
# its page cache before each read step, as it does before its own reads.
GUEST_STEPS = {
    "seq-write": """d={dir}; rm -f $d/seq.dat; sync; echo 3 > /proc/sys/vm/drop_caches
t0=$(cut -d' ' -f1 /proc/uptime)
dd if=/dev/zero of=$d/seq.dat bs=1M count={size} conv=fsync 2>/dev/null
t1=$(cut -d' ' -f1 /proc/uptime)
echo "seq-write $(echo "$t1 $t0" | awk '{{print $1 - $2}}')"
""",
    "seq-read": """d={dir}; echo 3 > /proc/sys/vm/drop_caches
t0=$(cut -d' ' -f1 /proc/uptime)
dd if=$d/seq.dat of=/dev/null bs=1M 2>/dev/null
t1=$(cut -d' ' -f1 /proc/uptime)
echo "seq-read $(echo "$t1 $t0" | awk '{{print $1 - $2}}')"
rm -f $d/seq.dat
""",
    "rnd-write": """d={dir}; dd if=/dev/zero of=$d/rnd.dat bs=1M count={rsize} conv=fsync 2>/dev/null
t0=$(cut -d' ' -f1 /proc/uptime)
for o in {offsets}; do dd if=/dev/zero of=$d/rnd.dat bs=4k count=1 seek=$o conv=notrunc 2>/dev/null; done
sync; t1=$(cut -d' ' -f1 /proc/uptime)
echo "rnd-write $(echo "$t1 $t0" | awk '{{print $1 - $2}}')"
""",
    "rnd-read": """d={dir}; echo 3 > /proc/sys/vm/drop_caches
t0=$(cut -d' ' -f1 /proc/uptime)
for o in {offsets}; do dd if=$d/rnd.dat of=/dev/null bs=4k count=1 skip=$o 2>/dev/null; done
t1=$(cut -d' ' -f1 /proc/uptime)
echo "rnd-read $(echo "$t1 $t0" | awk '{{print $1 - $2}}')"
rm -f $d/rnd.dat
""",
}


def offsets(seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(RANDOM_FILE_MIB * 256) for _ in range(RANDOM_OPS)]


def host_io(directory: Path, seed: int) -> dict[str, float]:
    """The same four measures on the host, in seconds."""
    out = {}
    drop_host_caches()
    out["seq-write"], out["seq-read"] = host_seq_io(directory, SIZE_MIB)
    path = directory / f"host-{uuid.uuid4().hex[:8]}.dat"
    block = b"\0" * (1 << 20)
    with open(path, "wb") as f:
        for _ in range(RANDOM_FILE_MIB):
            f.write(block)
        os.fsync(f.fileno())
    page = b"\0" * 4096
    fd = os.open(path, os.O_RDWR)
    try:
        t0 = time.perf_counter()
        for o in offsets(seed):
            os.pwrite(fd, page, o * 4096)
        os.fsync(fd)
        out["rnd-write"] = time.perf_counter() - t0
        drop_host_caches()
        t0 = time.perf_counter()
        for o in offsets(seed):
            os.pread(fd, 4096, o * 4096)
        out["rnd-read"] = time.perf_counter() - t0
    finally:
        os.close(fd)
        path.unlink()
    return out


def guest_io(shell: GuestShell, directory: str, seed: int) -> dict[str, float]:
    found = {}
    for what, template in GUEST_STEPS.items():
        if what.endswith("read"):
            drop_host_caches()
        out = shell.run(template.format(dir=directory, size=SIZE_MIB, rsize=RANDOM_FILE_MIB,
                                        offsets=" ".join(map(str, offsets(seed)))), 900)
        for line in out.splitlines():
            key, _, value = line.partition(" ")
            if key == what:
                found[what] = max(float(value), 0.01)  # /proc/uptime has 10 ms steps
        if what not in found:
            raise RuntimeError(f"guest {what} in {directory}: {out[-500:]}")
    return found


def _record(fig: Figures, side: str, runs: list[dict[str, float]]) -> None:
    for what in ("seq-write", "seq-read"):
        fig[f"tx_{side}_{what.replace('-', '_')}_mib_s"] = SIZE_MIB / min(r[what] for r in runs)
    for what in ("rnd-write", "rnd-read"):
        fig[f"tx_{side}_{what.replace('-', '_')}_ops_s"] = RANDOM_OPS / min(r[what] for r in runs)


def transports_part(state_root: Path, args: argparse.Namespace, fig: Figures) -> None:
    work = Path(tempfile.mkdtemp(prefix="tx-", dir=state_root))
    serve = Serve(work / "s", "[agent]\nresync_interval = 1000000.0\n", token="bench:bench",
                  images_dir=Path(args.images_dir), http_timeout=60)
    try:
        serve.start()
        _measure(serve, args, fig)
    finally:
        serve.cleanup()


def _measure(serve: Serve, args: argparse.Namespace, fig: Figures) -> None:
    shares = {tag: serve.new_share(f"bench-{tag}-{uuid.uuid4().hex[:6]}")
              for tag, _ in TRANSPORTS}
    shell = GuestShell(shares["vfs"][1])
    r = serve.http.post("/v2.1/servers", json={"server": {
        "name": "bench-tx", "flavorRef": "4", "imageRef": "debian-busybox",  # 1 GiB: tmpfs
        "user_data": user_data("vfs")}})
    r.raise_for_status()
    sid = str(r.json()["server"]["id"])
    serve.wait_status(sid, "ACTIVE", 900, 0.2)
    serve.action(sid, {"os-stop": None}).raise_for_status()
    serve.wait_status(sid, "SHUTOFF", 300)
    for tag, transport in TRANSPORTS:
        r = serve.http.post(f"/v2.1/servers/{sid}/shares", headers=EXT, json={"share": {
            "share_id": shares[tag][0], "tag": tag, "transport": transport}})
        if r.status_code != 201:
            raise RuntimeError(f"attach {tag} over {transport}: {r.status_code} {r.text[:300]}")
    serve.action(sid, {"os-start": None}).raise_for_status()
    serve.wait_status(sid, "ACTIVE", 900, 0.2)
    for tag, _ in TRANSPORTS:
        serve.wait_console(sid, f"attachfs-guest: mounted share {tag} at", 300)
    serve.wait_console(sid, READY, 300)
    runs = 1 if args.quick else 3
    try:
        places = [(tag, f"/mnt/{tag}", shares[tag][1]) for tag, _ in TRANSPORTS]
        places.append(("tmpfs", "/tmp", Path("/dev/shm")))
        for side, guest_dir, host_dir in places:
            host = [host_io(host_dir, seed) for seed in range(runs)]
            guest = [guest_io(shell, guest_dir, seed) for seed in range(runs)]
            _record(fig, f"{side}_host", host)
            _record(fig, f"{side}_guest", guest)
            log(f"{side}: guest seq write {fig[f'tx_{side}_guest_seq_write_mib_s']:.1f} MiB/s "
                f"read {fig[f'tx_{side}_guest_seq_read_mib_s']:.1f} MiB/s, random write "
                f"{fig[f'tx_{side}_guest_rnd_write_ops_s']:.0f}/s read "
                f"{fig[f'tx_{side}_guest_rnd_read_ops_s']:.0f}/s")
    finally:
        serve.http.delete(f"/v2.1/servers/{sid}")
        serve.wait_gone(sid, 300)
