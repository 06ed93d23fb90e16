"""`python -m bench.nova` (make bench-nova): attachfs side by side with the real compute service.

    .venv/bin/python -m bench.nova [--cycles N] [--reads N] [--json FILE] [--keep-stack]
                                   [--state DIR] [--venv DIR] [--wait-foreign SECONDS]

Sets up what is missing (tools/compute_service/install.sh; `stack.sh start`: Nova 34 with its
fake virt driver, Placement, Keystone, Glance, Manila with the DummyDriver) and starts `attachfs
serve` beside it with `auth_strategy = keystone` against the stack's Keystone and `storage.provider
= manila` against the stack's Manila, the same Manila Nova uses. Both services then get the same
requests from the same client code (one keep-alive httpx.Client each, the same member token of
one project), alternating between them so that both see the same machine:

- attach/detach cycles on a stopped server, each cycle on the next of 30 NFS shares: POST, poll
  GET every 20 ms until `inactive`, DELETE, poll until 404;
- GET list and GET show with 1 and with 30 attachments;
- resident memory (sum of RSS, /proc) of `attachfs serve` against Nova (api, conductor,
  scheduler, compute) + Placement;
- for reference, the share look-up both POSTs make in Manila (GET share + export locations),
  sent straight from the client.

Prints Figure | attachfs | Nova | ratio attachfs/Nova, and the targets (never asserted). Stops
what it started (the stack too, unless --keep-stack or it was already running). See
docs/bench.md, "9. Side by side with the compute service".
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.attach import wait_quiet
from bench.measure import Figures, log, summary
from harness.nova_side import (
    DAEMONS,
    NOVA_DAEMONS,
    Cloud,
    Failed,
    Stack,
    descendants,
    in_parallel,
    pss_kib,
    rss_kib,
)
from harness.serve import Serve

STATE_ROOT = Path("/var/lib/attachfs/bench-state")
ROOT = Path(__file__).resolve().parents[1]
POLL = 0.02  # seconds between the GETs that wait for a status
N_SHARES = 30  # shares per service; also the "30 attachments" of the listing
SIDES = ("attachfs", "nova")
# Reported against, never asserted: attachfs's figure divided by Nova's should be at most this.
TARGETS = (("attach POST p50", "attach_post_p50_ms", 1 / 10),
           ("POST -> inactive p50", "to_inactive_p50_ms", 1 / 3),
           ("memory (sum of RSS)", "rss_mib", 1 / 5))


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.nova", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cycles", type=int, default=30, metavar="N",
                   help="measured attach/detach cycles per service (default 30), after one "
                        "warm-up cycle")
    p.add_argument("--reads", type=int, default=50, metavar="N",
                   help="measured GETs of each kind per service (default 50), after 5 warm-up")
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    p.add_argument("--keep-stack", action="store_true",
                   help="leave the compute service running when this run started it")
    p.add_argument("--state", type=Path,
                   default=Path(os.environ.get("COMPUTE_SERVICE_STATE", "/tmp/compute-service")),
                   help="the stack's state directory (stack.sh --state)")
    p.add_argument("--venv", type=Path,
                   default=Path(os.environ.get("COMPUTE_SERVICE_VENV", ROOT / ".venv-nova")),
                   help="the stack's virtualenv (install.sh --venv)")
    p.add_argument("--images-dir", default="/var/lib/attachfs/images")
    p.add_argument("--wait-foreign", type=float, default=300, metavar="SECONDS",
                   help="how long to wait for guests of other attachfs instances to stop")
    args = p.parse_args(argv)
    if args.cycles < 1 or args.reads < 1:
        p.error("--cycles and --reads must be at least 1")
    return args


# ---- one service, as the client sees it -----------------------------------------------------------
@dataclass
class Side:
    """One compute API (attachfs or Nova) with the client every measurement uses."""

    name: str
    http: httpx.Client
    shares: list[str] = field(default_factory=list)
    sid: str = ""

    def share_url(self, share: str) -> str:
        return f"/v2.1/servers/{self.sid}/shares/{share}"

    def status(self, share: str) -> str:
        """The attachment's status; "gone" for a 404."""
        r = self.http.get(self.share_url(share))
        if r.status_code == 404:
            return "gone"
        if r.status_code != 200:
            raise Failed(f"{self.name}: GET {self.share_url(share)}: HTTP {r.status_code} "
                         f"{r.text[:300]}")
        return str(r.json()["share"]["status"])

    def wait(self, share: str, wanted: str, timeout: float = 120) -> float:
        """GET every POLL s until the attachment is `wanted`: when the GET that saw it returned
        (perf_counter)."""
        deadline = time.perf_counter() + timeout
        while True:
            st = self.status(share)
            now = time.perf_counter()
            if st == wanted:
                return now
            if st == "error":
                raise Failed(f"{self.name}: attachment of {share} went to error")
            if now > deadline:
                raise Failed(f"{self.name}: attachment of {share} still {st} after {timeout:.0f}s")
            time.sleep(POLL)

    def request(self, method: str, url: str, expect: int, **kw: Any) -> tuple[float, float]:
        """(sent, answered) perf_counter stamps of one request; a wrong status is an error."""
        t0 = time.perf_counter()
        r = self.http.request(method, url, **kw)
        t1 = time.perf_counter()
        if r.status_code != expect:
            raise Failed(f"{self.name}: {method} {url}: HTTP {r.status_code} (wanted {expect}): "
                         f"{r.text[:300]}")
        return t0, t1

    def attach(self, share: str, tag: str) -> tuple[float, float]:
        return self.request("POST", f"/v2.1/servers/{self.sid}/shares", 201,
                            json={"share": {"share_id": share, "tag": tag}})

    def detach(self, share: str) -> tuple[float, float]:
        return self.request("DELETE", self.share_url(share), 200)

    # servers
    def server(self) -> dict[str, Any]:
        r = self.http.get(f"/v2.1/servers/{self.sid}")
        if r.status_code != 200:
            raise Failed(f"{self.name}: GET server {self.sid}: HTTP {r.status_code} {r.text[:300]}")
        server: dict[str, Any] = r.json()["server"]
        if server["status"] == "ERROR":
            raise Failed(f"{self.name}: server {self.sid} went to ERROR: {server.get('fault')}")
        return server

    def wait_server(self, status: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            s = self.server()
            if s["status"] == status and not s.get("OS-EXT-STS:task_state"):
                return
            if time.monotonic() > deadline:
                raise Failed(f"{self.name}: server {self.sid} not {status} after {timeout:.0f}s "
                             f"(is {s['status']}, task {s.get('OS-EXT-STS:task_state')})")
            time.sleep(0.1)

    def boot_and_stop(self, body: dict[str, Any]) -> tuple[float, float]:
        """Create a server and stop it (attach needs it SHUTOFF): seconds to ACTIVE, to SHUTOFF."""
        r = self.http.post("/v2.1/servers", json={"server": body})
        if r.status_code != 202:
            raise Failed(f"{self.name}: create server: HTTP {r.status_code} {r.text[:300]}")
        self.sid = str(r.json()["server"]["id"])
        t0 = time.perf_counter()
        self.wait_server("ACTIVE", 600)
        active = time.perf_counter() - t0
        self.request("POST", f"/v2.1/servers/{self.sid}/action", 202, json={"os-stop": None})
        t1 = time.perf_counter()
        self.wait_server("SHUTOFF", 300)
        return active, time.perf_counter() - t1


def client(base_url: str, token: str) -> httpx.Client:
    """The one client pattern both services get: keep-alive, the member's token, 2.97."""
    return httpx.Client(base_url=base_url, timeout=120, headers={
        "X-Auth-Token": token, "OpenStack-API-Version": "compute 2.97",
        "Accept": "application/json"})


# ---- the measurements -----------------------------------------------------------------------------
def cycles(sides: list[Side], n: int, fig: Figures) -> None:
    """n attach/detach cycles per side (plus one warm-up), alternating sides and their order."""
    samples: dict[str, dict[str, list[float]]] = {
        s.name: {"attach_post": [], "to_inactive": [], "agent_inactive": [],
                 "detach_delete": [], "to_gone": []} for s in sides}
    for r in range(n + 1):
        for side in (sides if r % 2 == 0 else sides[::-1]):
            share = side.shares[r % len(side.shares)]
            t0, t1 = side.attach(share, f"c{r % len(side.shares)}")
            t2 = side.wait(share, "inactive")
            t3, t4 = side.detach(share)
            t5 = side.wait(share, "gone")
            if r == 0:
                continue  # warm-up: first token validation, first look-ups in Manila
            got = samples[side.name]
            got["attach_post"].append(t1 - t0)
            got["to_inactive"].append(t2 - t0)
            got["agent_inactive"].append(t2 - t1)
            got["detach_delete"].append(t4 - t3)
            got["to_gone"].append(t5 - t3)
        if r % 10 == 0:
            log(f"cycle {r}/{n}")
    for name, by_kind in samples.items():
        for kind, values in by_kind.items():
            fig.update(summary(f"{name}_{kind}", values))


def reads(sides: list[Side], share: str | dict[str, str], n: int, label: str,
          fig: Figures) -> None:
    """GET list and GET show, n each per side after 5 warm-up, alternating between the sides."""
    got: dict[str, dict[str, list[float]]] = {s.name: {"list": [], "show": []} for s in sides}
    shown = share if isinstance(share, dict) else {s.name: share for s in sides}
    for k in range(n + 5):
        for side in (sides if k % 2 == 0 else sides[::-1]):
            t0, t1 = side.request("GET", f"/v2.1/servers/{side.sid}/shares", 200)
            t2, t3 = side.request("GET", side.share_url(shown[side.name]), 200)
            if k >= 5:
                got[side.name]["list"].append(t1 - t0)
                got[side.name]["show"].append(t3 - t2)
    for name, by_kind in got.items():
        for kind, values in by_kind.items():
            fig.update(summary(f"{name}_{kind}_{label}", values))


def listing(sides: list[Side], n: int, fig: Figures, memory: Callable[[], None]) -> None:
    """List/show with 1 attachment, then with N_SHARES; memory while they are attached; then
    everything detached again."""
    for side in sides:
        side.attach(side.shares[0], "l0")
    for side in sides:
        side.wait(side.shares[0], "inactive")
    log(f"GET list/show with 1 attachment, {n} each")
    reads(sides, {s.name: s.shares[0] for s in sides}, n, "1", fig)
    for i in range(1, N_SHARES):
        for side in sides:
            side.attach(side.shares[i], f"l{i}")
    for side in sides:
        for share in side.shares:
            side.wait(share, "inactive", 300)
    for side in sides:
        listed = side.http.get(f"/v2.1/servers/{side.sid}/shares").json()["shares"]
        if len(listed) != N_SHARES:
            raise Failed(f"{side.name} lists {len(listed)} attachments, not {N_SHARES}")
    log(f"GET list/show with {N_SHARES} attachments, {n} each")
    reads(sides, {s.name: s.shares[N_SHARES // 2] for s in sides}, n, str(N_SHARES), fig)
    memory()
    log(f"detaching the {N_SHARES} attachments")
    for side in sides:
        for share in side.shares:
            side.detach(share)
    for side in sides:
        for share in side.shares:
            side.wait(share, "gone", 300)


def manila_lookup(url: str, token: str, share: str, n: int, fig: Figures) -> None:
    """What both POSTs must ask Manila before they answer (is the share there, available, of
    which protocol, where is it exported): GET the share and its export locations, with the same
    token and client pattern, straight from the bench. A floor under either service's POST."""
    with httpx.Client(base_url=url, timeout=60, headers={
            "X-Auth-Token": token, "X-OpenStack-Manila-API-Version": "2.82",
            "Accept": "application/json"}) as manila:
        side = Side("manila", manila)
        samples = []
        for k in range(n + 5):
            t0, _ = side.request("GET", f"/shares/{share}", 200)
            _, t1 = side.request("GET", f"/shares/{share}/export_locations", 200)
            if k >= 5:
                samples.append(t1 - t0)
    fig.update(summary("ref_manila_lookup", samples))


# ---- the table ------------------------------------------------------------------------------------
def _ms(v: float) -> str:
    return "-" if math.isnan(v) else f"{v:.1f} ms"


def _mib(v: float) -> str:
    return f"{v:.0f} MiB"


def _s(v: float) -> str:
    return f"{v:.2f} s"


ROWS: tuple[tuple[str, str, Callable[[float], str]], ...] = (
    ("server create -> ACTIVE", "server_active_s", _s),
    ("server os-stop -> SHUTOFF", "server_stop_s", _s),
    *((f"{label} {q}", f"{key}_{q}_ms", _ms)
      for label, key in (("attach POST", "attach_post"),
                         ("POST sent -> inactive seen", "to_inactive"),
                         ("  POST answered -> inactive seen", "agent_inactive"),
                         ("detach DELETE", "detach_delete"),
                         ("DELETE sent -> 404 seen", "to_gone"),
                         ("GET list, 1 attachment", "list_1"),
                         ("GET show, 1 attachment", "show_1"),
                         (f"GET list, {N_SHARES} attachments", f"list_{N_SHARES}"),
                         (f"GET show, {N_SHARES} attachments", f"show_{N_SHARES}"))
      for q in ("p50", "p99")),
    ("memory: sum of RSS (attachfs serve | Nova + Placement)", "rss_mib", _mib),
    ("memory: sum of PSS (same processes)", "pss_mib", _mib),
    ("processes", "procs", lambda v: f"{v:.0f}"),
)
INFO = (("nova-api", "RSS nova-api"), ("nova-conductor", "RSS nova-conductor"),
        ("nova-scheduler", "RSS nova-scheduler"), ("nova-compute", "RSS nova-compute"),
        ("placement", "RSS placement"),
        ("glance", "RSS glance (Nova's images; not counted)"),
        ("netstub", "RSS network stub (Nova only; not counted)"),
        ("keystone", "RSS keystone (shared; not counted)"),
        ("manila", "RSS manila api+scheduler+share (shared; not counted)"))


def table(fig: Figures) -> list[tuple[str, str, str, str]]:
    out = []
    for label, key, fmt in ROWS:
        a, n = fig.get(f"attachfs_{key}"), fig.get(f"nova_{key}")
        if a is None and n is None:
            continue
        ratio = f"{a / n:.3f}" if a is not None and n else "-"
        out.append((label, fmt(a) if a is not None else "-", fmt(n) if n is not None else "-",
                    ratio))
    for q in ("p50", "p99"):
        key = f"ref_manila_lookup_{q}_ms"
        if key in fig:
            out.append((f"reference: Manila GET share + export locations {q}", _ms(fig[key]),
                        _ms(fig[key]), "-"))
    for daemon, label in INFO:
        if f"rss_mib_{daemon}" in fig:
            out.append((label, "-", _mib(fig[f"rss_mib_{daemon}"]), "-"))
    return out


def print_table(rows: list[tuple[str, str, str, str]]) -> None:
    head = ("Figure", "attachfs", "Nova", "ratio attachfs/Nova")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
    for r in [head, tuple("-" * w for w in widths), *rows]:
        print(" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def targets(fig: Figures) -> list[dict[str, Any]]:
    out = []
    for label, key, limit in TARGETS:
        a, n = fig.get(f"attachfs_{key}"), fig.get(f"nova_{key}")
        ratio = a / n if a is not None and n else None
        out.append({"figure": label, "ratio": ratio, "target": limit,
                    "met": None if ratio is None else ratio <= limit})
    return out


def print_targets(results: list[dict[str, Any]]) -> None:
    print("\ntargets (reported, not asserted): attachfs/Nova at most")
    for t in results:
        got = "not measured" if t["ratio"] is None else (
            f"{t['ratio']:.3f}: {'met' if t['met'] else 'NOT met'}")
        print(f"  {t['figure']:<22} <= {t['target']:.3f}  measured {got}")


# ---- the run --------------------------------------------------------------------------------------
def _interrupt(*_: Any) -> None:
    raise KeyboardInterrupt


def memory(stack: Stack, serve: Serve, fig: Figures) -> None:
    """attachfs serve and what it started, against Nova's four daemons + Placement (each daemon's
    whole session: gunicorn's master and worker, the conductor's and scheduler's workers)."""
    assert serve.proc is not None
    mine = descendants(serve.proc.pid)
    fig["attachfs_rss_mib"] = rss_kib(mine) / 1024
    fig["attachfs_pss_mib"] = pss_kib(mine) / 1024
    fig["attachfs_procs"] = float(len(mine))
    theirs = stack.memory((*NOVA_DAEMONS, "placement", "glance", "netstub", "keystone",
                           "manila-api", "manila-scheduler", "manila-share"))
    nova = [theirs[d] for d in (*NOVA_DAEMONS, "placement")]
    fig["nova_rss_mib"] = sum(m[0] for m in nova) / 1024
    fig["nova_pss_mib"] = sum(m[1] for m in nova) / 1024
    fig["nova_procs"] = float(sum(m[2] for m in nova))
    for d, (rss, _pss, _n) in theirs.items():
        if not d.startswith("manila"):
            fig[f"rss_mib_{d}"] = rss / 1024
    fig["rss_mib_manila"] = sum(theirs[d][0] for d in theirs if d.startswith("manila")) / 1024
    log(f"memory: attachfs serve {fig['attachfs_rss_mib']:.0f} MiB ({len(mine)} processes), "
        f"Nova + Placement {fig['nova_rss_mib']:.0f} MiB")


def run(args: argparse.Namespace, fig: Figures, notes: list[str]) -> None:
    stack = Stack(args.state.resolve(), args.venv.resolve())
    setup_log = stack.state / "log" / "bench-nova.log"
    wait_quiet(args.wait_foreign)
    t0 = time.perf_counter()
    stack.install(setup_log)
    fig["setup_install_s"] = time.perf_counter() - t0
    started = False
    cloud: Cloud | None = None
    serve: Serve | None = None
    sides: list[Side] = []
    try:
        if len(stack.running()) < len(DAEMONS):
            log(f"starting the compute service (stack.sh start --state {stack.state}; "
                f"output in {setup_log})")
            started = True
            t0 = time.perf_counter()
            stack.start(setup_log)
            fig["setup_stack_start_s"] = time.perf_counter() - t0
            log(f"compute service up in {fig['setup_stack_start_s']:.0f} s")
        else:
            notes.append("the compute service was already running: left running")
        t0 = time.perf_counter()
        cloud = Cloud(stack)
        cloud.prepare_identity()
        cloud.prepare_nova()
        cloud.prepare_manila()
        token = cloud.member_token()
        for sid in cloud.nova_leftovers():
            log(f"deleting Nova server {sid} left by an earlier run")
            cloud.delete_nova_server(sid)
        names = [f"bench-nova-{side}-{i:02d}" for side in SIDES for i in range(N_SHARES)]
        ids = cloud.shares(names, token)
        fig["setup_cloud_s"] = time.perf_counter() - t0
        log(f"Keystone project, Nova flavor and image, {len(ids)} Manila shares ready in "
            f"{fig['setup_cloud_s']:.0f} s")

        state = Path(tempfile.mkdtemp(prefix="nova-", dir=STATE_ROOT))
        serve = Serve(state, cloud.attachfs_config(f"bench-nova-{os.getpid()}"), token=token,
                      images_dir=Path(args.images_dir), http_timeout=120)
        t0 = time.perf_counter()
        serve.start()
        fig["setup_attachfs_start_s"] = time.perf_counter() - t0
        log(f"attachfs serve up in {fig['setup_attachfs_start_s']:.1f} s at {serve.url} "
            f"(state {state})")

        sides = [Side("attachfs", client(serve.url, token)), Side("nova", client(stack.nova, token))]
        for side in sides:
            side.shares = [ids[f"bench-nova-{side.name}-{i:02d}"] for i in range(N_SHARES)]
        bodies = {"attachfs": {"name": "bench-nova", "flavorRef": "2",
                               "imageRef": "debian-busybox", "networks": "none"},
                  "nova": {"name": "bench-nova", "flavorRef": "bench-nova-512",
                           "imageRef": cloud.image_id, "networks": "none"}}
        booted = in_parallel({s.name: functools.partial(s.boot_and_stop, bodies[s.name])
                              for s in sides})
        for name, (active, stop) in booted.items():
            fig[f"{name}_server_active_s"], fig[f"{name}_server_stop_s"] = active, stop
        log("servers: " + ", ".join(f"{s.name} {s.sid}" for s in sides))

        fig["loadavg_1m_at_measuring"] = os.getloadavg()[0]
        log(f"{args.cycles} attach/detach cycles per service (+1 warm-up), alternating")
        cycles(sides, args.cycles, fig)
        srv = serve
        listing(sides, args.reads, fig, lambda: memory(stack, srv, fig))
        log(f"reference: Manila share look-ups straight from the client, {args.reads}")
        manila_lookup(stack.manila, token, sides[0].shares[0], args.reads, fig)
    finally:
        if sides:
            log("deleting the servers, stopping attachfs serve")
        for side in sides:
            if side.sid:
                try:
                    side.http.delete(f"/v2.1/servers/{side.sid}")
                    deadline = time.monotonic() + 120
                    while (side.http.get(f"/v2.1/servers/{side.sid}").status_code != 404
                           and time.monotonic() < deadline):
                        time.sleep(0.2)
                except Exception as exc:  # noqa: BLE001 - cleanup goes on
                    log(f"cleanup: deleting {side.name} server {side.sid}: {exc}")
            side.http.close()
        if serve is not None:
            serve.cleanup()  # stops serve, destroys its guest (by owner tag), removes its state
        if cloud is not None:
            cloud.close()
        if started and not args.keep_stack:
            log("stopping the compute service (stack.sh stop)")
            stack.stop(setup_log)
        elif started:
            notes.append(f"the compute service is left running (--keep-stack): "
                         f"tools/compute_service/stack.sh stop --state {stack.state}")


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # so every finally block cleans up
    STATE_ROOT.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    fig: Figures = {"loadavg_1m_at_start": os.getloadavg()[0]}
    errors: list[str] = []
    notes: list[str] = []
    try:
        run(args, fig, notes)
    except KeyboardInterrupt:
        errors.append("interrupted")
    except Exception as exc:  # noqa: BLE001 - report it with what was measured
        errors.append(f"{type(exc).__name__}: {exc}")
        log(f"FAILED: {exc}")
    fig["total_s"] = time.perf_counter() - t_start
    print(f"\nload average (1 min) at start: {fig['loadavg_1m_at_start']:.2f}"
          + (f", when measuring began: {fig['loadavg_1m_at_measuring']:.2f}"
             if "loadavg_1m_at_measuring" in fig else "")
          + f", on {os.cpu_count()} cores; {args.cycles} cycles, {args.reads} reads of each "
          f"kind per service; whole run {fig['total_s']:.0f} s\n")
    print_table(table(fig))
    results = targets(fig)
    print_targets(results)
    for n in notes:
        print(f"note: {n}")
    for e in errors:
        print(f"error: {e}")
    if args.json:
        Path(args.json).write_text(json.dumps({"figures": fig, "targets": results,
                                               "errors": errors, "notes": notes,
                                               "args": vars(args)}, indent=2, default=str))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
