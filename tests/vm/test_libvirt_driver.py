"""Boot a real guest through LibvirtDriver and use a virtio-fs share from inside it.

The rows the metadata service reads are written straight into a database (no API or agent:
those are tested end to end in test_end_to_end.py); the metadata service itself is the real
one, on the guest's own unix socket. The tests without the `vm` mark check the domain XML, the
live-XML readers and the config drive builder without a hypervisor. The vm test needs root and
libvirtd (scripts/setup-libvirt.sh); it boots under TCG when KVM is not usable.
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
from harness.serve import IMAGES_DIR

IMAGES = IMAGES_DIR  # $ATTACHFS_IMAGES, else /var/lib/attachfs/images
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
        time.sleep(0.2)
    content = log.read_text(errors="replace") if log.exists() else "(no console log)"
    raise AssertionError(f"{text!r} not on the console:\n{content[-4000:]}")


@pytest.mark.vm
def test_boot_guest_with_share_and_stop() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: libvirt qemu:///system, virtiofsd, /var/lib/attachfs")
    from attachfs.storage import mountinfo
    from attachfs.virt.base import GuestShare, GuestSpec, PowerState
    from attachfs.virt.libvirt import LibvirtDriver
    from tools.build_image import build_image

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
    ro_view = Path(tempfile.mkdtemp(prefix="ro-", dir=SHARES))
    mountinfo.bind(share_dir, ro_view, "ro,nosuid,nodev")
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
        shares=(GuestShare(tag=tag, host_path=share_dir),
                GuestShare(tag="ro", host_path=ro_view, read_only=True)),
    )
    try:
        started = time.monotonic()
        driver.start_guest(spec)
        driver.start_guest(spec)  # idempotent
        assert driver.list_guests().get(server_uuid) == PowerState.RUNNING
        assert driver.guest_state(server_uuid) == PowerState.RUNNING
        assert driver.guest_share_tags(server_uuid) == {tag, "ro"}
        # what each device's virtiofsd serves, observed in its own mount namespace
        assert driver.observe(server_uuid).writable == {tag}
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
        mountinfo.unmount(ro_view)
        shutil.rmtree(ro_view, ignore_errors=True)
        shutil.rmtree(share_dir, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


# ---- no hypervisor needed -----------------------------------------------------------------------
LIVE_XML = """<domain type='qemu'><devices>
  <controller type='pci' index='0' model='pcie-root'><alias name='pcie.0'/></controller>
  <controller type='pci' index='1' model='pcie-root-port'>
    <address type='pci' domain='0x0000' bus='0x00' slot='0x01' function='0x0'/></controller>
  <controller type='pci' index='2' model='pcie-root-port'>
    <address type='pci' domain='0x0000' bus='0x00' slot='0x01' function='0x1'/></controller>
  <controller type='pci' index='10' model='pcie-root-port'>
    <address type='pci' domain='0x0000' bus='0x00' slot='0x02' function='0x1'/></controller>
  <controller type='sata' index='0'>
    <address type='pci' domain='0x0000' bus='0x00' slot='0x1f' function='0x2'/></controller>
  <disk type='file' device='cdrom'><driver name='qemu' type='raw'/>
    <source file='/var/lib/attachfs/cd/x.iso'/><target dev='sda' bus='sata'/><readonly/>
    <address type='drive' controller='0' bus='0' target='0' unit='0'/></disk>
  <filesystem type='mount' accessmode='passthrough'><driver type='virtiofs'/>
    <source dir='/srv/a'/><target dir='a'/><alias name='fs0'/>
    <address type='pci' domain='0x0000' bus='0x01' slot='0x00' function='0x0'/></filesystem>
  <filesystem type='mount' accessmode='passthrough'><driver type='virtiofs'/>
    <source dir='/srv/b'/><target dir='b'/><alias name='fs3'/>
    <address type='pci' domain='0x0000' bus='0x0a' slot='0x00' function='0x0'/></filesystem>
