"""Parts 4 and 5 of `attachfs.bench`, on the running `attachfs serve` of part 1.

4. Hot attach latency: POST .../shares on an ACTIVE server -> the guest console says
   `attachfs-guest: mounted share hotN at`, and DELETE -> 404; against a floor measured in the
   same run: a second guest of our own (LibvirtDriver(owner="bench-floor"), no attachfs API,
   agent or host mount) whose user_data tries `mount -t virtiofs floorN` every 50 ms, timed
   from `driver.attach_share` (libvirt attach-device) to its console line.
5. Power-on time with 0, 1, 4 and 8 attached shares: os-start -> ACTIVE and -> `ready`.

Timings are printed, never asserted. See docs/bench.md.
"""

from __future__ import annotations

import argparse
import base64
import random
import re
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from attachfs.bench_floor import (
    TAIL_POLL,
    ConsoleTail,
    log,
    mapping_status,
    server_status,
    stats,
    tail,
    wait_for,
)

Figures = dict[str, float]
Row = tuple[str, str, str, str]
READY = "attachfs-guest: ready"
MOUNTED = re.compile(r"attachfs-guest: mounted share (\S+) at ")
POWER_SHARES = (0, 1, 4, 8)
FLOOR_OWNER = "bench-floor"
FLOOR_SCRIPT = """#!/bin/sh
# The floor: mount by hand, as a person would, trying every 50 ms until the device is there.
(
  i=0
  while [ "$i" -lt {count} ]; do
    t=floor$i
    mkdir -p /mnt/$t
    until mount -t virtiofs $t /mnt/$t 2>/dev/null; do sleep 0.05; done
    echo "bench-floor: mounted share $t at /mnt/$t"
    umount /mnt/$t
    echo "bench-floor: unmounted share $t"
    i=$((i + 1))
  done
) </dev/null >/dev/console 2>&1 &
echo "bench-floor: polling"
"""


def other_guests(fig: Figures, key: str, *own: str) -> None:
    """How many guests not of this bench were running: each one takes CPU under TCG."""
    from attachfs.bench_floor import foreign_guests

    fig[key] = float(len(set(foreign_guests()) - {f"attachfs-{u}" for u in own}))


def stop_server(client: httpx.Client, sid: str) -> float:
    t0 = time.perf_counter()
    client.post(f"/v2.1/servers/{sid}/action", json={"os-stop": None}).raise_for_status()
    wait_for("server SHUTOFF", lambda: server_status(client, sid, "SHUTOFF"), 300, 0.1)
    return time.perf_counter() - t0


# console lines that mark the stages of a boot (figures poweron_N_<stage>_s_<run> in the JSON)
STAGES = {"kernel": "attachfs-init: kernel", "dhcp": "attachfs-init: eth0 ",
          "metadata": "attachfs-guest: source ", "ready": READY}


def start_server(client: httpx.Client, sid: str, console: ConsoleTail) -> dict[str, float]:
    """os-start; seconds until ACTIVE (API) and until each of STAGES is on the console."""
    t0 = time.perf_counter()
    client.post(f"/v2.1/servers/{sid}/action", json={"os-start": None}).raise_for_status()
    seen: dict[str, float] = {}

    def tick() -> None:
        now = time.perf_counter()
        for stage, line in STAGES.items():
            if stage not in seen and line in console.text:
                seen[stage] = now - t0
        if "active" not in seen and server_status(client, sid, "ACTIVE"):
            seen["active"] = time.perf_counter() - t0

    seen["ready"] = console.wait(READY, 300, tick) - t0
    tick()
    if "active" not in seen:
        wait_for("server ACTIVE", lambda: server_status(client, sid, "ACTIVE"), 60, TAIL_POLL)
        seen["active"] = time.perf_counter() - t0
    return seen


def new_share(client: httpx.Client, name: str) -> str:
    r = client.put(f"/v2.1/os-filesystem/{name}", json={"fs_entry": {"size": 1}})
    r.raise_for_status()
    return str(r.json()["fs_entry"]["id"])


def attach(client: httpx.Client, sid: str, share_id: str, tag: str) -> None:
    r = client.post(f"/v2.1/servers/{sid}/shares",
                    json={"share": {"share_id": share_id, "tag": tag}})
    if r.status_code != 201:
        raise RuntimeError(f"attach {tag}: HTTP {r.status_code}: {r.text[:300]}")


def detach(client: httpx.Client, sid: str, share_id: str) -> str:
    url = f"/v2.1/servers/{sid}/shares/{share_id}"
    r = client.delete(url)
    if r.status_code != 200:
        raise RuntimeError(f"detach {share_id}: HTTP {r.status_code}: {r.text[:300]}")
    return url


def wait_status(client: httpx.Client, url: str, status: str) -> None:
    wait_for(f"attachment {status}", lambda: mapping_status(client, url, status), 60, 0.05)


# ---- part 5: power on with 0, 1, 4, 8 shares ----------------------------------------------------

