"""Issue 8 on one running guest, with a real `attachfs serve` on the machine's PostgreSQL:
- seven hot detaches at once go out together (nothing waits in a worker; the times are printed);
- PostgreSQL stopped for 30 s during attaches: the agent survives, backs off, shows the outage
  in /v2.1/os-attachfs-health, and every attachment converges afterwards, same process;
- libvirtd restarted during attaches: the same.
PostgreSQL is the machine's shared cluster: it is always started again in a `finally`."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import PG_ADMIN_URL
from tests.vm.harness import GUEST_TEST, Serve, serving, wait_for

pytestmark = [*GUEST_TEST, pytest.mark.exclusive]  # stops PostgreSQL: run alone
ADMIN = {"X-Auth-Token": "admin:admin"}
PG_CLUSTER = ("15", "main")
START_LIBVIRTD = Path(__file__).parents[2] / "scripts" / "start-libvirtd.sh"


def _admin_url() -> str:
    return PG_ADMIN_URL.replace("postgresql+psycopg", "postgresql")


@pytest.fixture(scope="module")
def pg_database() -> Iterator[str]:
    import psycopg

    name = f"attachfs_outage_{os.getpid()}"
    with psycopg.connect(_admin_url(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    yield PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(_admin_url(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def serve(pg_database: str) -> Iterator[Serve]:
    with serving(config=f'database_url = "{pg_database}"\n'
                        "[libvirt]\nspare_root_ports = 8\n"
                        "[agent]\ndetach_timeout = 20.0\n") as s:
        yield s


@pytest.fixture(scope="module")
def sid(serve: Serve) -> str:
    r = serve.http.post("/v2.1/servers", json={"server": {
        "name": "outages", "flavorRef": "2", "imageRef": "debian-busybox"}})
    assert r.status_code == 202, r.text
    server_id = str(r.json()["server"]["id"])
    serve.wait_status(server_id, "ACTIVE")
    serve.wait_console(server_id, "attachfs-guest:", timeout=180)
    return server_id


def attach(serve: Serve, sid: str, share_id: str, tag: str) -> None:
    r = serve.http.post(f"/v2.1/servers/{sid}/shares",
                        json={"share": {"share_id": share_id, "tag": tag}})
    assert r.status_code == 201, r.text


def detach_all(serve: Serve, sid: str, shares: list[str]) -> float:
    """DELETE them all at once; seconds until every row is gone."""
    started = time.monotonic()
    for share_id in shares:
        assert serve.http.delete(f"/v2.1/servers/{sid}/shares/{share_id}").status_code == 200
    wait_for("detached", lambda: all(serve.mapping(sid, s) is None for s in shares), 120)
    return time.monotonic() - started


def mounted_in_guest(serve: Serve, sid: str, tags: list[str]) -> None:
    for tag in tags:
        serve.wait_console(sid, f"attachfs-guest: mounted share {tag} at", timeout=90)


def health(serve: Serve) -> dict[str, object]:
    r = serve.http.get("/v2.1/os-attachfs-health", headers=ADMIN, timeout=5)
    r.raise_for_status()
    agent: dict[str, object] = r.json()["health"]["agent"]
    return agent


def test_seven_detaches_go_out_together(serve: Serve, sid: str) -> None:
    one, _ = serve.new_share("det-one")
    attach(serve, sid, one, "detone")
    serve.wait_mapping(sid, one, "active")
    mounted_in_guest(serve, sid, ["detone"])
    t_one = detach_all(serve, sid, [one])

    seven = [serve.new_share(f"det-{i}")[0] for i in range(7)]
    for i, share_id in enumerate(seven):
        attach(serve, sid, share_id, f"det{i}")
    for share_id in seven:
        serve.wait_mapping(sid, share_id, "active")
    mounted_in_guest(serve, sid, [f"det{i}" for i in range(7)])
    t_seven = detach_all(serve, sid, seven)
    print(f"\nhot detach, one running guest: 1 share {t_one:.1f}s, 7 shares {t_seven:.1f}s "
          f"({t_seven / t_one:.2f}x)")
    # The agent's part: the unplug requests go out in groups, not one pass a share (nothing
    # waits in turn). Not necessarily in one pass: the guest hears of a detach at once (its
    # long-poll), so it may let go of the first share before the last DELETE has arrived.
    passes = [line for line in serve.log.read_text().splitlines()
              if "hot_detach:unplug(det" in line and "hot_detach:unplug(detone)" not in line]
    for i in range(7):
        assert any(f"hot_detach:unplug(det{i})" in line for line in passes), passes
    print(f"unplug requests in {len(passes)} pass(es)")
    assert len(passes) < 7, f"one pass a share: the detaches waited in turn: {passes}"
    assert serve.host_mounts() == []
    wait_for("virtiofsd gone", lambda: serve.virtiofsd_pids() == [] or None, 30)
    # The times are printed, not asserted (a figure, not a property: under load they say more
    # about the machine than about attachfs). Measured on an idle machine: 1 share 1.3 s,
    # 7 shares 1.4 s (1.12x): QEMU's DEVICE_DELETED for all seven arrive together and each
    # device's virtiofsd (attachfs's own, virt/virtiofsd.py) ends by itself.


def _pg(action: str) -> None:
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", *PG_CLUSTER, action],
                   check=True, timeout=120)


def test_postgresql_stopped_30s_during_attaches(serve: Serve, sid: str) -> None:
    shares = [serve.new_share(f"pg-{i}")[0] for i in range(3)]
    pid = serve.proc.pid if serve.proc else None
    for i, share_id in enumerate(shares):
        attach(serve, sid, share_id, f"pg{i}")
    try:
        _pg("stop")
        stopped = time.monotonic()
        seen = wait_for("the outage in the health record",
                        lambda: (h := health(serve)) and not h["database"]["ok"] and h,  # type: ignore[index]
                        timeout=20)
        print(f"\nhealth during the outage: {seen['database']}")
        time.sleep(max(0.0, 30 - (time.monotonic() - stopped)))
    finally:
        _pg("start")
    for share_id in shares:
        serve.wait_mapping(sid, share_id, "active", timeout=120)
    assert serve.proc is not None and serve.proc.poll() is None and serve.proc.pid == pid
    wait_for("database ok again", lambda: health(serve)["database"]["ok"], 30)  # type: ignore[index]
    log = serve.log.read_text()
    polls = log.count("database unavailable")
    print(f"'database unavailable' logged {polls} time(s); agent log lines "
          f"{len(log.splitlines())}")
    assert polls <= 3, polls  # once per streak, not once per retry
    detach_all(serve, sid, shares)


def _libvirtd_pids() -> list[int]:
    out = subprocess.run(["pgrep", "-x", "libvirtd"], capture_output=True, text=True,
                         check=False).stdout
    return [int(p) for p in out.split()]


def _stop_libvirtd() -> None:
    """What scripts/setup-libvirt.sh does to restart it: the running daemon, by its pid."""
    for pid in _libvirtd_pids():
        os.kill(pid, 15)
    wait_for("libvirtd gone", lambda: not _libvirtd_pids(), 30, interval=0.1)


def _start_libvirtd() -> None:
    """The one way libvirtd is started (under its subreaper, until it answers)."""
    subprocess.run(["bash", str(START_LIBVIRTD)], check=True, timeout=60)


def test_libvirtd_restarted_during_attaches(serve: Serve, sid: str) -> None:
    shares = [serve.new_share(f"lv-{i}")[0] for i in range(3)]
    pid = serve.proc.pid if serve.proc else None
    started = time.monotonic()
    try:
        _stop_libvirtd()
        for i, share_id in enumerate(shares):  # the agent meets the outage
            attach(serve, sid, share_id, f"lv{i}")
        time.sleep(3)
        assert serve.mapping(sid, shares[0])["status"] == "attaching"  # type: ignore[index]
    finally:
        _start_libvirtd()
    for share_id in shares:
        serve.wait_mapping(sid, share_id, "active", timeout=120)
    print(f"\nlibvirtd restart: all attached {time.monotonic() - started:.1f}s after it began")
    assert serve.proc is not None and serve.proc.poll() is None and serve.proc.pid == pid
    assert serve.server(sid)["status"] == "ACTIVE"  # type: ignore[index]
    detach_all(serve, sid, shares)
    assert serve.host_mounts() == []
