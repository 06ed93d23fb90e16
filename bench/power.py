"""Part 5: power on with 0, 1, 4 and 8 attached shares: os-start -> ACTIVE and -> the guest
agent's `ready` (with each boot stage on the console), and os-stop -> SHUTOFF."""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

from bench.console import TAIL_POLL, ConsoleTail, tail
from bench.measure import Figures, attach, detach, log, wait_status
from harness import host
from harness.process import wait_for
from harness.serve import Serve

READY = "attachfs-guest: ready"
MOUNTED = re.compile(r"attachfs-guest: mounted share (\S+) at ")
POWER_SHARES = (0, 1, 4, 8)
# console lines that mark the stages of a boot (figures poweron_N_<stage>_s_<run> in the JSON)
STAGES = {"kernel": "attachfs-init: kernel", "dhcp": "attachfs-init: eth0 ",
          "metadata": "attachfs-guest: source ", "ready": READY}


def other_guests(fig: Figures, key: str, *own: str) -> None:
    """How many guests not of this bench were running: each one takes CPU under TCG."""
    fig[key] = float(len(set(host.attachfs_guests()) - {f"attachfs-{u}" for u in own}))


def stop_server(serve: Serve, sid: str) -> float:
    t0 = time.perf_counter()
    serve.action(sid, {"os-stop": None}).raise_for_status()
    serve.wait_status(sid, "SHUTOFF", 300, 0.1)
    return time.perf_counter() - t0


def start_server(serve: Serve, sid: str, console: ConsoleTail) -> dict[str, float]:
    """os-start; seconds until ACTIVE (API) and until each of STAGES is on the console."""
    t0 = time.perf_counter()
    serve.action(sid, {"os-start": None}).raise_for_status()
    seen: dict[str, float] = {}

    def tick() -> None:
        now = time.perf_counter()
        for stage, line in STAGES.items():
            if stage not in seen and line in console.text:
                seen[stage] = now - t0
        if "active" not in seen and serve.reached(sid, "ACTIVE"):
            seen["active"] = time.perf_counter() - t0

    seen["ready"] = console.wait(READY, 300, tick) - t0
    tick()
    if "active" not in seen:
        wait_for("server ACTIVE", lambda: serve.reached(sid, "ACTIVE"), 60, TAIL_POLL)
        seen["active"] = time.perf_counter() - t0
    return seen


class Attached:
    """The attachments p0..pN-1 of the stopped server (made inactive, or detached)."""

    def __init__(self, serve: Serve, sid: str, shares: list[str]) -> None:
        self.serve, self.sid, self.shares = serve, sid, shares
        self.ids: list[str] = []

    def set_count(self, n: int) -> None:
        client = self.serve.http
        while len(self.ids) > n:
            wait_status(client, detach(client, self.sid, self.ids[-1]), "gone")
            self.ids.pop()
        while len(self.ids) < n:
            i = len(self.ids)
            attach(client, self.sid, self.shares[i], f"p{i}")
            self.ids.append(self.shares[i])
            wait_status(client, f"/v2.1/servers/{self.sid}/shares/{self.shares[i]}", "inactive")


def boot_with(serve: Serve, sid: str, n: int, console: Path, run: int, fig: Figures) -> None:
    """One boot with n shares attached: the figures of each stage, then the stop."""
    with tail(console) as con:
        seen = start_server(serve, sid, con)
        text = con.text[:con.text.index(READY)]
    mounted = set(MOUNTED.findall(text))
    wanted = {f"p{i}" for i in range(n)}
    if mounted != wanted:
        raise RuntimeError(f"power on with {n} shares: the guest mounted "
                           f"{sorted(mounted)} before ready, wanted {sorted(wanted)}")
    for stage, value in seen.items():
        fig[f"poweron_{n}_{stage}_s_{run}"] = value
    fig[f"poweron_{n}_stop_s_{run}"] = stop_server(serve, sid)
    log(f"power on with {n} share(s), run {run + 1}: " + ", ".join(
        f"{k} {v:.2f}s" for k, v in sorted(seen.items(), key=lambda kv: kv[1])))


def power_on_part(serve: Serve, sid: str, shares: list[str], console: Path,
                  args: argparse.Namespace, fig: Figures) -> None:
    """The server is stopped with no attachment; `shares` holds >= 8 share ids. Each run boots
    it once with each count of POWER_SHARES (interleaved, so that a slow spell on the machine
    does not land on one count only). Leaves it stopped with no attachment."""
    other_guests(fig, "poweron_other_guests", sid)
    attached = Attached(serve, sid, shares)
    try:
        for run in range(args.power_runs):
            for n in POWER_SHARES:
                attached.set_count(n)
                boot_with(serve, sid, n, console, run, fig)
    finally:
        try:  # the server is stopped (or a failure is being reported)
            attached.set_count(0)
        except Exception as exc:  # noqa: BLE001 - cleanup goes on; deleting the server
            log(f"cleanup: detaching the power-on shares failed: {exc}")
