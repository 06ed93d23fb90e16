"""The config drive stays true (the compute service's known bug: shares attached later never
appear on it). Here the metadata service is switched off, so the config drive is the guest's
only source: a share attached while stopped is mounted at the next boot, and one attached while
running is mounted after the drive's media is changed live."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.vm.harness import GUEST_TEST, Serve, serving, wait_for

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
    assert serve.http.delete(f"/v2.1/servers/{sid}").status_code == 204
    serve.wait_gone(sid)
