"""Crash injection at every named step (core/steps.py) of every operation, on real guests.

For each kill point `operation:step`, `attachfs serve` is started with
ATTACHFS_CRASH_AFTER=<point> (it exits right after that step), the operation is requested, the
process dies, a plain `attachfs serve` is started again on the same state, and within a bound
everything converges with zero leaks: host mounts, virtiofsd, devices without rows, rows
without devices, read-only mounts that are writable (proven from inside the guest), access
rules, slots. Guests are shared between cases (a boot is ~10 s under TCG): one server lives
through attach, detach, reboot, power off and on; each delete case boots its own.

Not reachable here (the step never runs in these situations, so no kill point):
power_on:grant_access (needs an attach in flight during a start, which the API refuses),
reboot:mount (the host mount stays through a reboot), detach:unmount (a stopped server has no
host mount)."""

from __future__ import annotations

import base64
import contextlib
import socket
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from attachfs.storage import mountinfo
from attachfs.virt.libvirt import LibvirtDriver
from tests.vm.harness import GUEST_TEST, Serve, crash_after, serving, wait_for

pytestmark = GUEST_TEST
EXT = {"OpenStack-API-Version": "compute 2.97, attachfs 1.1"}
CONVERGE = 120.0  # s: the bound for convergence after the restart (a boot included)
# The guest answers a `check` file in any mounted share by trying to write next to it.
GUEST_LOOP = r"""#!/bin/sh
(
  while true; do
    for c in /mnt/*/check; do
      [ -f "$c" ] || continue
      d=${c%/check}; n=$(cat "$c")
      [ -f "/tmp/done-$n" ] && continue
      if echo x > "$d/w-$n" 2>/dev/null; then r=ALLOWED; else r=denied; fi
      echo "probe $n $r"; touch "/tmp/done-$n"
    done
    sleep 0.5
  done
) &
echo "probe loop started"
"""
TIMES: dict[str, float] = {}


