"""Boot a real guest through LibvirtDriver and use a virtio-fs share from inside it.

This test isolates the driver: the metadata service is a tiny stdlib HTTP server on the guest's
metadata unix socket, serving a fixed meta_data.json and user_data. The real metadata service is
tested end to end elsewhere. Needs root and libvirtd (scripts/setup-libvirt.sh); boots under TCG
when KVM is not usable.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import socketserver
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.vm

IMAGES = Path("/var/lib/attachfs/images")
SHARES = Path("/var/lib/attachfs/test-shares")
RUN = Path("/run/attachfs-test")


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def _serve_metadata(sock: Path, files: dict[str, bytes]) -> _UnixHTTPServer:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body = files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def address_string(self) -> str:
            return "guest"

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = _UnixHTTPServer(str(sock), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _wait_for(log: Path, text: str, timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if log.exists() and text in log.read_text(errors="replace"):
            return time.monotonic() - start
        time.sleep(0.2)
    content = log.read_text(errors="replace") if log.exists() else "(no console log)"
    raise AssertionError(f"{text!r} not on the console after {timeout} s:\n{content[-4000:]}")


def test_boot_guest_with_share_and_stop() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: libvirt qemu:///system, virtiofsd, /var/lib/attachfs")
    from attachfs.virt.base import GuestShare, GuestSpec, PowerState
    from attachfs.virt.image import build_image
    from attachfs.virt.libvirt import LibvirtDriver

    image = build_image(IMAGES)
    driver = LibvirtDriver()
    server_uuid = str(uuid.uuid4())
    SHARES.mkdir(parents=True, exist_ok=True)
    RUN.mkdir(parents=True, exist_ok=True)
    share_dir = Path(tempfile.mkdtemp(prefix="share-", dir=SHARES))
    work = Path(tempfile.mkdtemp(prefix="vm-", dir=RUN))
    console = work / "console.log"
    sock = work / "metadata.sock"
    (share_dir / "from-host.txt").write_text("hello from the host\n")
    tag = "testshare"
    meta = {
        "uuid": server_uuid,
        "name": "test-vm",
        "devices": [
            {"type": "share", "share_id": str(uuid.uuid4()), "tag": tag, "bus": "none",
             "address": "none"},
        ],
    }
    user_data = (
        "#!/bin/sh\n"
        f"cat /mnt/{tag}/from-host.txt\n"
        f"echo written by the guest > /mnt/{tag}/from-guest.txt\n"
        "sync\n"
    )
    server = _serve_metadata(sock, {
        "/openstack/latest/meta_data.json": json.dumps(meta).encode(),
        "/openstack/latest/user_data": user_data.encode(),
    })
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
            try:
                dom.destroy()
            except Exception:
                pass
        driver.close()
        server.shutdown()
        server.server_close()
        shutil.rmtree(share_dir, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
