"""Part 1: attach/detach cycles through a real `attachfs serve` (the harness's `Serve`) on a
stopped server that booted a real guest; parts 2, 5 and 4 run on the same serve."""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.floor import floor_part
from bench.hotplug import hot_part
from bench.measure import POLL, Figures, log, mapping_status, sample, summary, timed
from bench.power import power_on_part
from harness import host
from harness.process import wait_for
from harness.serve import Serve

# The only change from the defaults: no periodic repair pass (noise in the timings).
CONFIG = "[agent]\nresync_interval = 1000000.0\n"


def wait_quiet(timeout: float) -> None:
    """Other guests (tests, demos) each take CPU under TCG: wait up to `timeout` for them to
    stop, then go on (the figures say how many ran). They are safe from this bench's serve:
    its agent's repair only sees guests tagged with its own owner (host:state dir)."""
    others = host.attachfs_guests()
    if not others:
        return
    log(f"waiting up to {timeout:.0f}s for {len(others)} other attachfs guest(s) to stop: "
        f"{others}")
    try:
        wait_for("other attachfs guests to stop", lambda: not host.attachfs_guests(), timeout, 2.0)
    except TimeoutError:
        log(f"going on with {len(host.attachfs_guests())} other guest(s) running: figures are "
            "noisier")


@contextmanager
def stopped_server(state_root: Path, args: argparse.Namespace, fig: Figures,
                   prefix: str) -> Iterator[tuple[Serve, str, str, str]]:
    """A `attachfs serve` of its own, a built-in share and a server that booted a real guest
    and was stopped: (serve, name, server id, share id). The server deleted and serve
    cleaned up afterwards."""
    state = Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir=state_root))
    serve = Serve(state, CONFIG, token="bench:bench", images_dir=Path(args.images_dir),
                  http_timeout=60)
    sid = None
    try:
        wait_quiet(args.wait_foreign)
        fig["other_guests_at_start"] = float(len(host.attachfs_guests()))
        serve.start()
        name = f"bench-{uuid.uuid4().hex[:8]}"
        share_id = serve.new_share(name)[0]
        sid = boot_and_stop(serve, name, fig)
        yield serve, name, sid, share_id
    finally:
        if sid is not None:
            delete_server(serve, sid)
        serve.cleanup()  # stops serve, destroys its own guests (by owner tag), removes state


def vm_part(state_root: Path, args: argparse.Namespace, fig: Figures, errors: list[str]) -> None:
    with stopped_server(state_root, args, fig, "vm") as (serve, name, sid, share_id):
        floor_part(serve.state_dir, args, fig)  # same machine, same moment: its agent idle
        # The floor's HTTP-only request against serve itself: version discovery, no database.
        fig.update(summary("serve_http", sample(serve.http, "GET", "/v2.1/", 200, args.floor_n)))
        log(f"{args.cycles} attach/detach cycles on server {sid}")
        cycles(serve, sid, share_id, args.cycles, fig)
        shares = [share_id] + [serve.new_share(f"{name}-{i}")[0] for i in range(1, 8)]
        guest_parts(serve, sid, shares, state_root, args, fig, errors)


def boot_and_stop(serve: Serve, name: str, fig: Figures) -> str:
    """A server from debian-busybox, flavor 2 (1 vCPU, 256 MiB): ACTIVE, then SHUTOFF."""
    r = serve.http.post("/v2.1/servers", json={"server": {
        "name": name, "flavorRef": "2", "imageRef": "debian-busybox"}})
    r.raise_for_status()
    sid = str(r.json()["server"]["id"])
    t0 = time.perf_counter()
    serve.wait_status(sid, "ACTIVE", 900, 0.2)
    fig["server_active_s"] = time.perf_counter() - t0
    log(f"server {sid} ACTIVE after {fig['server_active_s']:.1f}s; stopping it")
    serve.action(sid, {"os-stop": None}).raise_for_status()
    t0 = time.perf_counter()
    serve.wait_status(sid, "SHUTOFF", 300, 0.2)
    fig["server_stop_s"] = time.perf_counter() - t0
    return sid


def guest_parts(serve: Serve, sid: str, shares: list[str], state_root: Path,
                args: argparse.Namespace, fig: Figures, errors: list[str]) -> None:
    """Parts 5 and 4 on the stopped server; a failed one is reported and the other runs."""
    console = serve.state_dir / "console" / f"{sid}.log"
    for what, run in (
            ("power on", lambda: power_on_part(serve, sid, shares, console, args, fig)),
            ("hot plug", lambda: hot_part(serve, sid, shares[0], console, state_root, args,
                                          fig))):
        log(f"part: {what}")
        try:
            run()
        except Exception as exc:  # noqa: BLE001 - report it, run the other parts
            errors.append(f"{what}: {type(exc).__name__}: {exc}")
            log(f"part {what} FAILED: {exc}")


def delete_server(serve: Serve, sid: str) -> None:
    try:
        serve.http.delete(f"/v2.1/servers/{sid}").raise_for_status()
        wait_for("server deleted", lambda: serve.server(sid) is None, 300, 0.2)
    except Exception as exc:  # noqa: BLE001 - cleanup goes on
        log(f"cleanup: deleting server {sid} failed: {exc}")


def cycles(serve: Serve, sid: str, share_id: str, n: int, fig: Figures) -> None:
    client = serve.http
    url = f"/v2.1/servers/{sid}/shares/{share_id}"
    body = {"share": {"share_id": share_id, "tag": "t"}}
    post, delete, cycle, to_inactive, to_gone = [], [], [], [], []
    start = time.perf_counter()
    for _ in range(n):
        t0 = time.perf_counter()
        post.append(timed(client, "POST", f"/v2.1/servers/{sid}/shares", 201, json=body))
        t1 = time.perf_counter()
        wait_for("attachment inactive", lambda: mapping_status(client, url, "inactive"), 60, POLL)
        t2 = time.perf_counter()
        delete.append(timed(client, "DELETE", url, 200))
        t3 = time.perf_counter()
        wait_for("attachment gone", lambda: mapping_status(client, url, "gone"), 60, POLL)
        t4 = time.perf_counter()
        to_inactive.append(t2 - t1)
        to_gone.append(t4 - t3)
        cycle.append(t4 - t0)
    wall = time.perf_counter() - start
    for name, samples in (("attach_post", post), ("detach_delete", delete), ("cycle", cycle),
                          ("agent_attach", to_inactive), ("agent_detach", to_gone)):
        fig.update(summary(name, samples))
    fig["cycles_per_s"] = n / wall
    # An agent pass that takes ~1 s is the poll interval, not work: see docs/bench.md.
    fig["agent_slow_passes"] = float(sum(t > 0.5 for t in to_inactive + to_gone))
    fig["api_req_per_s"] = 2 * n / (sum(post) + sum(delete))