class Matrix:
    def __init__(self, serve: Serve) -> None:
        self.serve = serve
        self.db = serve.state_dir / "attachfs.db"

    # ---- requests -------------------------------------------------------------------------
    def boot(self, name: str) -> str:
        user_data = base64.b64encode(GUEST_LOOP.encode()).decode()
        r = self.serve.http.post("/v2.1/servers", json={"server": {
            "name": name, "flavorRef": "2", "imageRef": "debian-busybox",
            "user_data": user_data}})
        assert r.status_code == 202, r.text
        sid = str(r.json()["server"]["id"])
        self.serve.wait_status(sid, "ACTIVE")
        return sid

    def attach(self, sid: str, share_id: str, tag: str, ro: bool = False) -> None:
        r = self.serve.http.post(f"/v2.1/servers/{sid}/shares", headers=EXT if ro else {},
                                 json={"share": {"share_id": share_id, "tag": tag,
                                                 **({"read_only": True} if ro else {})}})
        assert r.status_code == 201, r.text

    def detach(self, sid: str, share_id: str) -> None:
        r = self.serve.http.delete(f"/v2.1/servers/{sid}/shares/{share_id}")
        assert r.status_code == 200, r.text

    def action(self, sid: str, body: dict[str, object]) -> None:
        assert self.serve.action(sid, body).status_code == 202

    def probe(self, sid: str, share_dir: Path) -> str:
        """From inside the guest: can it write to this share? "ALLOWED" or "denied"."""
        nonce = uuid.uuid4().hex[:12]
        (share_dir / "check").write_text(nonce)
        try:
            out = self.serve.wait_console(sid, f"probe {nonce} ", timeout=60)
        except TimeoutError as exc:  # say what the guest and the agent were doing
            raise AssertionError(f"{exc}\n--- console:\n{self.serve.console(sid)[-3000:]}"
                                 f"\n--- agent:\n{self.serve.tail(6000)}") from exc
        return out.split(f"probe {nonce} ", 1)[1].split()[0]

    # ---- the crash ----------------------------------------------------------------------------
    def crash(self, point: str, request: Callable[[], None]) -> None:
        crash_after(self.serve, point, request)
        started = time.monotonic()
        self.serve.start()
        self.converged(point)
        TIMES[point] = time.monotonic() - started

    # ---- convergence and leaks --------------------------------------------------------------
    def rows(self) -> tuple[dict[str, tuple[str, str | None, int | None]],
                            list[tuple[str, str, str, str, bool]], set[str]]:
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True) as conn:
            servers = {u: (v, t, slots) for u, v, t, slots in conn.execute(
                "SELECT uuid, vm_state, task_state, share_slots FROM servers "
                "WHERE vm_state != 'deleted'")}
            maps = [(i, s, t, st, bool(ro)) for i, s, t, st, ro in conn.execute(
                "SELECT instance_uuid, share_id, tag, status, read_only FROM share_mappings")]
            rules = {s for (s,) in conn.execute("SELECT share_id FROM share_access")}
        return servers, maps, rules

    def leaks(self) -> list[str]:
        servers, maps, rules = self.rows()
        found = []
        busy = [m for m in maps if m[3] in ("attaching", "detaching")]
        busy += [(u, "", "", str(t), False) for u, (_, t, _) in servers.items() if t]
        if busy:
            return [f"in flight: {busy}"]
        driver = LibvirtDriver(owner=self.serve.owner)
        try:
            guests = driver.list_guests()
            devices = {u: {t: str(p) for t, p in driver.guest_devices(u).items()}
                       for u in guests}
        finally:
            driver.close()
        root = self.serve.mount_root.resolve()
        want_mounts: set[Path] = set()
        for uuid_, (vm_state, _, slots) in servers.items():
            running = uuid_ in guests
            if running != (vm_state == "active"):
                found.append(f"server {uuid_} {vm_state} but guest running={running}")
            if vm_state == "active" and slots is None:
                found.append(f"server {uuid_} active without a slot count")
            active = {(t, s, ro) for i, s, t, st, ro in maps if i == uuid_ and st == "active"}
            if set(devices.get(uuid_, {})) != {t for t, _, _ in active}:
                found.append(f"server {uuid_}: devices {devices.get(uuid_)} rows {active}")
            want_mounts |= {root / (s + ("-ro" if ro else "")) for _, s, ro in active}
        table = mountinfo.mount_table(root)
        if set(table) != want_mounts:
            found.append(f"host mounts {sorted(table)} != {sorted(want_mounts)}")
        for point, options in table.items():
            ro = point.name.endswith("-ro")
            if not {"nosuid", "nodev"} <= options or ("ro" in options) != ro:
                found.append(f"host mount {point} has {sorted(options)}")
        if len(self.serve.virtiofsd_pids()) != sum(map(len, devices.values())):
            found.append(f"virtiofsd {self.serve.virtiofsd_pids()} for devices {devices}")
        if rules != {s for _, s, _, _, _ in maps}:
            found.append(f"access rules {rules} for attachments {maps}")
        return found

    def converged(self, point: str) -> None:
        last: list[list[str]] = [[]]

        def clean() -> bool:
            last[0] = self.leaks()
            return not last[0]
        try:
            wait_for(f"convergence after {point}", clean, CONVERGE, interval=0.5)
        except AssertionError as exc:
            raise AssertionError(f"{point}: {last[0]}") from exc


@pytest.fixture(scope="module")
def matrix() -> Iterator[Matrix]:
    with serving(config="[libvirt]\nspare_root_ports = 4\n[agent]\ndetach_timeout = 5.0\n"
                        "stop_timeout = 5.0\n", prefix="crash-") as s:
        yield Matrix(s)
    if TIMES:
        print("\ncrash matrix: " + ", ".join(f"{k} {v:.1f}s" for k, v in TIMES.items()))
        print(f"crash matrix: {len(TIMES)} kill points, {sum(TIMES.values()):.0f}s converging")


@pytest.fixture(scope="module")
def sid(matrix: Matrix) -> str:
    server = matrix.boot("crash")
    matrix.serve.wait_console(server, "probe loop started")
    return server


@pytest.mark.parametrize("step", ["grant_access", "mount", "plug", "record"])
def test_hot_attach_read_only(matrix: Matrix, sid: str, step: str) -> None:
    share_id, share_dir = matrix.serve.new_share(f"ha-{step}")
    matrix.crash(f"hot_attach:{step}", lambda: matrix.attach(sid, share_id, f"ha{step[:4]}",
                                                             ro=True))
    assert matrix.serve.mapping(sid, share_id)["status"] == "active"  # type: ignore[index]
    assert matrix.probe(sid, share_dir) == "denied"  # read-only, from inside the guest
    matrix.detach(sid, share_id)
    matrix.converged(f"after hot_attach:{step}")


