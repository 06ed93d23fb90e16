"""Issue 3 end to end on ONE running guest (boots are ~10 s under TCG, so the tests share it,
in order): hot attach/detach with slot reuse, read-only enforced on the host, slot exhaustion,
kill -9 of the agent during a hot attach and a hot detach.

The guest's user_data runs a small loop that answers `ping` files in every mounted share with a
`pong` file (so the host can prove reads and writes from inside the guest at any moment), and
runs a write test on a share mounted at /mnt/ro, printing each result on the console."""

from __future__ import annotations

import base64
import json
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from attachfs.storage import mountinfo
from attachfs.virt.libvirt import LibvirtDriver
from tests.vm.harness import GUEST_TEST, Serve, serving, wait_for

pytestmark = GUEST_TEST

SLOTS = 3
EXT = {"OpenStack-API-Version": "compute 2.97, attachfs 1.1"}
GUEST_LOOP = r"""#!/bin/sh
ro_test() {
  d=/mnt/ro
  for t in "write:echo more >> $d/existing.txt" "create:echo new > $d/new.txt" \
           "delete:rm -f $d/existing.txt" "chmod:chmod 777 $d/existing.txt" \
           "touch:touch $d/existing.txt" "mkdir:mkdir $d/newdir"; do
    name=${t%%:*}; cmd=${t#*:}
    if sh -c "$cmd" 2>/dev/null; then echo "ro-test $name: ALLOWED"; else echo "ro-test $name: denied"; fi
  done
  echo "ro-test read: $(cat $d/existing.txt)"
}
(
  while true; do
    for p in /mnt/*/ping; do
      [ -f "$p" ] || continue
      d=${p%/ping}
      v=$(cat "$p")
      echo "$v" > "$d/pong.tmp" && mv "$d/pong.tmp" "$d/pong" && rm -f "$p"
      echo "pong $v from $d"
    done
    if [ -f /mnt/ro/existing.txt ] && [ ! -f /tmp/ro-done ]; then ro_test; touch /tmp/ro-done; fi
    sleep 0.3
  done
) &
echo "ping loop started"
"""


class Guest:
    def __init__(self, serve: Serve, sid: str) -> None:
        self.serve, self.sid = serve, sid

    def new_share(self, name: str) -> tuple[str, Path]:
        return self.serve.new_share(name)

    def attach(self, share_id: str, tag: str, **extra: object) -> None:
        headers = EXT if extra else {}
        r = self.serve.http.post(f"/v2.1/servers/{self.sid}/shares", headers=headers,
                                 json={"share": {"share_id": share_id, "tag": tag, **extra}})
        assert r.status_code == 201, r.text

    def detach(self, share_id: str) -> None:
        r = self.serve.http.delete(f"/v2.1/servers/{self.sid}/shares/{share_id}")
        assert r.status_code == 200, r.text

    def ping(self, share_dir: Path, timeout: float = 60) -> None:
        """The guest reads `ping` and writes `pong` in this share: both directions work now."""
        token = uuid.uuid4().hex
        (share_dir / "pong").unlink(missing_ok=True)
        (share_dir / "ping").write_text(token + "\n")
        wait_for(f"pong in {share_dir.name}", lambda: (share_dir / "pong").exists()
                 and (share_dir / "pong").read_text().strip() == token, timeout)

    def devices(self) -> set[str]:
        driver = LibvirtDriver()
        try:
            return driver.guest_share_tags(self.sid)
        finally:
            driver.close()


@pytest.fixture(scope="module")
def serve() -> Iterator[Serve]:
    with serving(config=f"[libvirt]\nspare_root_ports = {SLOTS}\n"
                        "[agent]\ndetach_timeout = 8.0\n"
                        "[notifications]\ndriver = \"file\"\n") as s:
        yield s


