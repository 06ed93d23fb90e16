"""Part 4: hot attach and detach on a running guest, attachfs against a floor.

attachfs: POST .../shares on an ACTIVE server -> the guest console says `attachfs-guest:
mounted share hotN at`, and DELETE -> 404. The floor, measured in the same run: a second guest
of our own (LibvirtDriver(owner="bench-floor"), no attachfs API, agent or host mount) whose
user_data tries `mount -t virtiofs floorN` every 50 ms, timed from `driver.attach_share`
(libvirt attach-device) to its console line. Its detach, as a person would do it by hand: ask
the guest to unmount (a file UNMOUNT_MARK put in the share, which the guest looks for every
50 ms), see it say so on its console, then `driver.detach_share` (libvirt detach-device,
waiting for the device to leave); timed from the request to the device gone. attachfs's DELETE
-> 404 goes the same way: the guest unmounts when told, then the device leaves.

Part 4 alone (its own serve, share and server; the same rounds as in `python -m bench`):

    .venv/bin/python -m bench.hotplug [--hot-rounds N] [--images-dir DIR] [--json FILE]

The images directory defaults to $ATTACHFS_IMAGES (as harness/serve.py), else
/var/lib/attachfs/images.
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import re
import tempfile
import time
import uuid
from pathlib import Path

from bench.console import TAIL_POLL, tail
from bench.measure import Figures, attach, detach, log, mapping_status, stats
from bench.power import other_guests, start_server, stop_server
from harness.host import remove_state
from harness.serve import IMAGES_DIR, Serve

FLOOR_OWNER = "bench-floor"
UNMOUNT_MARK = "bench-unmount"
FLOOR_SCRIPT = """#!/bin/sh
# The floor: mount by hand, as a person would, trying every 50 ms until the device is there.
(
  i=0
  while [ "$i" -lt {count} ]; do
    t=floor$i
    mkdir -p /mnt/$t
    until mount -t virtiofs $t /mnt/$t 2>/dev/null; do sleep 0.05; done
    echo "bench-floor: mounted share $t at /mnt/$t"
    # asked to unmount: a file the host puts in the share (its directory listing is read
    # from the host each time; a lookup of a missing name may be cached for a second)
    until ls -a /mnt/$t | grep -qx {mark}; do sleep 0.05; done
    umount /mnt/$t
    echo "bench-floor: unmounted share $t"
    i=$((i + 1))
  done
) </dev/null >/dev/console 2>&1 &
echo "bench-floor: polling"
"""
# The floor of detaching several shares at once: per batch (its size from {sizes}), mount every
# tag of the batch, then, when asked, unmount them all with one umount (as attachfs's guest
# agent does), and let the host unplug them together.
TOGETHER_FLOOR_SCRIPT = """#!/bin/sh
(
  b=0
  for n in {sizes}; do
    j=0; paths=
    while [ "$j" -lt "$n" ]; do
      t=tog${b}x$j
      mkdir -p /mnt/$t
      until mount -t virtiofs $t /mnt/$t 2>/dev/null; do sleep 0.05; done
      paths="$paths /mnt/$t"
      j=$((j + 1))
    done
    echo "bench-floor: mounted batch $b"
    until ls -a /mnt/tog${b}x0 | grep -qx {mark}; do sleep 0.05; done
    umount $paths
    echo "bench-floor: unmounted batch $b"
    b=$((b + 1))
  done
) </dev/null >/dev/console 2>&1 &
echo "bench-floor: polling"
"""
HotRow = tuple[float, float, float, float | None, float]
FloorRow = tuple[float, float, float]


class FloorGuest:
    """A guest of our own, booted with LibvirtDriver directly; the real metadata service over a
    small SQLite database answers its agent (no attachments) and hands it FLOOR_SCRIPT."""

    def __init__(self, state: Path, images_dir: str, rounds: int,
                 script: str | None = None) -> None:
        from attachfs.db.engine import Database, migrate
        from attachfs.metadata.sockets import MetadataSockets
        from attachfs.virt.base import GuestSpec
        from attachfs.virt.images import load_images
        from attachfs.virt.libvirt import LibvirtDriver

        self.uuid = str(uuid.uuid4())
        self.console = state / "console.log"
        self.share_dir = state / "share"
        self.share_dir.mkdir()
        images = [i for i in load_images(Path(images_dir)) if i.name == "debian-busybox"]
        if not images:
            raise RuntimeError(f"no debian-busybox image in {images_dir}")
        url = f"sqlite:///{state / 'floor-guest.db'}"
        migrate(url)
        self.db = Database(url)
        if script is None:
            script = FLOOR_SCRIPT.replace("{count}", str(rounds))
        script = script.replace("{mark}", UNMOUNT_MARK)
        self._add_server(images[0].id, script)
        self.metadata = MetadataSockets(self.db, state / "metadata")
        self.driver = LibvirtDriver(owner=FLOOR_OWNER)  # sees only this guest, no one else's
        self.spec = GuestSpec(uuid=self.uuid, name="bench-floor", vcpus=1, memory_mib=256,
                              image=images[0], console_log=self.console,
                              metadata_socket=self.metadata.ensure(self.uuid))

    def _add_server(self, image_id: str, script: str) -> None:
        from attachfs.db.tables import Server

        with self.db.session() as s:
            s.add(Server(uuid=self.uuid, name="bench-floor", project_id="bench",
                         user_id="bench", host="bench-floor", flavor_id="2",
                         image_id=image_id, vcpus=1, memory_mib=256, vm_state="active",
                         power_intent="on", meta={},
                         user_data=base64.b64encode(script.encode()).decode()))

    def start(self) -> None:
        self.driver.start_guest(self.spec)

    def round(self, i: int) -> FloorRow:
        """attach_share -> console line (s), the attach_share call alone, detach_share."""
        from attachfs.virt.base import GuestShare

        tag = f"floor{i}"
        with tail(self.console) as con:
            t0 = time.perf_counter()
            self.driver.attach_share(self.uuid, GuestShare(tag=tag, host_path=self.share_dir))
            call = time.perf_counter() - t0
            mounted = con.wait(f"bench-floor: mounted share {tag} at", 60) - t0
            mark = self.share_dir / UNMOUNT_MARK
            t0 = time.perf_counter()
            mark.touch()
            con.wait(f"bench-floor: unmounted share {tag}", 60)
            self.driver.detach_share(self.uuid, tag, 30.0)
            detached = time.perf_counter() - t0
        mark.unlink()
        return mounted, call, detached

    def batch(self, b: int, n: int) -> float:
        """Batch `b` of TOGETHER_FLOOR_SCRIPT: `n` shares plugged and mounted, then asked to
        unmount and unplugged together: seconds from the ask until every device is gone."""
        from attachfs.virt.base import GuestShare

        tags = [f"tog{b}x{j}" for j in range(n)]
        dirs = [self.share_dir / tag for tag in tags]
        with tail(self.console) as con:
            for tag, d in zip(tags, dirs, strict=True):
                d.mkdir()
                self.driver.attach_share(self.uuid, GuestShare(tag=tag, host_path=d))
            con.wait(f"bench-floor: mounted batch {b}", 60)
            time.sleep(SETTLE)  # as on attachfs's side
            t0 = time.perf_counter()
            (dirs[0] / UNMOUNT_MARK).touch()
            con.wait(f"bench-floor: unmounted batch {b}", 60)
            for tag in tags:
                self.driver.request_detach(self.uuid, tag)
            deadline = time.monotonic() + 60
            while set(tags) & self.driver.guest_share_tags(self.uuid):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"floor batch {b}: devices still there after 60 s")
                time.sleep(0.02)
            return time.perf_counter() - t0

    def close(self) -> None:
        try:
            self.driver.stop_guest(self.uuid, 0)  # destroy: nothing in it to keep
        finally:
            self.driver.close()
            self.metadata.close()
            self.db.dispose()


def hot_round(serve: Serve, sid: str, share_id: str, console: Path, tag: str,
              pause: float) -> HotRow:
    """(POST wall time, POST -> mounted, DELETE wall time, DELETE -> guest unmounted (None:
    not seen before the 404), DELETE -> 404), durations in seconds. `pause`: seconds between
    the mount and the DELETE, so that the DELETE lands at a random point of whatever the guest
    agent does between rounds (a guest agent that polls every second would otherwise always
    see it just after the round that mounted, ~1 s too late; one that waits on the metadata
    service is answered at once either way)."""
    client = serve.http
    with tail(console) as con:
        wall = time.time()
        t0 = time.perf_counter()
        attach(client, sid, share_id, tag)
        mounted = con.wait(f"attachfs-guest: mounted share {tag} at", 60) - t0
        # The metadata lists only active attachments, so it is active now: DELETE is allowed.
        time.sleep(pause)
        dwall = time.time()
        t0 = time.perf_counter()
        url = detach(client, sid, share_id)
        needle = f"attachfs-guest: unmounted share {tag} from"
        deadline = time.monotonic() + 120
        unmounted = None
        while True:
            now = time.perf_counter()
            if unmounted is None and needle in con.read():
                unmounted = now - t0
            if mapping_status(client, url, "gone"):
                gone = time.perf_counter() - t0
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"attachment {tag} not gone 120 s after DELETE")
            time.sleep(TAIL_POLL)
    return wall, mounted, dwall, unmounted, gone


LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) \S+ \S+: server (\S+) "
                      r"share (\S+): (attached -> active|detached)$", re.M)


def agent_times(serve_log: Path, sid: str, share_id: str, kind: str) -> list[float]:
    """Wall-clock times (ms resolution) of the agent's 'attached -> active' / 'detached' log
    lines for this attachment."""
    out = []
    for m in LOG_LINE.finditer(serve_log.read_text(errors="replace")):
        if (m.group(3), m.group(4), m.group(5)) == (sid, share_id, kind):
            out.append(time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S"))
                       + int(m.group(2)) / 1000)
    return out


def first_after(times: list[float], t: float) -> float | None:
    return next((x for x in times if x >= t - 0.001), None)


def hot_figures(rows: list[HotRow], frows: list[FloorRow], serve_log: Path, sid: str,
                share_id: str, fig: Figures) -> None:
    fig.update(stats("hot_attach", [r[1] for r in rows]))
    fig.update(stats("hot_detach", [r[4] for r in rows]))
    fig.update(stats("hot_detach_unmounted", [r[3] for r in rows if r[3] is not None]))
    fig.update(stats("floor_hot_attach", [f[0] for f in frows]))
    fig.update(stats("floor_hot_attach_call", [f[1] for f in frows]))
    fig.update(stats("floor_hot_detach", [f[2] for f in frows]))
    attached = agent_times(serve_log, sid, share_id, "attached -> active")
    detached = agent_times(serve_log, sid, share_id, "detached")
    agent, guest, agent_d = [], [], []
    for wall, mounted, dwall, _, _ in rows:
        done = first_after(attached, wall)
        if done is not None:
            agent.append(done - wall)
            guest.append(wall + mounted - done)
        gone_at = first_after(detached, dwall)
        if gone_at is not None:
            agent_d.append(gone_at - dwall)
    fig.update(stats("hot_attach_agent", agent))
    fig.update(stats("hot_attach_guest", guest))
    fig.update(stats("hot_detach_agent", agent_d))


def rounds(serve: Serve, sid: str, share_id: str, console: Path, floor: FloorGuest,
           args: argparse.Namespace, fig: Figures) -> None:
    """One warm-up round and args.hot_rounds measured rounds of each side, interleaved."""
    rows: list[HotRow] = []
    frows: list[FloorRow] = []
    rng = random.Random(297)  # the same pauses in every run
    try:
        for i in range(args.hot_rounds + 1):
            r = hot_round(serve, sid, share_id, console, f"hot{i}", rng.uniform(0, 1))
            if i:
                rows.append(r)
            f = floor.round(i)
            if i:
                frows.append(f)
            log(f"round {i}{' (warm-up)' if i == 0 else ''}: attachfs POST->mounted "
                f"{r[1] * 1000:.0f} ms, DELETE->gone {r[4] * 1000:.0f} ms; floor "
                f"attach->mounted {f[0] * 1000:.0f} ms, detach {f[2] * 1000:.0f} ms")
    finally:  # a failed round (e.g. a guest destroyed under us) keeps the rounds done
        hot_figures(rows, frows, serve.log, sid, share_id, fig)


TOGETHER = 7  # shares detached at once (issue 8's target: within 2x the time of one)
# s between the last mount and the DELETEs: the guest agent has reported and waits on the
# metadata service again (a DELETE in the middle of its round is heard only after it)
SETTLE = 1.0
TOGETHER_RUNS = 3  # of each size, each side


def detach_together(serve: Serve, sid: str, console: Path, shares: list[str],
                    round_no: int) -> float:
    """`shares` hot attached and mounted in the guest, then DELETEd at once: seconds from the
    first DELETE until every attachment is gone (404)."""
    client = serve.http
    tags = [f"tog{round_no}x{i}" for i in range(len(shares))]
    with tail(console) as con:
        for share_id, tag in zip(shares, tags, strict=True):
            attach(client, sid, share_id, tag)
        for tag in tags:
            con.wait(f"attachfs-guest: mounted share {tag} at", 120)
    time.sleep(SETTLE)  # the guest agent back to waiting on the metadata service
    t0 = time.perf_counter()
    urls = [detach(client, sid, share_id) for share_id in shares]
    deadline = time.monotonic() + 120
    while not all(mapping_status(client, url, "gone") for url in urls):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(shares)} attachments not gone 120 s after DELETE")
        time.sleep(TAIL_POLL)
    return time.perf_counter() - t0


def together_part(serve: Serve, sid: str, console: Path, fig: Figures, runs: int = 3,
                  floor: FloorGuest | None = None) -> None:
    """On the running server: one share detached alone, then TOGETHER at once, `runs` times
    each, alternating (so a slow spell of the machine hits both sides); with `floor` (a guest
    running TOGETHER_FLOOR_SCRIPT for the same sizes), the same by hand beside it."""
    shares = [serve.new_share(f"tog-{uuid.uuid4().hex[:8]}")[0] for _ in range(TOGETHER)]
    sides: dict[str, list[float]] = {"detach_together_1": [], f"detach_together_{TOGETHER}": [],
                                     "floor_together_1": [], f"floor_together_{TOGETHER}": []}
    for i in range(runs):
        for k, n in enumerate((1, TOGETHER)):
            sides[f"detach_together_{n}"].append(
                detach_together(serve, sid, console, shares[:n], 2 * i + k))
            if floor is not None:
                sides[f"floor_together_{n}"].append(floor.batch(2 * i + k, n))
        log(f"detach together, run {i}: " + ", ".join(
            f"{key} {v[-1]:.2f} s" for key, v in sides.items() if v))
    for key, samples in sides.items():
        fig.update(stats(key, samples))


def together_floor_script(runs: int) -> str:
    """TOGETHER_FLOOR_SCRIPT for together_part's batches: 1, TOGETHER, 1, TOGETHER, ..."""
    return TOGETHER_FLOOR_SCRIPT.replace("{sizes}", " ".join(["1", str(TOGETHER)] * runs))