@pytest.mark.parametrize("step", ["unplug", "unmount", "revoke_access", "record"])
def test_hot_detach(matrix: Matrix, sid: str, step: str) -> None:
    share_id, share_dir = matrix.serve.new_share(f"hd-{step}")
    matrix.attach(sid, share_id, f"hd{step[:4]}")
    matrix.serve.wait_mapping(sid, share_id, "active")
    assert matrix.probe(sid, share_dir) == "ALLOWED"
    matrix.crash(f"hot_detach:{step}", lambda: matrix.detach(sid, share_id))
    assert matrix.serve.mapping(sid, share_id) is None


@pytest.fixture(scope="module")
def kept(matrix: Matrix, sid: str) -> tuple[str, Path]:
    """One read-write share that stays attached through reboots and power cycles."""
    share_id, share_dir = matrix.serve.new_share("kept")
    matrix.attach(sid, share_id, "kept")
    matrix.serve.wait_mapping(sid, share_id, "active")
    return share_id, share_dir


@pytest.mark.parametrize("step", ["stop_guest", "metadata", "start_guest", "record", "finish"])
def test_reboot(matrix: Matrix, sid: str, kept: tuple[str, Path], step: str) -> None:
    matrix.crash(f"reboot:{step}", lambda: matrix.action(sid, {"reboot": {"type": "SOFT"}}))
    matrix.serve.wait_console(sid, "probe loop started")
    assert matrix.probe(sid, kept[1]) == "ALLOWED"


@pytest.mark.parametrize("off_step,on_step,cold_step", [
    ("stop_guest", "mount", "grant_access"), ("unmount", "metadata", "record"),
    ("record", "start_guest", None), ("finish", "record", None), (None, "finish", None)])
def test_power_off_cold_attach_detach_power_on(matrix: Matrix, sid: str, kept: tuple[str, Path],
                                               off_step: str | None, on_step: str,
                                               cold_step: str | None) -> None:
    if off_step:
        matrix.crash(f"power_off:{off_step}", lambda: matrix.action(sid, {"os-stop": None}))
    else:
        matrix.action(sid, {"os-stop": None})
        matrix.serve.wait_status(sid, "SHUTOFF")
    assert matrix.serve.mapping(sid, kept[0])["status"] == "inactive"  # type: ignore[index]
    if cold_step:
        share_id, _ = matrix.serve.new_share(f"cold-{cold_step}")
        matrix.crash(f"cold_attach:{cold_step}", lambda: matrix.attach(sid, share_id, "cold"))
        assert matrix.serve.mapping(sid, share_id)["status"] == "inactive"  # type: ignore[index]
        detach_step = "revoke_access" if cold_step == "grant_access" else "record"
        matrix.crash(f"detach:{detach_step}", lambda: matrix.detach(sid, share_id))
        assert matrix.serve.mapping(sid, share_id) is None
    matrix.crash(f"power_on:{on_step}", lambda: matrix.action(sid, {"os-start": None}))
    assert matrix.serve.mapping(sid, kept[0])["status"] == "active"  # type: ignore[index]
    matrix.serve.wait_console(sid, "probe loop started")
    assert matrix.probe(sid, kept[1]) == "ALLOWED"


@pytest.mark.parametrize("step", ["stop_guest", "remove_metadata", "unmount", "revoke_access",
                                  "record", "finish"])
def test_delete(matrix: Matrix, step: str) -> None:
    server = matrix.boot(f"del-{step}")
    share_id, _ = matrix.serve.new_share(f"del-{step}")
    matrix.attach(server, share_id, "gone")
    matrix.serve.wait_mapping(server, share_id, "active")

    def metadata_served() -> bool:  # a listener answers on the guest's metadata socket
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as conn:
            conn.connect(str(matrix.serve.state_dir / "metadata" / f"{server}.sock"))
            return True
        return False

    def delete() -> None:
        # The delete gives the metadata back only when it is served (the planner's
        # _give_back_metadata): the restarted agent serves it again in its first passes, and a
        # DELETE that beat them (a loaded machine) had no remove_metadata step to crash after.
        wait_for("the restarted agent serving the guest's metadata", metadata_served, 60)
        matrix.serve.http.delete(f"/v2.1/servers/{server}")

    matrix.crash(f"delete:{step}", delete)
    assert matrix.serve.server(server) is None
    assert matrix.serve.http.delete(f"/v2.1/os-filesystem/del-{step}").status_code == 202
