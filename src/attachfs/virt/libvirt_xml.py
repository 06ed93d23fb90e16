"""Domain and device XML for the libvirt driver, and what the driver reads back from live XML.

No libvirt import here: pure ElementTree, so it can be unit tested without a hypervisor.

Hot-plug slots (measured with libvirt 9.0 / QEMU 7.2, q35): a hot-plugged virtio-fs device goes
on a ``pcie-root-port`` (pcie-root itself is not hot-pluggable). libvirt picks a free port itself
when the device XML has no ``<address>``, and records the choice in the live XML as
``<address type='pci' bus='0xNN' .../>`` where NN is the port controller's ``index``. When no port
is free, attachDeviceFlags fails with "No more available PCI slots". A port freed by a detach is
free again for the next attach. So a port is free exactly when no device (nor controller) in the
live XML has an address whose bus equals the port's index (`free_root_ports`).
"""

from __future__ import annotations

import json
import re
import uuid as uuidlib
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from attachfs.core.rules import TAG_CHARS, TAG_MAX_BYTES, is_valid_tag
from attachfs.errors import BackendError
from attachfs.virt.base import GuestShare, GuestSpec

QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
# Which agent a guest belongs to: several agents (or test runs) may share one libvirtd, and an
# agent's repair must never touch another's guests.
OWNER_NS = "urn:attachfs:owner:1"
# Where the guest's metadata network helper connects (QEMU's stream socket) and relays to (the
# server's metadata socket): kept in the domain, so a restarted agent finds them in the live XML.
RELAY_NS = "urn:attachfs:metadata-relay:1"
BOOT_NS = "urn:attachfs:boot:1"  # the server generation the guest was started for
# The server a domain is the guest of, when domains are named per host (domain_uuid below)
SERVER_NS = "urn:attachfs:server:1"
ET.register_namespace("qemu", QEMU_NS)
ET.register_namespace("attachfs", OWNER_NS)
ET.register_namespace("attachfs-relay", RELAY_NS)

NAME_PREFIX = "attachfs-"
CDROM_DEV = "sda"  # the config drive: first SATA disk of q35's built-in AHCI controller
NETDEV_ID = "afsmd0"
_SAFE_PATH = re.compile(r"^/[A-Za-z0-9._/@+-]+$")  # no ',' (QEMU option separator) or spaces
_SUN_PATH_MAX = 107  # sockaddr_un.sun_path holds 108 bytes with the terminating NUL
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


class VirtError(BackendError):
    """A hypervisor operation failed; the message says which and why."""


def domain_name(uuid: str) -> str:
    return NAME_PREFIX + uuid


def domain_uuid(server_uuid: str, scope: str | None) -> str:
    """The libvirt UUID of a server's guest: the server's own, or, when several hosts share
    one libvirtd (hosts simulated on one machine), one of its own per host (`scope`), so a
    server moved to another host gets a second domain while the first may still exist."""
    if scope is None:
        return server_uuid
    return str(uuidlib.uuid5(uuidlib.NAMESPACE_URL, f"attachfs:{scope}:{server_uuid}"))


def check_abs(what: str, path: Path) -> str:
    if not Path(path).is_absolute():
        raise VirtError(f"{what} must be an absolute path, not {str(path)!r}")
    return str(path)


def check_tag(tag: str) -> str:
    if not is_valid_tag(tag):
        raise VirtError(f"share tag {tag!r}: a virtio-fs tag is 1-{TAG_MAX_BYTES} of [{TAG_CHARS}]")
    return tag


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrs)
    if text is not None:
        el.text = text
    return el


def _mac(uuid: str) -> str:
    h = uuid.replace("-", "")[-6:]
    return "52:54:00:" + ":".join(h[i : i + 2] for i in range(0, 6, 2))


def check_socket_path(what: str, path: Path) -> str:
    """An absolute unix socket path QEMU can take inside an option string and bind to."""
    text = check_abs(what, path)
    if not _SAFE_PATH.match(text):
        raise VirtError(f"{what} path {text!r} has characters outside [A-Za-z0-9._/@+-]")
    if len(text.encode()) > _SUN_PATH_MAX:
        raise VirtError(f"{what} path {text!r} is longer than a unix socket path may be "
                        f"({_SUN_PATH_MAX} bytes)")
    return text


def filesystem_element(share: GuestShare, socket: Path) -> ET.Element:
    """``<filesystem>`` for a virtio-fs share served by a virtiofsd attachfs runs on `socket`
    (virt/virtiofsd.py: sandboxed, no extended attributes, no device nodes). No
    ``<readonly/>``: libvirt 9.0 refuses it for virtiofs, read-only is enforced host-side. No
    ``<address>``: libvirt picks a free pcie-root-port itself (see the module docstring)."""
    tag = check_tag(share.tag)
    check_abs(f"share {tag} host path", share.host_path)
    fs = ET.Element("filesystem", {"type": "mount", "accessmode": "passthrough"})
    _sub(fs, "driver", type="virtiofs", queue="1024")
    _sub(fs, "source", socket=check_socket_path(f"share {tag} socket", socket))
    _sub(fs, "target", dir=tag)
    return fs


