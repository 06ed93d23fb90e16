"""The table `make bench` prints: figure, value, baseline, ratio (figures are never asserted)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable

from bench.measure import Figures, Row
from bench.power import POWER_SHARES
from bench.scale import scale_rows
from bench.writes import writes_rows

Add = Callable[..., None]
LISTINGS = (("list_shares", "GET servers/{id}/shares (32)"),
            ("show_share", "GET servers/{id}/shares/{share}"),
            ("show_server", "GET servers/{id} (32 shares)"),
            ("servers_detail", "GET servers/detail (313 srv, 10k shares)"),
            ("rows_floor", "floor of detail: its 10k rows by the driver + json, no HTTP"),
            ("floor_read", "floor: HTTP + SELECT 1 row"))


def _ms(v: float) -> str:
    return "-" if math.isnan(v) else f"{v:.2f} ms"


def _adder(fig: Figures, out: list[Row]) -> Add:
    """add(label, key, base, fmt): a row for fig[key] (if measured), with fig[base] as its
    baseline and the ratio when that was measured too."""

    def add(label: str, key: str, base: str | None, fmt: Callable[[float], str] = _ms) -> None:
        if key not in fig:
            return
        value = fig[key]
        if base is None or base not in fig:
            out.append((label, fmt(value), "-", "-"))
            return
        out.append((label, fmt(value), f"{fmt(fig[base])} ({base})",
                    f"{value / fig[base]:.1f}x" if fig[base] else "-"))

    return add


def _cycle_rows(add: Add) -> None:
    def rate(v: float) -> str:
        return f"{v:.1f}/s"

    add("server create -> ACTIVE (domain started)", "server_active_s", None, lambda v: f"{v:.1f} s")
    add("server stop -> SHUTOFF", "server_stop_s", None, lambda v: f"{v:.1f} s")
    for what, key, base in (("attach POST", "attach_post", "floor_write"),
                            ("detach DELETE", "detach_delete", "floor_write"),
                            ("agent: POST done -> inactive", "agent_attach", None),
                            ("agent: DELETE done -> 404", "agent_detach", None),
                            ("full cycle", "cycle", None)):
        for q in ("p50", "p99"):
            add(f"{what} {q}", f"{key}_{q}_ms", base and f"{base}_{q}_ms")
    add("cycles per second", "cycles_per_s", None, rate)
    add("agent waits > 0.5 s (of 2 per cycle)", "agent_slow_passes", None, lambda v: f"{v:.0f}")
    add("API throughput (attach+detach)", "api_req_per_s", "floor_write_req_per_s", rate)


def _floor_rows(add: Add) -> None:
    for what, key, base in (("floor: HTTP + INSERT commit", "floor_write", None),
                            ("floor: HTTP only", "floor_http", None),
                            ("serve: GET /v2.1/ (no database)", "serve_http", "floor_http")):
        for q in ("p50", "p99"):
            add(f"{what} {q}", f"{key}_{q}_ms", base and f"{base}_{q}_ms")


def _listing_rows(add: Add) -> None:
    for kind in ("sqlite", "postgres"):
        for what, label in LISTINGS:
            for q in ("p50", "p99"):
                base = None if what == "floor_read" else f"{kind}_floor_read_{q}_ms"
                add(f"[{kind}] {label} {q}", f"{kind}_{what}_{q}_ms", base)
        for q in ("p50", "p99"):  # what the view adds to the rows it cannot avoid
            add(f"[{kind}] GET servers/detail against the floor of its rows {q}",
                f"{kind}_servers_detail_{q}_ms", f"{kind}_rows_floor_{q}_ms")


def rows(fig: Figures) -> list[Row]:
    out: list[Row] = []
    add = _adder(fig, out)
    _cycle_rows(add)
    _floor_rows(add)
    _listing_rows(add)
    out += writes_rows(fig)
    add("other guests running at the start", "other_guests_at_start", None, lambda v: f"{v:.0f}")
    return (out + hot_rows(fig) + power_rows(fig) + io_rows(fig) + transport_rows(fig)
            + scale_rows(fig))


TX_PLACES = (("vfs", "virtio-fs"), ("p9", "9p"), ("nfs", "NFS from the host's Ganesha"))
TX_MEASURES = (("seq_write", "sequential write 256 MiB", "mib_s", "MiB/s"),
               ("seq_read", "sequential read 256 MiB", "mib_s", "MiB/s"),
               ("rnd_write", "random 4 KiB writes", "ops_s", "ops/s"),
               ("rnd_read", "random 4 KiB reads", "ops_s", "ops/s"))


def transport_rows(fig: Figures) -> list[Row]:
    """Part 7: each transport against the host on the same share and against the guest's own
    tmpfs; the guest's tmpfs against the host's (what TCG costs before any transport)."""
    out: list[Row] = []
    for what, label, unit_key, unit in TX_MEASURES:
        def key(side: str, w: str = what, u: str = unit_key) -> str:
            return f"tx_{side}_{w}_{u}"
        for place, name in TX_PLACES:
            g, h, t = key(f"{place}_guest"), key(f"{place}_host"), key("tmpfs_guest")
            if g in fig and h in fig:
                out.append((f"guest {label}, {name}", f"{fig[g]:.1f} {unit}",
                            f"{fig[h]:.1f} {unit} (host, same share)",
                            f"{fig[g] / fig[h]:.2f}x"))
            if g in fig and t in fig:
                out.append((f"  {name} against the guest's tmpfs", f"{fig[g]:.1f} {unit}",
                            f"{fig[t]:.1f} {unit} (guest /tmp)", f"{fig[g] / fig[t]:.2f}x"))
        g, h = key("tmpfs_guest"), key("tmpfs_host")
        if g in fig and h in fig:
            out.append((f"TCG: guest tmpfs {label}", f"{fig[g]:.1f} {unit}",
                        f"{fig[h]:.1f} {unit} (host /dev/shm)", f"{fig[g] / fig[h]:.2f}x"))
    return out


IO_KINDS = (("builtin", "built-in share (bind -> virtio-fs)", "host: the share's directory"),
            ("cephfs", "CephFS (ceph-fuse -> virtio-fs)", "host: its own ceph-fuse"),
            ("nfs", "NFS (FUSE client -> virtio-fs)", "host: its own FUSE NFS mount"))


def io_rows(fig: Figures) -> list[Row]:
    """Part 6: guest throughput per data path against the host's through the same client."""
    out: list[Row] = []
    for kind, label, base_label in IO_KINDS:
        for op in ("write", "read"):
            key, base = f"io_{kind}_guest_{op}_mib_s", f"io_{kind}_host_{op}_mib_s"
            if key in fig and base in fig:
                out.append((f"guest {op} 64 MiB, {label}", f"{fig[key]:.1f} MiB/s",
                            f"{fig[base]:.1f} MiB/s ({base_label})",
                            f"{fig[key] / fig[base]:.2f}x"))
    if "io_cephfs_guest_write_mib_s" in fig and "io_builtin_guest_write_mib_s" in fig:
        for op in ("write", "read"):
            c, b = fig[f"io_cephfs_guest_{op}_mib_s"], fig[f"io_builtin_guest_{op}_mib_s"]
            out.append((f"guest {op}: CephFS against built-in", f"{c:.1f} MiB/s",
                        f"{b:.1f} MiB/s (built-in in the guest)", f"{c / b:.2f}x"))
    return out