def hot_part(serve: Serve, sid: str, share_id: str, console: Path, state_root: Path,
             args: argparse.Namespace, fig: Figures) -> None:
    """The server is stopped with no attachment: boot it and two floor guests (the rounds',
    and the one of seven detaches at once), then the rounds, then seven detaches at once."""
    state = Path(tempfile.mkdtemp(prefix="hotfloor-", dir=state_root))
    floors: list[FloorGuest] = []
    try:
        (state / "r").mkdir()  # short: the metadata socket paths below must fit sun_path
        (state / "t").mkdir()
        floor = FloorGuest(state / "r", args.images_dir, args.hot_rounds + 1)
        floors.append(floor)
        floor.start()
        with tail(floor.console) as fcon:
            with tail(console) as con:
                start_server(serve, sid, con)
            fcon.wait("bench-floor: polling", 300)
        log(f"hot plug: server {sid} and floor guest {floor.uuid} ready; "
            f"1 warm-up + {args.hot_rounds} rounds each")
        other_guests(fig, "hot_other_guests", sid, floor.uuid)
        rounds(serve, sid, share_id, console, floor, args, fig)
        # seven at once, beside a floor guest of their own (booted now: its polling loop
        # would have taken CPU from the rounds)
        floor.close()
        floors.remove(floor)
        together = FloorGuest(state / "t", args.images_dir, 0,
                              together_floor_script(TOGETHER_RUNS))
        floors.append(together)
        with tail(together.console) as tcon:
            together.start()
            tcon.wait("bench-floor: polling", 300)
        together_part(serve, sid, console, fig, TOGETHER_RUNS, together)
    finally:
        for f in floors:
            try:
                f.close()
            except Exception as exc:  # noqa: BLE001 - cleanup goes on
                log(f"cleanup: stopping the floor guest failed: {exc}")
        try:
            stop_server(serve, sid)
        except Exception as exc:  # noqa: BLE001 - the server is deleted next anyway
            log(f"cleanup: stopping server {sid} failed: {exc}")
        remove_state(state)


