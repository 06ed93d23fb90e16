"""`python -m bench` (make bench): run the parts, print the table. See bench/__init__.py and
docs/bench.md."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bench
from bench.attach import vm_part
from bench.datapath import datapath_part
from bench.floor import floor_alone
from bench.listing import listing_part
from bench.measure import Figures, log
from bench.report import print_table, rows
from bench.scale import scale_part
from bench.startup import startup_part, startup_rows
from bench.transports import transports_part
from bench.writes import writes_part

STATE_ROOT = Path("/var/lib/attachfs/bench-state")


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=bench.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="30 cycles, 10 hot rounds, 1 boot per share count, fewer samples")
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    p.add_argument("--cycles", type=int, help="attach/detach cycles (default 200, quick 30)")
    p.add_argument("--hot-rounds", type=int,
                   help="hot attach/detach rounds, each side (default 12, quick 10)")
    p.add_argument("--power-runs", type=int,
                   help="boots per share count 0/1/4/8 (default 2, quick 1)")
    p.add_argument("--postgres", action=argparse.BooleanOptionalAction, default=True,
                   help="also run part 3 on PostgreSQL at 127.0.0.1:5432 (default on)")
    p.add_argument("--vm", action=argparse.BooleanOptionalAction, default=True,
                   help="run part 1 (boots a guest); --no-vm measures the floor alone")
    p.add_argument("--datapath", action=argparse.BooleanOptionalAction, default=True,
                   help="run part 6: guest I/O through built-in, CephFS and NFS shares "
                        "(starts a throw-away Ceph and NFS-Ganesha, boots a guest)")
    p.add_argument("--transports", action=argparse.BooleanOptionalAction, default=True,
                   help="run part 7: the same I/O through virtio-fs, 9p and NFS from the "
                        "host in one guest, against the host and the guest's tmpfs")
    scale = p.add_argument_group("part 8, the scale simulation (bench/scale.py; off unless asked)")
    scale.add_argument("--scale", action="store_true",
                       help="also run part 8: simulated hosts (real agents on fake drivers) on "
                            "one PostgreSQL, attaches through `attachfs api --workers N`")
    scale.add_argument("--scale-only", action="store_true",
                       help="run part 8 alone (make bench-scale)")
    scale.add_argument("--scale-hosts", type=int, default=1000, metavar="N")
    scale.add_argument("--scale-servers", type=int, default=10, metavar="N",
                       help="servers per host, every other one running (default 10)")
    scale.add_argument("--scale-shares", type=int, default=2, metavar="N",
                       help="shares attached per server (default 2)")
    scale.add_argument("--scale-attaches", type=int, default=2000, metavar="N",
                       help="attaches sent through the API, drawn at random; the other "
                            "attachments are inserted settled (default 2000; more than "
                            "there are: all of them)")
    scale.add_argument("--scale-floor", type=int, default=400, metavar="N",
                       help="attaches to servers of a host with no agent before the agents "
                            "start: the API alone, the baseline (default 400)")
    scale.add_argument("--scale-procs", type=int, default=4, metavar="N",
                       help="processes the hosts run in (default 4)")
    scale.add_argument("--scale-pool", type=int, default=8, metavar="N",
                       help="database connections each host process shares (default 8)")
    scale.add_argument("--scale-agent-workers", type=int, default=1, metavar="N",
                       help="[agent] workers of each simulated agent (default 1)")
    scale.add_argument("--scale-bell", choices=["process", "agent", "none"], default="process",
                       help="LISTEN connections: one per host process, waking the agents "
                            "each ring is for (default); one per agent (the real thing); "
                            "none (the agents poll)")
    scale.add_argument("--scale-api-workers", type=int, default=4, metavar="N")
    scale.add_argument("--scale-clients", type=int, default=16, metavar="N",
                       help="concurrent API clients (default 16)")
    scale.add_argument("--scale-idle", type=float, default=30.0, metavar="SECONDS",
                       help="idle phase after the cold start (default 30: one resync interval)")
    scale.add_argument("--scale-pending", type=int, metavar="N",
                       help="attachments detached while every agent is down (default: one "
                            "per host)")
    scale.add_argument("--scale-dedicated", type=int, default=10, metavar="N",
                       help="hosts measured with an engine and LISTEN of their own (default 10)")
    scale.add_argument("--scale-timeout", type=float, default=900.0, metavar="SECONDS",
                       help="longest wait for any phase to converge (default 900)")
    p.add_argument("--startup", action=argparse.BooleanOptionalAction, default=True,
                   help="run the memory and start-up part: serve's time to first answer and "
                        "RSS with 0 and 10,000 attachments (bench/startup.py)")
    p.add_argument("--writes", action=argparse.BooleanOptionalAction, default=True,
                   help="run part 9: attach/detach through the API alone against the floor, "
                        "one at a time and from several clients, on SQLite (and PostgreSQL)")
    p.add_argument("--write-workers", type=int, default=2, metavar="N",
                   help="API processes (and floor processes) for part 9's throughput on "
                        "PostgreSQL (default 2: one a core)")
    p.add_argument("--images-dir", default="/var/lib/attachfs/images")
    p.add_argument("--wait-foreign", type=float, default=300, metavar="SECONDS",
                   help="how long to wait for guests of other attachfs instances to stop "
                        "(then the bench goes on anyway)")
    args = p.parse_args(argv)
    args.cycles = args.cycles or (30 if args.quick else 200)
    args.hot_rounds = args.hot_rounds or (10 if args.quick else 12)
    args.power_runs = args.power_runs or (1 if args.quick else 2)
    args.floor_n = 200 if args.quick else 500
    args.reads, args.detail = (200, 5) if args.quick else (500, 20)
    args.write_n, args.write_m = (200, 600) if args.quick else (500, 2000)
    args.scale = args.scale or args.scale_only
    if args.scale_pending is None:
        args.scale_pending = args.scale_hosts
    return args


def plan(args: argparse.Namespace, fig: Figures,
         errors: list[str]) -> list[tuple[str, Callable[[], None]]]:
    parts: list[tuple[str, Callable[[], None]]] = []
    scale = ("scale: simulated hosts on one PostgreSQL", lambda: scale_part(STATE_ROOT, args, fig))
    if args.scale_only:
        return [scale]
    if args.vm:
        parts.append(("guests: attach/detach + floor, power on, hot plug",
                      lambda: vm_part(STATE_ROOT, args, fig, errors)))
    else:
        parts.append(("floor", lambda: floor_alone(STATE_ROOT, args, fig)))
    if args.vm and args.datapath:
        parts.append(("data paths: built-in, CephFS, NFS",
                      lambda: datapath_part(STATE_ROOT, args, fig)))
    if args.vm and args.transports:
        parts.append(("transports: virtio-fs, 9p, NFS from the host",
                      lambda: transports_part(STATE_ROOT, args, fig)))
    parts.append(("listing on sqlite", lambda: listing_part("sqlite", STATE_ROOT, args, fig)))
    if args.postgres:
        parts.append(("listing on postgres",
                      lambda: listing_part("postgres", STATE_ROOT, args, fig)))
    if args.writes:
        parts.append(("writes on sqlite", lambda: writes_part("sqlite", STATE_ROOT, args, fig)))
        if args.postgres:
            parts.append(("writes on postgres",
                          lambda: writes_part("postgres", STATE_ROOT, args, fig)))
    if args.startup:
        parts.append(("memory and start-up", lambda: startup_part(
            STATE_ROOT, fig, runs=3, gets=50 if args.quick else 200, postgres=args.postgres)))
    if args.scale:
        parts.append(scale)
    return parts


def _interrupt(*_: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # so every finally block cleans up
    STATE_ROOT.mkdir(parents=True, exist_ok=True)
    fig: Figures = {"loadavg_1m_at_start": os.getloadavg()[0]}  # other work on the machine
    errors: list[str] = []
    for name, run in plan(args, fig, errors):
        log(f"part: {name}")
        try:
            run()
        except KeyboardInterrupt:  # the part's finally blocks have cleaned up
            errors.append(f"{name}: interrupted")
            break
        except Exception as exc:  # noqa: BLE001 - report it, run the other parts
            errors.append(f"{name}: {type(exc).__name__}: {exc}")
            log(f"part {name} FAILED: {exc}")
    print(f"\nload average at start: {fig['loadavg_1m_at_start']:.2f} on {os.cpu_count()} cores")
    print_table(rows(fig) + startup_rows(fig))
    for e in errors:
        print(f"error: {e}")
    if args.json:
        Path(args.json).write_text(json.dumps({"figures": fig, "errors": errors,
                                               "args": vars(args)}, indent=2, default=str))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
