"""Timing requests, statistics and the API polls the measurements make."""

from __future__ import annotations

import math
import statistics
import time
from typing import Any

import httpx

from harness.process import wait_for

Figures = dict[str, float]
Row = tuple[str, str, str, str]  # figure, value, baseline, ratio
HEADERS = {"X-Auth-Token": "bench:bench", "OpenStack-API-Version": "compute 2.97"}
ADMIN = {"X-Auth-Token": "admin:admin"}
POLL = 0.005  # seconds between status polls; a figure that waits on a status is late by <= this


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def pct(samples: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of samples in seconds; NaN when empty."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def summary(name: str, samples: list[float]) -> dict[str, float]:
    """p50/p99/mean in milliseconds, and the count, under keys NAME_p50_ms etc."""
    return {f"{name}_p50_ms": pct(samples, 50) * 1000, f"{name}_p99_ms": pct(samples, 99) * 1000,
            f"{name}_mean_ms": (statistics.fmean(samples) * 1000) if samples else math.nan,
            f"{name}_n": float(len(samples))}


def stats(name: str, samples: list[float]) -> dict[str, float]:
    """p50/p95/mean in milliseconds (nearest rank), and the count; nothing without samples."""
    if not samples:
        return {}
    return {f"{name}_p50_ms": pct(samples, 50) * 1000, f"{name}_p95_ms": pct(samples, 95) * 1000,
            f"{name}_mean_ms": statistics.fmean(samples) * 1000,
            f"{name}_n": float(len(samples))}


def timed(client: httpx.Client, method: str, url: str, expect: int, **kw: Any) -> float:
    """One request; its wall time in seconds. A wrong status is an error, never a timing."""
    t0 = time.perf_counter()
    r = client.request(method, url, **kw)
    dt = time.perf_counter() - t0
    if r.status_code != expect:
        raise RuntimeError(f"{method} {url}: HTTP {r.status_code} (wanted {expect}): {r.text[:300]}")
    return dt


def sample(client: httpx.Client, method: str, url: str, expect: int, n: int, warmup: int = 5,
           **kw: Any) -> list[float]:
    for _ in range(warmup):
        timed(client, method, url, expect, **kw)
    return [timed(client, method, url, expect, **kw) for _ in range(n)]


def mapping_status(client: httpx.Client, url: str, wanted: str) -> bool:
    """Whether the attachment at `url` shows `wanted` ("gone": 404); an error in `error`."""
    r = client.get(url)
    if r.status_code == 404:
        return wanted == "gone"
    r.raise_for_status()
    status = r.json()["share"]["status"]
    if status == "error":
        raise RuntimeError(f"attachment went to error: {r.text[:300]}")
    return bool(status == wanted)


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