@pytest.fixture(scope="module")
def guest(serve: Serve) -> Guest:
    user_data = base64.b64encode(GUEST_LOOP.encode()).decode()
    r = serve.http.post("/v2.1/servers", json={"server": {
        "name": "hot", "flavorRef": "2", "imageRef": "debian-busybox", "user_data": user_data}})
    assert r.status_code == 202, r.text
    sid = str(r.json()["server"]["id"])
    serve.wait_status(sid, "ACTIVE")
    serve.wait_console(sid, "ping loop started")
    return Guest(serve, sid)


def test_hot_attach_detach_and_slot_reuse_in_one_boot(serve: Serve, guest: Guest) -> None:
    a_id, a_dir = guest.new_share("hot-a")
    b_id, b_dir = guest.new_share("hot-b")
    (a_dir / "hello.txt").write_text("A's file\n")
    launched = serve.server(guest.sid)["OS-SRV-USG:launched_at"]  # type: ignore[index]

    guest.attach(a_id, "sharea")
    serve.wait_mapping(guest.sid, a_id, "active")
    serve.wait_console(guest.sid, "attachfs-guest: mounted share sharea at /mnt/sharea")
    guest.ping(a_dir)
    guest.attach(b_id, "shareb")
    serve.wait_mapping(guest.sid, b_id, "active")
    guest.ping(b_dir)
    assert guest.devices() == {"sharea", "shareb"}

    guest.detach(a_id)
    wait_for("A detached", lambda: serve.mapping(guest.sid, a_id) is None, 60)
    serve.wait_console(guest.sid, "attachfs-guest: unmounted share sharea")
    assert guest.devices() == {"shareb"}
    guest.ping(b_dir)  # B untouched: still reads and writes

    guest.attach(a_id, "sharea")  # the freed slot is used again
    serve.wait_mapping(guest.sid, a_id, "active")
    guest.ping(a_dir)
    guest.ping(b_dir)
    server = serve.server(guest.sid)
    assert server is not None and server["OS-SRV-USG:launched_at"] == launched  # no reboot
    events = [json.loads(line)["event_type"] for line in
              (serve.state_dir / "notifications.jsonl").read_text().splitlines()]
    for kind in ("share_attach", "share_detach"):
        assert f"instance.{kind}.start" in events and f"instance.{kind}.end" in events
    guest.detach(a_id)
    guest.detach(b_id)
    wait_for("A and B detached", lambda: serve.mapping(guest.sid, a_id) is None
             and serve.mapping(guest.sid, b_id) is None, 60)


def test_read_only_attachment_refuses_every_write(serve: Serve, guest: Guest) -> None:
    ro_id, ro_dir = guest.new_share("hot-ro")
    existing = ro_dir / "existing.txt"
    existing.write_text("read me\n")
    existing.chmod(0o644)
    before = existing.stat()
    guest.attach(ro_id, "ro", read_only=True)
    serve.wait_mapping(guest.sid, ro_id, "active")
    out = serve.wait_console(guest.sid, "ro-test read: read me")
    for name in ("write", "create", "delete", "chmod", "touch", "mkdir"):
        assert f"ro-test {name}: denied" in out, name
    assert "ALLOWED" not in out
    after = existing.stat()
    assert existing.read_text() == "read me\n"
    assert (stat.S_IMODE(after.st_mode), after.st_mtime_ns) == (0o644, before.st_mtime_ns)
    assert sorted(p.name for p in ro_dir.iterdir()) == ["existing.txt"]
    guest.detach(ro_id)
    wait_for("ro detached", lambda: serve.mapping(guest.sid, ro_id) is None, 60)