def power_on_part(client: httpx.Client, sid: str, shares: list[str], console: Path,
                  args: argparse.Namespace, fig: Figures) -> None:
    """The server is stopped with no attachment; `shares` holds >= 8 share ids. Each run boots
    it once with each count of POWER_SHARES (interleaved, so that a slow spell on the machine
    does not land on one count only). Leaves it stopped with no attachment."""
    other_guests(fig, "poweron_other_guests", sid)
    attached: list[str] = []

    def set_count(n: int) -> None:  # attach p0..p(n-1) while stopped (inactive), or detach
        while len(attached) > n:
            wait_status(client, detach(client, sid, attached[-1]), "gone")
            attached.pop()
        while len(attached) < n:
            i = len(attached)
            attach(client, sid, shares[i], f"p{i}")
            attached.append(shares[i])
            wait_status(client, f"/v2.1/servers/{sid}/shares/{shares[i]}", "inactive")

    try:
        for run in range(args.power_runs):
            for n in POWER_SHARES:
                set_count(n)
                with tail(console) as con:
                    seen = start_server(client, sid, con)
                    text = con.text[:con.text.index(READY)]
                mounted = set(MOUNTED.findall(text))
                wanted = {f"p{i}" for i in range(n)}
                if mounted != wanted:
                    raise RuntimeError(f"power on with {n} shares: the guest mounted "
                                       f"{sorted(mounted)} before ready, wanted {sorted(wanted)}")
                for stage, value in seen.items():
                    fig[f"poweron_{n}_{stage}_s_{run}"] = value
                fig[f"poweron_{n}_stop_s_{run}"] = stop_server(client, sid)
                log(f"power on with {n} share(s), run {run + 1}: " + ", ".join(
                    f"{k} {v:.2f}s" for k, v in sorted(seen.items(), key=lambda kv: kv[1])))
    finally:
        try:  # the server is stopped (or a failure is being reported)
            set_count(0)
        except Exception as exc:  # noqa: BLE001 - cleanup goes on; deleting the server
            log(f"cleanup: detaching the power-on shares failed: {exc}")


# ---- part 4: hot attach, attachfs against the floor ---------------------------------------------

class FloorGuest:
    """A guest of our own, booted with LibvirtDriver directly; the real metadata service over a
    small SQLite database answers its agent (no attachments) and hands it FLOOR_SCRIPT."""

    def __init__(self, state: Path, images_dir: str, rounds: int) -> None:
        from attachfs.db.engine import Database, migrate
        from attachfs.db.tables import Server
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
        script = FLOOR_SCRIPT.replace("{count}", str(rounds))
        with self.db.session() as s:
            s.add(Server(uuid=self.uuid, name="bench-floor", project_id="bench",
                         user_id="bench", host="bench-floor", flavor_id="2",
                         image_id=images[0].id, vcpus=1, memory_mib=256, vm_state="active",
                         power_intent="on", meta={},
                         user_data=base64.b64encode(script.encode()).decode()))
        self.metadata = MetadataSockets(self.db, state / "metadata")
        self.driver = LibvirtDriver(owner=FLOOR_OWNER)  # sees only this guest, no one else's
        self.spec = GuestSpec(uuid=self.uuid, name="bench-floor", vcpus=1, memory_mib=256,
                              image=images[0], console_log=self.console,
                              metadata_socket=self.metadata.ensure(self.uuid))

    def start(self) -> None:
        self.driver.start_guest(self.spec)

    def round(self, i: int) -> tuple[float, float, float]:
        """attach_share -> console line (s), the attach_share call alone, detach_share."""
        from attachfs.virt.base import GuestShare

        tag = f"floor{i}"
        with tail(self.console) as con:
            t0 = time.perf_counter()
            self.driver.attach_share(self.uuid, GuestShare(tag=tag, host_path=self.share_dir))
            call = time.perf_counter() - t0
            mounted = con.wait(f"bench-floor: mounted share {tag} at", 60) - t0
            con.wait(f"bench-floor: unmounted share {tag}", 60)
        t0 = time.perf_counter()
        self.driver.detach_share(self.uuid, tag, 30.0)
        return mounted, call, time.perf_counter() - t0

    def close(self) -> None:
        try:
            self.driver.stop_guest(self.uuid, 0)  # destroy: nothing in it to keep
        finally:
            self.driver.close()
            self.metadata.close()
            self.db.dispose()


def hot_round(client: httpx.Client, sid: str, share_id: str, console: Path, tag: str,
              pause: float) -> tuple[float, float, float, float | None, float]:
    """(POST wall time, POST -> mounted, DELETE wall time, DELETE -> guest unmounted (None:
    not seen before the 404), DELETE -> 404), durations in seconds. `pause`: seconds between
    the mount and the DELETE, so that the DELETE lands at a random point of the guest agent's
    1 s poll rather than always just after the round that mounted (which is ~1 s too late)."""
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