def main(argv: list[str] | None = None) -> int:
    """Part 4 alone: a serve, a share and a server booted and stopped, then `hot_part`."""
    from bench.attach import stopped_server
    from bench.report import hot_rows, print_table

    p = argparse.ArgumentParser(prog="python -m bench.hotplug", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hot-rounds", type=int, default=12,
                   help="measured rounds, each side, after one warm-up round (default 12)")
    p.add_argument("--images-dir", default=str(IMAGES_DIR),
                   help="the guest image catalogue (default $ATTACHFS_IMAGES, else %(default)s)")
    p.add_argument("--wait-foreign", type=float, default=300, metavar="SECONDS",
                   help="how long to wait for other attachfs guests to stop (then go on)")
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = p.parse_args(argv)
    state_root = Path("/var/lib/attachfs/bench-state")
    state_root.mkdir(parents=True, exist_ok=True)
    fig: Figures = {}
    errors: list[str] = []
    try:
        with stopped_server(state_root, args, fig, "hot") as (serve, _, sid, share_id):
            hot_part(serve, sid, share_id, serve.state_dir / "console" / f"{sid}.log",
                     state_root, args, fig)
    except Exception as exc:  # noqa: BLE001 - the rounds done are still printed
        errors.append(f"{type(exc).__name__}: {exc}")
        log(f"part 4 FAILED: {exc}")
    print_table(hot_rows(fig))
    for error in errors:
        print(f"error: {error}")
    if args.json:
        Path(args.json).write_text(json.dumps({"figures": fig, "errors": errors,
                                               "args": vars(args)}, indent=2))
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