def ninep_element(share: GuestShare) -> ET.Element:
    """``<filesystem>`` for a 9p share: QEMU serves `host_path` itself (virtio-9p-pci, local
    fsdev). ``passthrough``: files keep the guest's owners on the host (what virtio-fs does);
    the host mount under it is nosuid,nodev, so a setuid file or device node a guest makes is
    inert on the host. QEMU's local backend resolves every path component with O_NOFOLLOW
    below the export root, so a symlink the guest makes never leads QEMU outside the share.
    ``<readonly/>`` is honoured for 9p (QEMU's fsdev readonly=on). Boot-time only."""
    tag = check_tag(share.tag)
    fs = ET.Element("filesystem", {"type": "mount", "accessmode": "passthrough"})
    _sub(fs, "driver", type="path")
    _sub(fs, "source", dir=check_abs(f"share {tag} host path", share.host_path))
    _sub(fs, "target", dir=tag)
    if share.read_only:
        _sub(fs, "readonly")
    return fs


def share_element(share: GuestShare, sockets: Mapping[str, Path]) -> ET.Element:
    if share.transport == "9p":
        return ninep_element(share)
    if share.transport != "virtiofs":
        raise VirtError(f"share {share.tag}: transport {share.transport!r} has no device")
    return filesystem_element(share, sockets[share.tag])


def cdrom_element(iso: Path | None) -> ET.Element:
    """The config drive: a read-only SATA cdrom; empty (no medium) when `iso` is None."""
    disk = ET.Element("disk", {"type": "file", "device": "cdrom"})
    _sub(disk, "driver", name="qemu", type="raw")
    if iso is not None:
        _sub(disk, "source", file=check_abs("config drive", iso))
    _sub(disk, "target", dev=CDROM_DEV, bus="sata")
    _sub(disk, "readonly")
    return disk


def to_xml(el: ET.Element) -> str:
    return ET.tostring(el, encoding="unicode")


def domain_xml(spec: GuestSpec, *, domain_type: str, owner: str | None, network_socket: Path,
               spare_root_ports: int, sockets: Mapping[str, Path],
               scope: str | None = None) -> str:
    """The guest. Its only NIC is a QEMU stream netdev served on `network_socket`; the metadata
    network helper (virt/metadata_net.py) connects there and relays the guest's
    169.254.169.254:80, and nothing else, to `spec.metadata_socket`."""
    if not _UUID.match(spec.uuid):
        raise VirtError(f"server uuid {spec.uuid!r} is not a lowercase uuid")
    console_log = check_abs("console log", spec.console_log)
    metadata_socket = check_socket_path("metadata socket", spec.metadata_socket)
    stream = check_socket_path("guest network socket", network_socket)
    kernel = check_abs("kernel", spec.image.kernel)
    initrd = check_abs("initrd", spec.image.initrd)

    dom = ET.Element("domain", {"type": domain_type})
    libvirt_uuid = domain_uuid(spec.uuid, scope)
    _sub(dom, "name", domain_name(libvirt_uuid))
    _sub(dom, "uuid", libvirt_uuid)
    _sub(dom, "title", " ".join(spec.name.split())[:200])
    metadata = _sub(dom, "metadata")
    if owner is not None:
        _sub(metadata, f"{{{OWNER_NS}}}owner", owner)
    _sub(metadata, f"{{{RELAY_NS}}}relay", stream=stream, metadata_socket=metadata_socket)
    _sub(metadata, f"{{{BOOT_NS}}}boot", generation=str(spec.generation))
    if scope is not None:
        _sub(metadata, f"{{{SERVER_NS}}}server", uuid=spec.uuid)
    _machine(dom, spec, kernel, initrd)
    _devices(_sub(dom, "devices"), spec, console_log, spare_root_ports, sockets)
    _network(dom, spec, stream)
    return to_xml(dom)


def _machine(dom: ET.Element, spec: GuestSpec, kernel: str, initrd: str) -> None:
    """Memory (shared: vhost-user needs it), CPUs, direct kernel boot, power behaviour."""
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


def _devices(devices: ET.Element, spec: GuestSpec, console_log: str, spare_root_ports: int,
             sockets: Mapping[str, Path]) -> None:
    # an explicit pcie-root before the ports, else libvirt does not keep them all for hot plug
    _sub(devices, "controller", type="pci", index="0", model="pcie-root")
    for i in range(1, 1 + spare_root_ports + len(spec.shares)):
        _sub(devices, "controller", type="pci", index=str(i), model="pcie-root-port")
    _sub(devices, "controller", type="usb", model="none")
    for share in spec.shares:
        devices.append(share_element(share, sockets))
    # Always a cdrom (empty without a config drive): SATA cannot be hot-plugged, so this is
    # what lets set_config_drive insert a config drive into a guest booted without one.
    devices.append(cdrom_element(spec.config_drive))
    serial = _sub(devices, "serial", type="file")
    _sub(serial, "source", path=console_log, append="on")
    _sub(serial, "target", port="0")
    _sub(devices, "memballoon", model="none")