def hot_figures(rows: list[tuple[float, float, float, float | None, float]],
                frows: list[tuple[float, float, float]], serve_log: Path, sid: str,
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


def hot_part(client: httpx.Client, sid: str, share_id: str, console: Path, serve_log: Path,
             state_root: Path, args: argparse.Namespace, fig: Figures) -> None:
    """The server is stopped with no attachment: boot it and a floor guest, then one warm-up
    round and args.hot_rounds measured rounds of each, interleaved."""
    from attachfs.bench_floor import remove_state

    state = Path(tempfile.mkdtemp(prefix="hotfloor-", dir=state_root))
    floor: FloorGuest | None = None
    try:
        floor = FloorGuest(state, args.images_dir, args.hot_rounds + 1)
        floor.start()
        with tail(floor.console) as fcon:
            with tail(console) as con:
                start_server(client, sid, con)
            fcon.wait("bench-floor: polling", 300)
        log(f"hot plug: server {sid} and floor guest {floor.uuid} ready; "
            f"1 warm-up + {args.hot_rounds} rounds each")
        other_guests(fig, "hot_other_guests", sid, floor.uuid)
        rows: list[tuple[float, float, float, float | None, float]] = []
        rng = random.Random(297)  # the same pauses in every run
        frows: list[tuple[float, float, float]] = []
        try:
            for i in range(args.hot_rounds + 1):
                r = hot_round(client, sid, share_id, console, f"hot{i}", rng.uniform(0, 1))
                if i:
                    rows.append(r)
                f = floor.round(i)
                if i:
                    frows.append(f)
                log(f"round {i}{' (warm-up)' if i == 0 else ''}: attachfs POST->mounted "
                    f"{r[1] * 1000:.0f} ms, DELETE->gone {r[4] * 1000:.0f} ms; floor "
                    f"attach->mounted {f[0] * 1000:.0f} ms, detach {f[2] * 1000:.0f} ms")
        finally:  # a failed round (e.g. a guest destroyed under us) keeps the rounds done
            hot_figures(rows, frows, serve_log, sid, share_id, fig)
    finally:
        if floor is not None:
            try:
                floor.close()
            except Exception as exc:  # noqa: BLE001 - cleanup goes on
                log(f"cleanup: stopping the floor guest failed: {exc}")
        try:
            stop_server(client, sid)
        except Exception as exc:  # noqa: BLE001 - the server is deleted next anyway
            log(f"cleanup: stopping server {sid} failed: {exc}")
        remove_state(state)


# ---- report -------------------------------------------------------------------------------------

def _ms(v: float) -> str:
    return f"{v:.0f} ms"


def hot_rows(fig: Figures) -> list[Row]:
    out: list[Row] = []

    def add(label: str, key: str, base: str | None = None, base_label: str = "") -> None:
        for q in ("p50", "p95"):
            k, bk = f"{key}_{q}_ms", f"{base}_{q}_ms"
            if k not in fig:
                continue
            if base is None or bk not in fig:
                out.append((f"{label} {q}", _ms(fig[k]), "-", "-"))
            else:
                out.append((f"{label} {q}", _ms(fig[k]), f"{_ms(fig[bk])} ({base_label})",
                            f"{fig[k] / fig[bk]:.1f}x"))

    add("hot attach: POST -> guest mounted", "hot_attach", "floor_hot_attach",
        "floor: attach_share -> mounted")
    add("  POST -> agent done (serve.log)", "hot_attach_agent")
    add("  agent done -> guest mounted", "hot_attach_guest")
    add("floor: attach_share call alone", "floor_hot_attach_call")
    add("hot detach: DELETE -> 404", "hot_detach", "floor_hot_detach",
        "floor: detach_share, unmounted")
    add("  DELETE -> guest unmounted (console)", "hot_detach_unmounted")
    add("  DELETE -> agent done (serve.log)", "hot_detach_agent")
    base_runs = _runs(fig, 0)
    for n in POWER_SHARES:
        for what, label in (("active", "os-start -> ACTIVE"), ("ready", "os-start -> ready")):
            runs = _runs(fig, n, what)
            if not runs:
                continue
            zero = _runs(fig, 0, what) if base_runs else []
            value = " / ".join(f"{v:.2f}" for v in runs) + " s"
            out.append((f"power on, {n} share(s): {label}", value,
                        (" / ".join(f"{v:.2f}" for v in zero) + " s (0 shares)") if zero else "-",
                        f"{statistics.fmean(runs) / statistics.fmean(zero):.2f}x" if zero else "-"))
    for key, label in (("hot_other_guests", "other guests running during hot plug"),
                       ("poweron_other_guests", "other guests running during power on")):
        if key in fig:
            out.append((label, f"{fig[key]:.0f}", "-", "-"))
    return out


def _runs(fig: Figures, n: int, what: str = "ready") -> list[float]:
    runs, run = [], 0
    while f"poweron_{n}_{what}_s_{run}" in fig:
        runs.append(fig[f"poweron_{n}_{what}_s_{run}"])
        run += 1
    return runs
