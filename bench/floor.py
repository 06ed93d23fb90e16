"""Part 2: the floor, an HTTP request with one committed write (and one without a database),
measured in the same run as what it is the floor of."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import httpx

from bench.measure import HEADERS, Figures, sample, summary
from bench.servers import ROOT, floor_argv
from harness.host import remove_state
from harness.process import free_port, running


def floor_part(state: Path, args: argparse.Namespace, fig: Figures) -> None:
    port = free_port()
    db_url = f"sqlite:///{state / 'floor.db'}"
    with running(floor_argv(db_url, port), state / "floor.log", port, "/ping", ROOT) as floor, \
            httpx.Client(base_url=floor.url, headers=HEADERS, timeout=60) as client:
        n = args.floor_n
        fig.update(summary("floor_write", sample(client, "POST", "/write", 201, n, json={})))
        fig.update(summary("floor_http", sample(client, "GET", "/ping", 200, n)))
        fig["floor_write_req_per_s"] = 1000 / fig["floor_write_mean_ms"]


def floor_alone(state_root: Path, args: argparse.Namespace, fig: Figures) -> None:
    """The floor without part 1 (--no-vm)."""
    state = Path(tempfile.mkdtemp(prefix="floor-", dir=state_root))
    try:
        floor_part(state, args, fig)
    finally:
        remove_state(state)
