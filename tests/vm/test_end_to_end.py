"""End to end through every real layer: `attachfs serve`, libvirt, a booted guest, virtio-fs,
the metadata service and the guest agent; checked from inside the guest (its console)."""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Iterator

import pytest

from attachfs.virt.libvirt import LibvirtDriver
from tests.vm.harness import GUEST_TEST, Serve, serving, wait_for

pytestmark = GUEST_TEST

GUEST_SCRIPT = """#!/bin/sh
if [ -f /mnt/data/hello.txt ]; then
  echo "guest read: $(cat /mnt/data/hello.txt)"
  echo "written by the guest at uptime $(cut -d' ' -f1 /proc/uptime)" > /mnt/data/from-guest.txt
  sync
  echo "guest wrote: /mnt/data/from-guest.txt"
fi
"""


@pytest.fixture
def serve() -> Iterator[Serve]:
    with serving(config="[notifications]\ndriver = \"file\"\n"
                        "include_share_mapping = true\n") as s:
        yield s


def _boot_stopped_server(serve: Serve, name: str) -> str:
    user_data = base64.b64encode(GUEST_SCRIPT.encode()).decode()
    r = serve.http.post("/v2.1/servers", json={"server": {
        "name": name, "flavorRef": "2", "imageRef": "debian-busybox", "user_data": user_data}})
    assert r.status_code == 202, r.text
    sid = str(r.json()["server"]["id"])
    serve.wait_status(sid, "ACTIVE")
    assert serve.action(sid, {"os-stop": None}).status_code == 202
    serve.wait_status(sid, "SHUTOFF")
    return sid


def _delete_and_check_clean(serve: Serve, sid: str) -> None:
    assert serve.http.delete(f"/v2.1/servers/{sid}").status_code == 204
    serve.wait_gone(sid)
    driver = LibvirtDriver()
    try:
        assert sid not in driver.list_guests()
    finally:
        driver.close()
    wait_for("host mounts released", lambda: serve.host_mounts() == [] or None, 30)
    wait_for("virtiofsd gone", lambda: serve.virtiofsd_pids() == [] or None, 30)


def test_guest_mounts_share_by_tag_reads_and_writes(serve: Serve) -> None:
    share_id, share_dir = serve.new_share("e2e-data")
    token = uuid.uuid4().hex
    (share_dir / "hello.txt").write_text(f"host says {token}\n")
    sid = _boot_stopped_server(serve, "e2e")

    r = serve.http.post(f"/v2.1/servers/{sid}/shares",
                        json={"share": {"share_id": share_id, "tag": "data"}})
    assert r.status_code == 201, r.text
    serve.wait_mapping(sid, share_id, "inactive")
    t0 = time.monotonic()
    assert serve.action(sid, {"os-start": None}).status_code == 202
    serve.wait_status(sid, "ACTIVE")
    assert serve.wait_mapping(sid, share_id, "active")["tag"] == "data"

    # The guest's own words: it learned the tag from the metadata service and mounted it.
    serve.wait_console(sid, "attachfs-guest: mounted share data at /mnt/data")
    out = serve.wait_console(sid, f"guest read: host says {token}")
    serve.wait_console(sid, "guest wrote: /mnt/data/from-guest.txt")
    print(f"power-on to guest write: {time.monotonic() - t0:.1f}s")
    assert "written by the guest" in (share_dir / "from-guest.txt").read_text()
    assert out.count("attachfs-guest: mounted share") >= 1
    assert len(serve.host_mounts()) == 1
    power_on = [n for n in serve.notifications() if n["event_type"] == "instance.power_on.end"]
    shares = power_on[-1]["payload"]["nova_object.data"]["shares"]
    assert [(x["nova_object.data"]["share_id"], x["nova_object.data"]["status"]) for x in shares] \
        == [(share_id, "active")]
    assert power_on[-1]["payload"]["nova_object.data"]["action_initiator_user"] == "alice"

    assert serve.action(sid, {"os-stop": None}).status_code == 202
    serve.wait_status(sid, "SHUTOFF")
    serve.wait_mapping(sid, share_id, "inactive")
    assert serve.host_mounts() == []
    assert serve.http.delete(f"/v2.1/servers/{sid}/shares/{share_id}").status_code == 200
    wait_for("attachment removed", lambda: serve.mapping(sid, share_id) is None, 60)
    # the access rule is gone, so the share can be deleted now
    assert serve.http.delete("/v2.1/os-filesystem/e2e-data").status_code == 202
    _delete_and_check_clean(serve, sid)


def test_agent_killed_while_server_starts_converges(serve: Serve) -> None:
    share_id, share_dir = serve.new_share("kill-data")
    (share_dir / "hello.txt").write_text("survives kill -9\n")
    sid = _boot_stopped_server(serve, "kill9")
    assert serve.http.post(f"/v2.1/servers/{sid}/shares",
                           json={"share": {"share_id": share_id, "tag": "data"}}).status_code == 201
    serve.wait_mapping(sid, share_id, "inactive")
    assert serve.action(sid, {"os-start": None}).status_code == 202
    time.sleep(1.5)  # the agent is now mounting / defining the guest
    serve.kill9()
    serve.start()

    server = serve.wait_status(sid, "ACTIVE")
    assert server["OS-EXT-STS:vm_state"] == "active"
    serve.wait_mapping(sid, share_id, "active")
    serve.wait_console(sid, "guest read: survives kill -9")
    driver = LibvirtDriver()
    try:
        assert list(driver.list_guests()).count(sid) == 1
    finally:
        driver.close()
    assert len(serve.host_mounts()) == 1
    assert len(serve.virtiofsd_pids()) == 1
    _delete_and_check_clean(serve, sid)
