"""Hot plug, slot accounting and the config drive on real guests (LibvirtDriver + guest agent).

One guest boot serves the whole hot-plug scenario (boots are ~10 s under TCG). The guest agent is
driven the way the real service drives it: through the real metadata service reading rows of a
real database (a ShareMapping with status "active" is listed to the guest), or through the config
drive when no metadata socket is served. To prove a share works from inside the guest at any
time, user_data starts a background loop: for every /mnt/*/ping it copies ping to pong and
removes ping, so the host writes a token into `ping` and waits for it in `pong`.

Needs root and libvirtd (scripts/setup-libvirt.sh); boots under TCG when KVM is not usable.
Timings are printed (pytest -s).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import delete

from attachfs.db.engine import Database, migrate
from attachfs.db.tables import Server, ShareMapping
from attachfs.errors import NoFreeSlot
from attachfs.metadata.sockets import MetadataSockets
from harness.serve import IMAGES_DIR

if TYPE_CHECKING:
    from attachfs.virt.libvirt import LibvirtDriver

pytestmark = pytest.mark.vm

IMAGES = IMAGES_DIR  # $ATTACHFS_IMAGES, else /var/lib/attachfs/images
SHARES = Path("/var/lib/attachfs/test-shares")
RUN = Path("/run/attachfs-test")
OWNER = "test-hotplug"
PING_LOOP = (
    "#!/bin/sh\n"
    "( while :; do\n"
    "    for d in /mnt/*; do\n"
    "      [ -f \"$d/ping\" ] && cat \"$d/ping\" > \"$d/pong.tmp\" && mv \"$d/pong.tmp\" \"$d/pong\""
    " && rm \"$d/ping\"\n"
    "    done\n"
    "    sleep 0.3\n"
    "  done ) </dev/null >/dev/null 2>&1 &\n"
    "echo ping loop started\n"
)


def _skip_unless_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: libvirt qemu:///system, virtiofsd, /var/lib/attachfs")


class Console:
    """The guest's console log, read forward from a cursor: `wait` finds only new lines."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pos = 0

    def text(self) -> str:
        return self.path.read_text(errors="replace") if self.path.exists() else ""

    def wait(self, line: str, timeout: float) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            content = self.text()
            at = content.find(line, self.pos)
            if at >= 0:
                self.pos = at + len(line)
                return time.monotonic() - start
            time.sleep(0.05)
        raise AssertionError(f"{line!r} not on the console after {timeout} s:\n"
                             f"{self.text()[-4000:]}")


def ping(share: Path, timeout: float = 30) -> float:
    """Host writes a token into SHARE/ping; the guest's loop copies it to pong: proves the guest
    reads and writes the share right now."""
    token = uuid.uuid4().hex
    (share / "pong").unlink(missing_ok=True)
    (share / "ping.tmp").write_text(token + "\n")
    (share / "ping.tmp").rename(share / "ping")
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        pong = share / "pong"
        if pong.exists() and pong.read_text() == token + "\n" and not (share / "ping").exists():
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"no pong from the guest in {share} after {timeout} s")


class Rows:
    """The database the real metadata service reads for one server: which shares it lists."""

    def __init__(self, work: Path, server_uuid: str, user_data: str) -> None:
        url = f"sqlite:///{work / 'attachfs.db'}"
        migrate(url)
        self.db = Database(url)
        self.server_uuid = server_uuid
        with self.db.session() as s:
            s.add(Server(uuid=server_uuid, name="hotplug-vm", project_id="p1", user_id="u1",
                         host="h", flavor_id="1", image_id="i", vcpus=1, memory_mib=256,
                         vm_state="active", power_intent="on", meta={},
                         user_data=base64.b64encode(user_data.encode()).decode()))
        self.metadata = MetadataSockets(self.db, work / "metadata")

    def list_share(self, tag: str) -> None:
        with self.db.session() as s:
            s.add(ShareMapping(uuid=str(uuid.uuid4()), instance_uuid=self.server_uuid,
                               share_id=str(uuid.uuid4()), status="active", tag=tag,
                               user_id="u1", project_id="p1"))

    def unlist_share(self, tag: str) -> None:
        with self.db.session() as s:
            s.execute(delete(ShareMapping).where(ShareMapping.instance_uuid == self.server_uuid,
                                                 ShareMapping.tag == tag))


@dataclass
class Guest:
    driver: LibvirtDriver
    uuid: str
    work: Path
    console: Console
    shares: Path