def test_slots_exhausted_is_409_and_nothing_is_disturbed(serve: Serve, guest: Guest) -> None:
    shares = [guest.new_share(f"slot-{i}") for i in range(SLOTS + 1)]
    for i, (share_id, _) in enumerate(shares[:SLOTS]):
        guest.attach(share_id, f"slot{i}")
    for share_id, _ in shares[:SLOTS]:
        serve.wait_mapping(guest.sid, share_id, "active")
    r = serve.http.post(f"/v2.1/servers/{guest.sid}/shares",
                        json={"share": {"share_id": shares[SLOTS][0], "tag": "onetoomany"}})
    assert r.status_code == 409, r.text
    assert "hot-plug slot" in r.json()["conflictingRequest"]["message"]
    assert guest.devices() == {f"slot{i}" for i in range(SLOTS)}
    guest.ping(shares[0][1])
    for share_id, _ in shares[:SLOTS]:
        guest.detach(share_id)
    for share_id, _ in shares[:SLOTS]:
        wait_for("slot freed", lambda sid=share_id: serve.mapping(guest.sid, sid) is None, 60)


def test_failed_attach_is_error_with_reason_everywhere(serve: Serve, guest: Guest) -> None:
    """A step that fails (the share's directory vanished on the host) leaves the attachment in
    `error` with the reason on the server, in the audit trail and in an .error notification,
    and nothing half-done: no device, no host mount, no access rule; DELETE then clears it."""
    share_id, share_dir = guest.new_share("hot-broken")
    # the share's filesystem vanishes from the host: unmounted, its image and directory gone
    mountinfo.run(["umount", "-l", str(share_dir)])
    (share_dir.parent / "images" / f"{share_id}.ext4").unlink()
    share_dir.rmdir()
    guest.attach(share_id, "broken")
    mapping = serve.wait_mapping(guest.sid, share_id, "error")
    server = serve.server(guest.sid)
    assert server is not None
    attached = {a["share_id"]: a for a in server["os-extended-shares:shares_attached"]}
    assert "does not exist" in attached[share_id]["fault"] or \
        "missing" in attached[share_id]["fault"]
    errors = [n for n in serve.notifications()
              if n["event_type"] == "instance.share_attach.error"]
    assert errors and errors[-1]["priority"] == "ERROR"
    data = errors[-1]["payload"]["nova_object.data"]
    assert data["share_id"] == share_id and data["fault"]["nova_object.data"]["exception_message"]
    assert data["action_initiator_user"] == "alice"
    actions = serve.http.get(f"/v2.1/servers/{guest.sid}/os-instance-actions").json()
    attach = next(a for a in actions["instanceActions"] if a["action"] == "attach_share")
    assert attach["message"] == "Error"
    assert "broken" not in guest.devices() and serve.host_mounts() == []
    assert mapping["status"] == "error"
    rules = serve.http.get("/v2.1/os-filesystem/hot-broken/instances").json()["instances"]
    assert rules == [{"id": guest.sid, "status": "error"}]
    guest.detach(share_id)
    wait_for("errored attachment removed", lambda: serve.mapping(guest.sid, share_id) is None, 60)
    # no access rule or lock was left behind: the share can be deleted now
    assert serve.http.delete("/v2.1/os-filesystem/hot-broken").status_code == 202


def test_kill_9_during_hot_attach_and_hot_detach(serve: Serve, guest: Guest) -> None:
    share_id, share_dir = guest.new_share("hot-kill")
    guest.attach(share_id, "killme")
    serve.kill9()  # the agent is granting / mounting / adding the device right now
    serve.start()
    serve.wait_mapping(guest.sid, share_id, "active")
    guest.ping(share_dir)
    assert guest.devices() == {"killme"}
    assert len(serve.host_mounts()) == 1

    guest.detach(share_id)
    wait_for("detach under way", lambda: (m := serve.mapping(guest.sid, share_id)) is None
             or m["status"] == "detaching", 10)
    serve.kill9()  # the agent waits for the guest to unmount, or removes the device
    serve.start()
    wait_for("detached after restart", lambda: serve.mapping(guest.sid, share_id) is None, 60)
    wait_for("device gone", lambda: guest.devices() == set() or None, 30)
    wait_for("host mount gone", lambda: serve.host_mounts() == [] or None, 30)
    wait_for("virtiofsd gone", lambda: serve.virtiofsd_pids() == [] or None, 30)
    assert serve.server(guest.sid)["status"] == "ACTIVE"  # type: ignore[index]