</devices></domain>"""


def test_live_xml_readers() -> None:
    from attachfs.virt import libvirt_xml as lx

    shares = lx.live_shares(LIVE_XML)
    assert set(shares) == {"a", "b"}
    assert (shares["b"].alias, shares["b"].bus, shares["b"].source) == ("fs3", 10, "/srv/b")
    assert lx.root_ports(LIVE_XML) == ([1, 2, 10], [2])
    assert lx.cdrom_source(LIVE_XML) == (True, "/var/lib/attachfs/cd/x.iso")
    assert lx.cdrom_source("<domain><devices/></domain>") == (False, None)


def test_domain_xml_has_ports_and_a_cdrom() -> None:
    import dataclasses
    import xml.etree.ElementTree as ET

    from attachfs.virt import libvirt_xml as lx
    from attachfs.virt.base import BootImage, GuestShare, GuestSpec

    image = BootImage(id="i", name="n", kernel=Path("/k"), initrd=Path("/i"))
    spec = GuestSpec(uuid=str(uuid.uuid4()), name="vm", vcpus=1, memory_mib=256, image=image,
                     console_log=Path("/run/c.log"), metadata_socket=Path("/run/m.sock"),
                     shares=(GuestShare("t", Path("/srv/t"), read_only=True),))
    root = ET.fromstring(lx.domain_xml(spec, domain_type="qemu", owner="o",
                                       network_socket=Path("/run/n.sock"), spare_root_ports=3,
                                       sockets={"t": Path("/run/t.sock")}))
    ports = [c for c in root.iterfind("./devices/controller") if c.get("model") == "pcie-root-port"]
    assert len(ports) == 4  # spare + one per boot-time share
    assert root.find("./devices/filesystem/readonly") is None  # libvirt 9.0 refuses it
    cdrom = root.find("./devices/disk[@device='cdrom']")
    assert cdrom is not None and cdrom.find("source") is None  # empty: ready for a media change
    with_drive = ET.fromstring(lx.domain_xml(
        dataclasses.replace(spec, config_drive=Path("/run/cd.iso")), domain_type="qemu",
        owner=None, network_socket=Path("/run/n.sock"), spare_root_ports=0,
        sockets={"t": Path("/run/t.sock")}))
    source = with_drive.find("./devices/disk[@device='cdrom']/source")
    assert source is not None and source.get("file") == "/run/cd.iso"


def test_9p_devices_in_domain_xml_and_read_back() -> None:
    import xml.etree.ElementTree as ET

    from attachfs.virt import libvirt_xml as lx
    from attachfs.virt.base import BootImage, GuestShare, GuestSpec

    image = BootImage(id="i", name="n", kernel=Path("/k"), initrd=Path("/i"))
    spec = GuestSpec(uuid=str(uuid.uuid4()), name="vm", vcpus=1, memory_mib=256, image=image,
                     console_log=Path("/run/c.log"), metadata_socket=Path("/run/m.sock"),
                     shares=(GuestShare("v", Path("/srv/v")),
                             GuestShare("n", Path("/srv/n"), read_only=True, transport="9p")))
    xml = lx.domain_xml(spec, domain_type="qemu", owner="o", network_socket=Path("/run/n.sock"),
                        spare_root_ports=1, sockets={"v": Path("/run/v.sock")})
    fs = {f.find("target").get("dir"): f  # type: ignore[union-attr]
          for f in ET.fromstring(xml).iterfind("./devices/filesystem")}
    assert fs["n"].find("driver").get("type") == "path"  # type: ignore[union-attr]
    assert fs["n"].find("source").get("dir") == "/srv/n"  # type: ignore[union-attr]
    assert fs["n"].find("readonly") is not None and fs["v"].find("readonly") is None
    live = lx.live_shares(xml)
    assert (live["n"].transport, live["n"].read_only, live["n"].source) == ("9p", True, "/srv/n")
    assert live["v"].transport == "virtiofs"
    with pytest.raises(lx.VirtError, match="no device"):
        lx.share_element(GuestShare("x", Path("/srv/x"), transport="nfs"), {})


def test_build_config_drive(tmp_path: Path) -> None:
    import subprocess

    from attachfs.virt.configdrive import ConfigDriveError, build_config_drive

    if not shutil.which("genisoimage") or not shutil.which("isoinfo"):
        pytest.skip("needs genisoimage and isoinfo")
    iso = tmp_path / "cd" / "config.iso"
    build_config_drive(iso, {"openstack/latest/meta_data.json": b'{"devices": []}',
                             "openstack/latest/user_data": b"#!/bin/sh\n"})
    label = subprocess.run(["isoinfo", "-d", "-i", str(iso)], capture_output=True, text=True)
    assert "Volume id: config-2" in label.stdout
    data = subprocess.run(["isoinfo", "-R", "-i", str(iso), "-x",
                           "/openstack/latest/meta_data.json"], capture_output=True)
    assert data.stdout == b'{"devices": []}'
    first = iso.stat().st_ino
    build_config_drive(iso, {"openstack/latest/meta_data.json": b"{}"})
    assert iso.stat().st_ino != first  # a new file renamed over the old one
    assert sorted(p.name for p in iso.parent.iterdir()) == ["config.iso"]  # no leftovers
    with pytest.raises(ConfigDriveError):
        build_config_drive(iso, {"../escape": b""})
