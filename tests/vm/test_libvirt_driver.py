"""Boot a real guest through LibvirtDriver and use a virtio-fs share from inside it.

The rows the metadata service reads are written straight into a database (no API or agent:
those are tested end to end in test_end_to_end.py); the metadata service itself is the real
one, on the guest's own unix socket. Needs root and libvirtd (scripts/setup-libvirt.sh); boots under TCG
when KVM is not usable.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from attachfs.db.engine import Database, migrate
from attachfs.db.tables import Server, ShareMapping
from attachfs.metadata.sockets import MetadataSockets

pytestmark = pytest.mark.vm

IMAGES = Path("/var/lib/attachfs/images")
SHARES = Path("/var/lib/attachfs/test-shares")
RUN = Path("/run/attachfs-test")


def _serve_metadata(work: Path, server_uuid: str, tag: str, user_data: str) -> MetadataSockets:
    """The real metadata service on a real database holding just this server and its share."""
    url = f"sqlite:///{work / 'attachfs.db'}"
    migrate(url)
    db = Database(url)
    with db.session() as s:
        s.add(Server(uuid=server_uuid, name="test-vm", project_id="p1", user_id="u1", host="h",
                     flavor_id="1", image_id="i", vcpus=1, memory_mib=256, vm_state="active",
                     power_intent="on", user_data=base64.b64encode(user_data.encode()).decode(),
                     meta={}))
        s.flush()
        s.add(ShareMapping(uuid=str(uuid.uuid4()), instance_uuid=server_uuid,
                           share_id=str(uuid.uuid4()), status="active", tag=tag,
                           user_id="u1", project_id="p1"))
    return MetadataSockets(db, work / "metadata")


def _wait_for(log: Path, text: str, timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        content = log.read_text(errors="replace") if log.exists() else ""
        if text in content:
            return time.monotonic() - start
        if "attachfs-guest: ready" in content:
            break  # the agent is done: the line will not come
        time.sleep(0.2)
    content = log.read_text(errors="replace") if log.exists() else "(no console log)"
    raise AssertionError(f"{text!r} not on the console:\n{content[-4000:]}")


def test_boot_guest_with_share_and_stop() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: libvirt qemu:///system, virtiofsd, /var/lib/attachfs")
    from attachfs.virt.base import GuestShare, GuestSpec, PowerState
    from attachfs.virt.image import build_image
    from attachfs.virt.libvirt import LibvirtDriver

    image = build_image(IMAGES)
    driver = LibvirtDriver(owner="test-owner")
    stranger = LibvirtDriver(owner="another-agent")
    server_uuid = str(uuid.uuid4())
    SHARES.mkdir(parents=True, exist_ok=True)
    RUN.mkdir(parents=True, exist_ok=True)
    share_dir = Path(tempfile.mkdtemp(prefix="share-", dir=SHARES))
    work = Path(tempfile.mkdtemp(prefix="vm-", dir=RUN))
    console = work / "console.log"
    (share_dir / "from-host.txt").write_text("hello from the host\n")
    tag = "testshare"
    user_data = (
        "#!/bin/sh\n"
        f"cat /mnt/{tag}/from-host.txt\n"
        f"echo written by the guest > /mnt/{tag}/from-guest.txt\n"
        "sync\n"
    )
    metadata = _serve_metadata(work, server_uuid, tag, user_data)
    sock = metadata.ensure(server_uuid)
    spec = GuestSpec(
        uuid=server_uuid, name="test-vm", vcpus=1, memory_mib=256, image=image,
        console_log=console, metadata_socket=sock,
        shares=(GuestShare(tag=tag, host_path=share_dir),),
    )
    try:
        started = time.monotonic()
        driver.start_guest(spec)
        driver.start_guest(spec)  # idempotent
        assert driver.list_guests().get(server_uuid) == PowerState.RUNNING
        assert driver.guest_state(server_uuid) == PowerState.RUNNING
        assert driver.guest_share_tags(server_uuid) == {tag}
        # another agent on the same libvirtd neither sees nor touches this guest
        assert server_uuid not in stranger.list_guests()
        stranger.stop_guest(server_uuid, 0)
        assert driver.guest_state(server_uuid) == PowerState.RUNNING
        _wait_for(console, f"attachfs-guest: mounted share {tag} at /mnt/{tag}", 180)
        _wait_for(console, "attachfs-guest: ready", 60)
        print(f"boot to ready: {time.monotonic() - started:.1f} s")
        text = console.read_text(errors="replace")
        assert "hello from the host" in text
        assert "attachfs-guest: user_data exited 0" in text
        assert (share_dir / "from-guest.txt").read_text() == "written by the guest\n"

        stop = time.monotonic()
        driver.stop_guest(server_uuid, timeout=60)
        print(f"stop: {time.monotonic() - stop:.1f} s")
        assert server_uuid not in driver.list_guests()
        assert driver.guest_state(server_uuid) == PowerState.MISSING
        assert "power button pressed" in console.read_text(errors="replace")
        driver.stop_guest(server_uuid, timeout=1)  # missing guest: no-op
    finally:
        dom = driver._lookup(server_uuid)
        if dom is not None:
            with contextlib.suppress(Exception):
                dom.destroy()
        driver.close()
        stranger.close()
        metadata.close()
        shutil.rmtree(share_dir, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