def _ms0(v: float) -> str:
    return f"{v:.0f} ms"


def hot_rows(fig: Figures) -> list[Row]:
    out: list[Row] = []

    def add(label: str, key: str, base: str | None = None, base_label: str = "") -> None:
        for q in ("p50", "p95"):
            k, bk = f"{key}_{q}_ms", f"{base}_{q}_ms"
            if k not in fig:
                continue
            if base is None or bk not in fig:
                out.append((f"{label} {q}", _ms0(fig[k]), "-", "-"))
            else:
                out.append((f"{label} {q}", _ms0(fig[k]), f"{_ms0(fig[bk])} ({base_label})",
                            f"{fig[k] / fig[bk]:.1f}x"))

    add("hot attach: POST -> guest mounted", "hot_attach", "floor_hot_attach",
        "floor: attach_share -> mounted")
    add("  POST -> agent done (serve.log)", "hot_attach_agent")
    add("  agent done -> guest mounted", "hot_attach_guest")
    add("floor: attach_share call alone", "floor_hot_attach_call")
    add("hot detach: DELETE -> 404", "hot_detach", "floor_hot_detach",
        "floor: ask, unmounted, detach_share")
    add("  DELETE -> guest unmounted (console)", "hot_detach_unmounted")
    add("  DELETE -> agent done (serve.log)", "hot_detach_agent")
    add("hot detach of 7 shares at once: DELETEs -> all gone", "detach_together_7",
        "detach_together_1", "1 share alone; target <= 2x")
    add("floor: 7 unmounted and unplugged together", "floor_together_7", "floor_together_1",
        "floor: 1 share alone")
    return out


def power_rows(fig: Figures) -> list[Row]:
    out: list[Row] = []
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


def print_table(table: list[Row]) -> None:
    head = ("figure", "value", "baseline", "ratio")
    widths = [max(len(r[i]) for r in [head, *table]) for i in range(4)]
    for r in [head, tuple("-" * w for w in widths), *table]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