@contextlib.contextmanager
def booted(spare_root_ports: int, *, served: str | None, config_drive: Path | None = None,
           boot_shares: tuple[str, ...] = (),
           wait_ready: bool = True) -> Iterator[tuple[Guest, Rows | None]]:
    """Boot a guest; `served`: user_data for a real metadata service (None: no service)."""
    from attachfs.virt.base import GuestShare, GuestSpec
    from attachfs.virt.libvirt import LibvirtDriver
    from tools.build_image import build_image

    image = build_image(IMAGES)
    driver = LibvirtDriver(owner=OWNER, spare_root_ports=spare_root_ports)
    server_uuid = str(uuid.uuid4())
    SHARES.mkdir(parents=True, exist_ok=True)
    RUN.mkdir(parents=True, exist_ok=True)
    shares = Path(tempfile.mkdtemp(prefix="hotplug-", dir=SHARES))
    work = Path(tempfile.mkdtemp(prefix="vm-", dir=RUN))
    rows = Rows(work, server_uuid, served) if served is not None else None
    sock = rows.metadata.ensure(server_uuid) if rows else work / "no-metadata.sock"
    for tag in boot_shares:
        (shares / tag).mkdir()
    spec = GuestSpec(uuid=server_uuid, name="hotplug-vm", vcpus=1, memory_mib=256, image=image,
                     console_log=work / "console.log", metadata_socket=sock,
                     config_drive=config_drive,
                     shares=tuple(GuestShare(t, shares / t) for t in boot_shares))
    guest = Guest(driver, server_uuid, work, Console(work / "console.log"), shares)
    try:
        started = time.monotonic()
        driver.start_guest(spec)
        if wait_ready:
            guest.console.wait("attachfs-guest: ready", 180)
            print(f"\nboot to ready: {time.monotonic() - started:.1f} s")
        yield guest, rows
    finally:
        with contextlib.suppress(Exception):
            driver.stop_guest(server_uuid, timeout=0)  # destroy at once
        driver.close()
        if rows:
            rows.metadata.close()
        shutil.rmtree(shares, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


def _share_dir(guest: Guest, tag: str) -> Path:
    path = guest.shares / tag
    path.mkdir(exist_ok=True)
    return path


def test_hot_attach_detach_reattach_one_boot() -> None:
    _skip_unless_root()
    from attachfs.virt import libvirt_xml as lx
    from attachfs.virt.base import GuestShare

    with booted(2, served=PING_LOOP) as (guest, served):
        assert served is not None
        rows, d, u, con = served, guest.driver, guest.uuid, guest.console
        assert "ping loop started" in con.text()
        assert "attachfs-guest: user_data exited 0" in con.text()
        assert d.free_share_slots(u) == 2
        a, b = _share_dir(guest, "share-a"), _share_dir(guest, "share-b")
        (a / "a.txt").write_text("this is A\n")

        # attach A: device first, then the metadata lists it (the order the service uses)
        t0 = time.monotonic()
        d.attach_share(u, GuestShare("share-a", a))
        attach_call = time.monotonic() - t0
        rows.list_share("share-a")
        con.wait("attachfs-guest: mounted share share-a at /mnt/share-a", 30)
        print(f"hot attach A: attach_share {attach_call:.2f} s, "
              f"call -> guest mounted {time.monotonic() - t0:.2f} s")
        d.attach_share(u, GuestShare("share-a", a))  # idempotent
        assert d.guest_share_tags(u) == {"share-a"}
        assert d.free_share_slots(u) == 1
        print(f"ping A: {ping(a):.2f} s")

        t0 = time.monotonic()
        d.attach_share(u, GuestShare("share-b", b))
        rows.list_share("share-b")
        con.wait("attachfs-guest: mounted share share-b at /mnt/share-b", 30)
        print(f"hot attach B: call -> guest mounted {time.monotonic() - t0:.2f} s")
        ping(b)
        assert d.free_share_slots(u) == 0
        bus_a = lx.live_shares(d._live_xml(u) or "")["share-a"].bus

        # no slot left: NoFreeSlot, nothing changes
        c = _share_dir(guest, "share-c")
        with pytest.raises(NoFreeSlot, match="no free hot-plug slot"):
            d.attach_share(u, GuestShare("share-c", c))
        assert d.guest_share_tags(u) == {"share-a", "share-b"}

        # detach A: unlisted first, the guest unmounts, then the device goes
        t0 = time.monotonic()
        rows.unlist_share("share-a")
        con.wait("attachfs-guest: unmounted share share-a from /mnt/share-a", 30)
        unmount = time.monotonic() - t0
        t0 = time.monotonic()
        d.detach_share(u, "share-a", timeout=30)
        detach = time.monotonic() - t0
        print(f"detach A: unlist -> guest unmounted {unmount:.2f} s, detach_share {detach:.2f} s")
        assert d.guest_share_tags(u) == {"share-b"}
        assert d.free_share_slots(u) == 1
        d.detach_share(u, "share-a", timeout=5)  # idempotent
        d.detach_share(u, "no-such-tag", timeout=5)
        # B is untouched: still read and written from inside the guest
        print(f"ping B after detaching A: {ping(b):.2f} s")
        assert "could not mount" not in con.text()

        # re-attach A: it takes the freed slot and works again
        t0 = time.monotonic()
        d.attach_share(u, GuestShare("share-a", a))
        rows.list_share("share-a")
        con.wait("attachfs-guest: mounted share share-a at /mnt/share-a", 30)
        print(f"re-attach A: call -> guest mounted {time.monotonic() - t0:.2f} s")
        assert lx.live_shares(d._live_xml(u) or "")["share-a"].bus == bus_a
        assert d.free_share_slots(u) == 0
        ping(a)
        ping(b)

        # detach B while the guest still has it mounted (unplug works; the guest then unmounts)
        t0 = time.monotonic()
        d.detach_share(u, "share-b", timeout=30)
        print(f"detach B while mounted: {time.monotonic() - t0:.2f} s")
        rows.unlist_share("share-b")
        con.wait("attachfs-guest: unmounted share share-b from /mnt/share-b", 30)
        ping(a)
        assert d.guest_share_tags(u) == {"share-a"}
        assert d.free_share_slots(u) == 1


def test_no_free_slot_keeps_the_first_device_then_slot_is_reused() -> None:
    _skip_unless_root()
    from attachfs.virt.base import GuestShare

    with booted(1, served=None, wait_ready=False) as (guest, _rows):
        d, u = guest.driver, guest.uuid
        assert d.free_share_slots(u) == 1
        d.attach_share(u, GuestShare("first", _share_dir(guest, "first")))
        assert d.free_share_slots(u) == 0
        with pytest.raises(NoFreeSlot, match=r"has no free hot-plug slot \(1 in use\)"):
            d.attach_share(u, GuestShare("second", _share_dir(guest, "second")))
        assert d.guest_share_tags(u) == {"first"}
        d.attach_share(u, GuestShare("first", _share_dir(guest, "first")))  # present: no-op
        # an unplug request sent while the guest is still booting is lost: detach_share sends
        # it again until the guest acts on it; the freed slot takes the next device
        t0 = time.monotonic()
        d.detach_share(u, "first", timeout=90)
        print(f"\ndetach during early boot: {time.monotonic() - t0:.2f} s")
        assert d.free_share_slots(u) == 1
        d.attach_share(u, GuestShare("second", _share_dir(guest, "second")))
        assert d.guest_share_tags(u) == {"second"}


def _meta_data(*tags: str) -> bytes:
    return json.dumps({"uuid": "x", "devices": [
        {"type": "share", "tag": t, "share_id": str(uuid.uuid4()), "bus": "none",
         "address": "none"} for t in tags]}).encode()


def _drive(iso: Path, *tags: str) -> None:
    from attachfs.virt.configdrive import build_config_drive

    md = _meta_data(*tags)
    build_config_drive(iso, {"openstack/latest/meta_data.json": md,
                             "openstack/2025-04-04/meta_data.json": md,
                             "openstack/latest/user_data": PING_LOOP.encode()})


def test_config_drive_media_change_without_metadata_service() -> None:
    _skip_unless_root()
    from attachfs.virt.base import GuestShare

    RUN.mkdir(parents=True, exist_ok=True)
    isos = Path(tempfile.mkdtemp(prefix="cd-", dir=RUN))
    iso = isos / "config.iso"
    try:
        _drive(iso, "cd-one")
        with booted(2, served=None, config_drive=iso, boot_shares=("cd-one",)) as (guest, _):
            d, u, con = guest.driver, guest.uuid, guest.console
            text = con.text()
            assert "attachfs-guest: source config-drive" in text
            assert "attachfs-guest: mounted share cd-one at /mnt/cd-one" in text
            assert "attachfs-guest: user_data exited 0" in text  # user_data from the drive
            ping(guest.shares / "cd-one")

            # same path, rebuilt (a new file renamed over the old one): the guest sees it
            two = _share_dir(guest, "cd-two")
            d.attach_share(u, GuestShare("cd-two", two))
            _drive(iso, "cd-one", "cd-two")
            t0 = time.monotonic()
            d.set_config_drive(u, iso)
            change = time.monotonic() - t0
            con.wait("attachfs-guest: mounted share cd-two at /mnt/cd-two", 30)
            print(f"\nmedia change (same path): set_config_drive {change:.2f} s, "
                  f"-> guest mounted {time.monotonic() - t0:.2f} s")
            ping(two)

            # another file: cd-one is no longer listed
            other = isos / "config-2.iso"
            _drive(other, "cd-two")
            t0 = time.monotonic()
            d.set_config_drive(u, other)
            con.wait("attachfs-guest: unmounted share cd-one from /mnt/cd-one", 30)
            print(f"media change (new path) -> guest unmounted {time.monotonic() - t0:.2f} s")
            ping(two)
            assert "source metadata-service" not in con.text()
    finally:
        shutil.rmtree(isos, ignore_errors=True)
