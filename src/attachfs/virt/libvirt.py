"""libvirt (QEMU) driver: boots guests with virtio-fs shares, reads back what is running.

Guests are *transient* domains (``conn.createXML``) named ``attachfs-<server uuid>`` whose domain
uuid is the server uuid: `list_guests` finds exactly ours, and a crashed agent leaves nothing
defined behind (a powered-off guest simply disappears: `guest_state` says MISSING).

Domain: q35, direct kernel boot from a `BootImage`, memfd shared memory + one NUMA cell (required
by virtio-fs/vhost-user), ACPI (so `domain.shutdown()` presses the power button the guest's acpid
listens to), serial console appended to `spec.console_log`, one virtio-fs `<filesystem>` per
share (libvirt starts one virtiofsd per device), an explicit ``pcie-root`` and
``spare_root_ports`` free ``pcie-root-port`` controllers (plus one per boot-time share, which
libvirt places on a root port) for later hot plug. USB and the memory balloon are disabled so
they do not take root ports. Type ``kvm`` only when KVM can really boot a stock kernel
(`kvm_usable`), else ``qemu`` (TCG).

Metadata relay (measured with QEMU 7.2 / libslirp 4.7): the guest reaches the metadata service as
``http://169.254.169.254/`` through QEMU user networking (slirp) with
``guestfwd=tcp:169.254.169.254:80-cmd:socat STDIO UNIX-CONNECT:<spec.metadata_socket>``: slirp
spawns one socat per guest TCP connection, relaying it to the unix socket the metadata service
listens on. The server's identity is the socket path, so a guest cannot claim to be another.
Slirp refuses a guestfwd address outside its network ("Conflicting/invalid host:port in guest
forwarding rule") with the default 10.0.2.0/24, so the user network is ``net=169.254.169.0/24``:
the guest gets 169.254.169.15 by DHCP, the host (gateway) is 169.254.169.2, DNS 169.254.169.3.
libvirt's ``<interface type='user'>`` cannot express guestfwd, so the netdev and its
virtio-net-pci device are passed with ``<qemu:commandline>`` (libvirt logs the domain as tainted
"custom-argv"; harmless). QEMU must be allowed to spawn socat: ``seccomp_sandbox = 0`` in
qemu.conf (scripts/setup-libvirt.sh), whose default sandbox has spawn=deny.

Read-only shares: libvirt 9.0 refuses ``<readonly/>`` on a virtiofs filesystem ("virtiofs does
not yet support read-only mode"), so it is left out and `capabilities.read_only_enforced_by_
hypervisor` is False: read-only is enforced host-side.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import re
import shutil
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt

from attachfs.errors import BackendError
from attachfs.virt.base import GuestSpec, PowerState, VirtCapabilities

NAME_PREFIX = "attachfs-"
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
METADATA_NET = "169.254.169.0/24"
METADATA_ADDR = "169.254.169.254"
_SAFE_PATH = re.compile(r"^/[A-Za-z0-9._/@+-]+$")  # no ',' (QEMU) ':' or spaces (socat, argv)
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_KVM_GET_API_VERSION = 0xAE00

ET.register_namespace("qemu", QEMU_NS)
# Which agent a guest belongs to: several agents (or test runs) may share one libvirtd, and an
# agent's repair must never touch another's guests.
OWNER_NS = "urn:attachfs:owner:1"
ET.register_namespace("attachfs", OWNER_NS)


def _quiet(_ctx: object, _err: object) -> None:
    """libvirt prints every error on stderr by default; ours are raised as VirtError instead."""


libvirt.registerErrorHandler(_quiet, None)


class VirtError(BackendError):
    """A hypervisor operation failed; the message says which and why."""


@functools.cache
def kvm_usable() -> bool:
    """True when KVM can boot a stock kernel: a real VMX/SVM KVM, not PVM.

    PVM (`kvm_pvm`, a paravirtual KVM for hosts without VT-x) exposes /dev/kvm but stock Debian
    kernels hang in the decompressor under it, so it counts as unusable. Cheap: module and ioctl.
    """
    mods = Path("/sys/module")
    if (mods / "kvm_pvm").exists():
        return False
    if not ((mods / "kvm_intel").exists() or (mods / "kvm_amd").exists()):
        return False
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return fcntl.ioctl(fd, _KVM_GET_API_VERSION) == 12
    except OSError:
        return False
    finally:
        os.close(fd)


def domain_name(uuid: str) -> str:
    return NAME_PREFIX + uuid


def _check_abs(what: str, path: Path) -> str:
    if not Path(path).is_absolute():
        raise VirtError(f"{what} must be an absolute path, not {str(path)!r}")
    return str(path)


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrs)
    if text is not None:
        el.text = text
    return el


def _mac(uuid: str) -> str:
    h = uuid.replace("-", "")[-6:]
    return "52:54:00:" + ":".join(h[i : i + 2] for i in range(0, 6, 2))


class LibvirtDriver:
    def __init__(
        self,
        uri: str = "qemu:///system",
        spare_root_ports: int = 8,
        domain_type: str | None = None,
        socat: str | None = None,
        owner: str | None = None,
    ) -> None:
        """domain_type: "kvm" or "qemu"; None picks kvm only when `kvm_usable()`.
        owner: guests are tagged with it and only guests with this tag are seen; None sees
        every attachfs guest (tools and test clean-up)."""
        self.owner = owner
        self.uri = uri
        self.spare_root_ports = spare_root_ports
        self._domain_type = domain_type
        self._socat = socat
        self._conn: libvirt.virConnect | None = None
        self.capabilities = VirtCapabilities(
            hot_plug=False, read_only_enforced_by_hypervisor=False, share_transports=("virtiofs",)
        )

    # -- connection ---------------------------------------------------------------------------
    @property
    def conn(self) -> libvirt.virConnect:
        if self._conn is not None:
            try:
                if self._conn.isAlive():
                    return self._conn
            except libvirt.libvirtError:
                pass
            self._conn = None
        try:
            self._conn = libvirt.open(self.uri)
        except libvirt.libvirtError as e:
            raise VirtError(f"cannot connect to libvirt at {self.uri}: {_msg(e)}") from e
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(libvirt.libvirtError):
                self._conn.close()
            self._conn = None

    @property
    def domain_type(self) -> str:
        return self._domain_type or ("kvm" if kvm_usable() else "qemu")

    def _lookup(self, uuid: str) -> libvirt.virDomain | None:
        try:
            dom = self.conn.lookupByUUIDString(uuid)
        except libvirt.libvirtError as e:
            if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise VirtError(f"looking up guest {uuid}: {_msg(e)}") from e
        if dom.name() != domain_name(uuid) or not self._owned(dom):
            return None  # not one of ours
        return dom

    def _owned(self, dom: libvirt.virDomain) -> bool:
        if self.owner is None:
            return True
        try:
            xml = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, OWNER_NS, 0)
        except libvirt.libvirtError:
            return False  # no owner tag (or the guest vanished): not ours
        return (ET.fromstring(xml).text or "") == self.owner

    # -- XML ------------------------------------------------------------------------------------
    def domain_xml(self, spec: GuestSpec) -> str:
        if not _UUID.match(spec.uuid):
            raise VirtError(f"server uuid {spec.uuid!r} is not a lowercase uuid")
        console_log = _check_abs("console log", spec.console_log)
        socket = _check_abs("metadata socket", spec.metadata_socket)
        if not _SAFE_PATH.match(socket):
            raise VirtError(f"metadata socket path {socket!r} has characters outside [A-Za-z0-9._/@+-]")
        kernel = _check_abs("kernel", spec.image.kernel)
        initrd = _check_abs("initrd", spec.image.initrd)
        socat = self._socat or shutil.which("socat")
        if not socat:
            raise VirtError("socat not found: it relays the guest's metadata requests")

        dom = ET.Element("domain", {"type": self.domain_type})
        _sub(dom, "name", domain_name(spec.uuid))
        _sub(dom, "uuid", spec.uuid)
        _sub(dom, "title", " ".join(spec.name.split())[:200])
        if self.owner is not None:
            _sub(_sub(dom, "metadata"), f"{{{OWNER_NS}}}owner", self.owner)
        _sub(dom, "memory", str(spec.memory_mib), unit="MiB")
        _sub(dom, "vcpu", str(spec.vcpus))
        mb = _sub(dom, "memoryBacking")
        _sub(mb, "source", type="memfd")
        _sub(mb, "access", mode="shared")
        os_el = _sub(dom, "os")
        _sub(os_el, "type", "hvm", arch="x86_64", machine="q35")
        _sub(os_el, "kernel", kernel)
        _sub(os_el, "initrd", initrd)
        _sub(os_el, "cmdline", spec.image.cmdline)
        features = _sub(dom, "features")
        _sub(features, "acpi")
        _sub(features, "apic")
        cpu = _sub(dom, "cpu")
        numa = _sub(cpu, "numa")
        _sub(numa, "cell", id="0", cpus=f"0-{spec.vcpus - 1}", memory=str(spec.memory_mib),
             unit="MiB", memAccess="shared")
        _sub(dom, "on_poweroff", "destroy")
        _sub(dom, "on_reboot", "restart")
        _sub(dom, "on_crash", "destroy")

        devices = _sub(dom, "devices")
        _sub(devices, "controller", type="pci", index="0", model="pcie-root")
        for i in range(1, 1 + self.spare_root_ports + len(spec.shares)):
            _sub(devices, "controller", type="pci", index=str(i), model="pcie-root-port")
        _sub(devices, "controller", type="usb", model="none")
        for share in spec.shares:
            tag = share.tag
            if not tag or len(tag.encode()) > 36 or "\0" in tag:
                raise VirtError(f"share tag {tag!r}: virtio-fs tags are 1-36 bytes")
            fs = _sub(devices, "filesystem", type="mount", accessmode="passthrough")
            _sub(fs, "driver", type="virtiofs")
            _sub(fs, "source", dir=_check_abs(f"share {tag} host path", share.host_path))
            _sub(fs, "target", dir=tag)
            # read_only: libvirt 9.0 refuses <readonly/> for virtiofs; enforced host-side.
        if spec.config_drive is not None:
            disk = _sub(devices, "disk", type="file", device="cdrom")
            _sub(disk, "driver", name="qemu", type="raw")
            _sub(disk, "source", file=_check_abs("config drive", spec.config_drive))
            _sub(disk, "target", dev="sda", bus="sata")
            _sub(disk, "readonly")
        serial = _sub(devices, "serial", type="file")
        _sub(serial, "source", path=console_log, append="on")
        _sub(serial, "target", port="0")
        _sub(devices, "memballoon", model="none")

        cmd = ET.SubElement(dom, f"{{{QEMU_NS}}}commandline")
        netdev = (
            f"user,id=afsmd0,net={METADATA_NET},"
            f"guestfwd=tcp:{METADATA_ADDR}:80-cmd:{socat} STDIO UNIX-CONNECT:{socket}"
        )
        # JSON syntax: QEMU creates legacy "-device a,b=c" devices before libvirt's JSON ones,
        # so a legacy one would take slot 1 that libvirt's first pcie-root-port is given.
        device = json.dumps({"driver": "virtio-net-pci", "netdev": "afsmd0",
                             "mac": _mac(spec.uuid)})
        for value in ("-netdev", netdev, "-device", device):
            ET.SubElement(cmd, f"{{{QEMU_NS}}}arg", value=value)
        return ET.tostring(dom, encoding="unicode")

    # -- VirtDriver -----------------------------------------------------------------------------
    def start_guest(self, spec: GuestSpec) -> None:
        dom = self._lookup(spec.uuid)
        if dom is not None and _active(dom):
            return
        xml = self.domain_xml(spec)
        Path(spec.console_log).parent.mkdir(parents=True, exist_ok=True)
        try:
            self.conn.createXML(xml, 0)
        except libvirt.libvirtError as e:
            raise VirtError(f"starting guest {spec.uuid}: {_msg(e)}") from e

    def stop_guest(self, uuid: str, timeout: float) -> None:
        dom = self._lookup(uuid)
        if dom is None:
            return
        deadline = time.monotonic() + max(timeout, 0.0)
        next_press = 0.0
        while _active(dom) and time.monotonic() < deadline:
            if time.monotonic() >= next_press:
                # pressed again every few seconds: a press before the guest's acpid runs is lost
                try:
                    dom.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
                except libvirt.libvirtError as e:
                    if not _gone(e):
                        raise VirtError(f"shutting down guest {uuid}: {_msg(e)}") from e
                next_press = time.monotonic() + 5.0
            time.sleep(0.2)
        if _active(dom):
            try:
                dom.destroy()
            except libvirt.libvirtError as e:
                if not _gone(e):
                    raise VirtError(f"destroying guest {uuid}: {_msg(e)}") from e

    def guest_state(self, uuid: str) -> PowerState:
        dom = self._lookup(uuid)
        if dom is None:
            return PowerState.MISSING
        return PowerState.RUNNING if _active(dom) else PowerState.SHUTOFF

    def list_guests(self) -> dict[str, PowerState]:
        try:
            domains = self.conn.listAllDomains(0)
        except libvirt.libvirtError as e:
            raise VirtError(f"listing guests: {_msg(e)}") from e
        guests = {}
        for dom in domains:
            try:
                name, uuid = dom.name(), dom.UUIDString()
            except libvirt.libvirtError:
                continue  # vanished meanwhile
            if name == domain_name(uuid) and self._owned(dom):
                guests[uuid] = PowerState.RUNNING if _active(dom) else PowerState.SHUTOFF
        return guests

    def guest_share_tags(self, uuid: str) -> set[str]:
        dom = self._lookup(uuid)
        if dom is None or not _active(dom):
            return set()
        try:
            root = ET.fromstring(dom.XMLDesc(0))
        except libvirt.libvirtError as e:
            if _gone(e):
                return set()
            raise VirtError(f"reading guest {uuid}: {_msg(e)}") from e
        tags = set()
        for fs in root.iterfind("./devices/filesystem"):
            driver, target = fs.find("driver"), fs.find("target")
            if driver is not None and driver.get("type") == "virtiofs" and target is not None:
                tags.add(target.get("dir", ""))
        tags.discard("")
        return tags


def _msg(e: libvirt.libvirtError) -> str:
    return e.get_error_message() or str(e)


def _gone(e: libvirt.libvirtError) -> bool:
    return e.get_error_code() in (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_OPERATION_INVALID)


def _active(dom: libvirt.virDomain) -> bool:
    try:
        return bool(dom.isActive())
    except libvirt.libvirtError as e:
        if _gone(e):
            return False
        raise VirtError(f"guest state: {_msg(e)}") from e
