"""The config drive stays true (the compute service's known bug: shares attached later never
appear on it). Here the metadata service is switched off, so the config drive is the guest's
only source: a share attached while stopped is mounted at the next boot, and one attached while
running is mounted after the drive's media is changed live, and after a crash that left the
drive behind the rows, the restarted agent repairs it (the drive is observed, not assumed)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import pytest

from tests.vm.harness import GUEST_TEST, Serve, crash_after, serving, wait_for

pytestmark = GUEST_TEST


@pytest.fixture
def serve() -> Iterator[Serve]:
    with serving(config="[metadata]\nenabled = false\n") as s:
        yield s


def test_guest_mounts_from_the_config_drive(serve: Serve) -> None:
    r = serve.http.post("/v2.1/servers", json={"server": {
        "name": "cd", "flavorRef": "2", "imageRef": "debian-busybox", "config_drive": True}})
    assert r.status_code == 202, r.text
    sid = str(r.json()["server"]["id"])
    serve.wait_status(sid, "ACTIVE")
    serve.wait_console(sid, "attachfs-guest: source config-drive")
    assert serve.action(sid, {"os-stop": None}).status_code == 202
    serve.wait_status(sid, "SHUTOFF")

    cold, _ = serve.new_share("cd-cold")
    assert serve.http.post(f"/v2.1/servers/{sid}/shares",
                           json={"share": {"share_id": cold, "tag": "cold"}}).status_code == 201
    serve.wait_mapping(sid, cold, "inactive")
    before = len(serve.console(sid))
    assert serve.action(sid, {"os-start": None}).status_code == 202
    serve.wait_status(sid, "ACTIVE")
    wait_for("cold share mounted from the config drive at boot",
             lambda: "attachfs-guest: mounted share cold at /mnt/cold" in serve.console(sid)[before:],
             120)
    assert "metadata service unreachable" in serve.console(sid)[before:] or \
        "source config-drive" in serve.console(sid)[before:]

    hot, _ = serve.new_share("cd-hot")
    assert serve.http.post(f"/v2.1/servers/{sid}/shares",
                           json={"share": {"share_id": hot, "tag": "hot"}}).status_code == 201
    serve.wait_mapping(sid, hot, "active")
    serve.wait_console(sid, "attachfs-guest: mounted share hot at /mnt/hot")

    # killed between the hot attach's record and the drive's rebuild: the row says active, the
    # drive does not list the share. The restarted agent sees the drive differ from the rows,
    # rebuilds it and changes the media: the guest, with nothing but the drive, mounts it.
    late, _ = serve.new_share("cd-late")
    crash_after(serve, "hot_attach:record", lambda: serve.http.post(
        f"/v2.1/servers/{sid}/shares", json={"share": {"share_id": late, "tag": "late"}}))
    with sqlite3.connect(f"file:{serve.state_dir / 'attachfs.db'}?mode=ro", uri=True) as db:
        assert db.execute("SELECT status FROM share_mappings WHERE share_id = ?",
                          (late,)).fetchall() == [("active",)]
    serve.start()
    serve.wait_console(sid, "attachfs-guest: mounted share late at /mnt/late")
    assert serve.http.delete(f"/v2.1/servers/{sid}").status_code == 204
    serve.wait_gone(sid)