def _network(dom: ET.Element, spec: GuestSpec, stream: str) -> None:
    cmd = ET.SubElement(dom, f"{{{QEMU_NS}}}commandline")
    # QEMU listens; the helper connects (and connects again after a restart: a QEMU 7.2 stream
    # server accepts a new client once the previous one is gone, measured). libvirt 9.0 has no
    # <interface> for a stream netdev, hence <qemu:commandline>.
    netdev = f"stream,id={NETDEV_ID},server=on,addr.type=unix,addr.path={stream}"
    # JSON syntax: QEMU creates legacy "-device a,b=c" devices before libvirt's JSON ones,
    # so a legacy one would take slot 1 that libvirt's first pcie-root-port is given.
    device = json.dumps({"driver": "virtio-net-pci", "netdev": NETDEV_ID, "mac": _mac(spec.uuid)})
    for value in ("-netdev", netdev, "-device", device):
        ET.SubElement(cmd, f"{{{QEMU_NS}}}arg", value=value)


# ---- reading live XML ---------------------------------------------------------------------------
@dataclass(frozen=True)
class LiveShare:
    tag: str
    alias: str  # libvirt's device alias (fs0, fs1 ...): what detachDeviceAlias takes
    source: str
    socket: str  # a virtiofsd of attachfs's own serves it here (then `source` is empty)
    bus: int | None  # the pcie-root-port index it sits on
    transport: str = "virtiofs"  # or "9p" (QEMU serves `source` itself)
    read_only: bool = False  # <readonly/> (9p; virtio-fs cannot say it)


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value, 0)
    except ValueError:
        return None


def live_shares(xml: str) -> dict[str, LiveShare]:
    """The virtio-fs and 9p devices of a live domain, by tag."""
    found = {}
    for fs in ET.fromstring(xml).iterfind("./devices/filesystem"):
        driver, target = fs.find("driver"), fs.find("target")
        kind = driver.get("type") if driver is not None else "path"
        if kind not in ("virtiofs", "path") or fs.get("type", "mount") != "mount" \
                or target is None:
            continue
        tag = target.get("dir", "")
        if not tag:
            continue
        alias, source, address = fs.find("alias"), fs.find("source"), fs.find("address")
        found[tag] = LiveShare(
            tag=tag,
            alias=alias.get("name", "") if alias is not None else "",
            source=source.get("dir", "") if source is not None else "",
            socket=source.get("socket", "") if source is not None else "",
            bus=_int(address.get("bus")) if address is not None and
            address.get("type") == "pci" else None,
            transport="virtiofs" if kind == "virtiofs" else "9p",
            read_only=fs.find("readonly") is not None,
        )
    return found


def root_ports(xml: str) -> tuple[list[int], list[int]]:
    """(all pcie-root-port indexes, the free ones) of a live domain: a port is used when any
    device or controller has a PCI address on it (``bus`` = the port's ``index``)."""
    devices = ET.fromstring(xml).find("./devices")
    if devices is None:
        return [], []
    ports = []
    for ctl in devices.iterfind("controller"):
        if ctl.get("type") == "pci" and ctl.get("model") == "pcie-root-port":
            index = _int(ctl.get("index"))
            if index is not None:
                ports.append(index)
    used = set()
    for address in devices.iterfind("./*/address"):
        if address.get("type") == "pci":
            bus = _int(address.get("bus"))
            if bus is not None:
                used.add(bus)
    return ports, [p for p in ports if p not in used]


def relay_sockets(xml: str) -> tuple[Path, Path] | None:
    """(QEMU's stream socket, the metadata socket) recorded in a domain's XML, or None."""
    relay = ET.fromstring(xml).find(f"./metadata/{{{RELAY_NS}}}relay")
    if relay is None or not relay.get("stream") or not relay.get("metadata_socket"):
        return None
    return Path(relay.get("stream", "")), Path(relay.get("metadata_socket", ""))


def boot_generation(xml: str) -> int | None:
    """The server generation recorded in a domain's XML when it was started, or None."""
    boot = ET.fromstring(xml).find(f"./metadata/{{{BOOT_NS}}}boot")
    value = boot.get("generation") if boot is not None else None
    return int(value) if value is not None and value.isdigit() else None


def cdrom_source(xml: str) -> tuple[bool, str | None]:
    """(the config drive cdrom exists, the file it has inserted or None when empty)."""
    for disk in ET.fromstring(xml).iterfind("./devices/disk"):
        target = disk.find("target")
        if disk.get("device") == "cdrom" and target is not None and target.get("dev") == CDROM_DEV:
            source = disk.find("source")
            return True, (source.get("file") if source is not None else None)
    return False, None
