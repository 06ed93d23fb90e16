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

Metadata network (measured with QEMU 7.2 / libslirp 4.7): the guest's only NIC is a QEMU
``-netdev stream`` served on ``<metadata socket dir>/net/<uuid>.sock``; after createXML the driver
starts the guest's metadata network helper (virt/metadata_net.py, supervised by
metadata_net_supervisor), which connects there and runs a restricted libslirp in an empty network
namespace: the guest reaches ``http://169.254.169.254/`` (each connection relayed to the server's
own metadata unix socket, whose path is the server's identity) and nothing else. No process per
connection, and QEMU spawns nothing, so libvirt's default QEMU seccomp sandbox stays on. The
guest gets 169.254.169.15/24 by DHCP, with no default route. libvirt's ``<interface>`` cannot
express a stream netdev, so it and its virtio-net-pci device are passed with
``<qemu:commandline>`` (libvirt logs the domain as tainted "custom-argv"; harmless).
`list_guests` (the agent's periodic repair) also makes sure each running guest has its helper
(only a driver with an owner, i.e. an agent: tools that see every guest leave helpers alone).

virtio-fs: attachfs runs each device's virtiofsd itself (virt/virtiofsd.py: Debian's virtiofsd
in its namespace sandbox, capabilities and options narrowed) and hands libvirt its socket
(`<source socket=.../>`); the daemon ends by itself when QEMU drops the device.

Hot plug (measured, TCG, libvirt 9.0, QEMU 7.2 pc-q35-7.2): `attach_share` is a live
attachDeviceFlags of the `<filesystem>` without an address: libvirt puts it on a free
pcie-root-port itself (0.02-0.04 s after its virtiofsd listens; the guest mounts it ~1 s later).
`free_share_slots` counts the root ports no device sits on (libvirt_xml.root_ports); with none
left `attach_share` raises NoFreeSlot before asking libvirt (which would say "No more available
PCI slots"). `detach_share` unplugs by device alias, so exactly that device goes (1.3-2.1 s
until it leaves the live XML; libvirt stops its virtiofsd; other shares keep working), and a
freed root port is reused by the next attach. q35 uses ACPI PCI hotplug on root ports here: an
unplug request the guest gets before its kernel is up is dropped, so it is sent again every 5 s.
Config drive: a SATA cdrom (`sda`) is always present, empty without `spec.config_drive`, because
SATA devices cannot be hot-plugged; `set_config_drive` swaps its medium live.

Read-only shares: libvirt 9.0 refuses ``<readonly/>`` on a virtiofs filesystem ("virtiofs does
not yet support read-only mode"), so it is left out and `capabilities.read_only_enforced_by_
hypervisor` is False: read-only is enforced host-side.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path

import libvirt

from attachfs.errors import NoFreeSlot
from attachfs.virt import libvirt_xml as lx
from attachfs.virt.base import GuestShare, GuestSpec, GuestView, PowerState, VirtCapabilities
from attachfs.virt.kvm import kvm_usable
from attachfs.virt.libvirt_domains import LibvirtDomains
from attachfs.virt.libvirt_errors import UNPLUG_UNDER_WAY, active, gone, msg, virtiofsd_pidfile
from attachfs.virt.libvirt_events import DomainEvents
from attachfs.virt.libvirt_xml import NAME_PREFIX, VirtError, domain_name
from attachfs.virt.metadata_net_supervisor import MetadataNetworks, stream_socket_path
from attachfs.virt.virtiofs_view import pid_of, root_writable
from attachfs.virt.virtiofsd import VIRTIOFSD, VirtiofsDaemons

__all__ = ["NAME_PREFIX", "LibvirtDriver", "VirtError", "domain_name", "kvm_usable"]

_POLL = 0.1  # seconds between live-XML reads while waiting for a device to go
_RESEND = 5.0  # seconds before an unplug request the guest has not acted on is sent again
DEFAULT_VIRTIOFS_DIR = Path("/run/attachfs/virtiofs")  # tools; an agent uses its state dir




class LibvirtDriver(LibvirtDomains):
    def __init__(
        self,
        uri: str = "qemu:///system",
        spare_root_ports: int = 8,
        domain_type: str | None = None,
        owner: str | None = None,
        networks: MetadataNetworks | None = None,
        virtiofs_dir: Path = DEFAULT_VIRTIOFS_DIR,
        virtiofsd: Path = VIRTIOFSD,
        scope: str | None = None,
    ) -> None:
        """domain_type: "kvm" or "qemu"; None picks kvm only when `kvm_usable()`.
        owner: guests are tagged with it and only guests with this tag are seen; None sees
        every attachfs guest (tools and test clean-up). networks: the guests' metadata network
        helpers. virtiofs_dir: the sockets and records of the devices' virtiofsd; virtiofsd:
        the program (virt/virtiofsd.py). scope: name each guest's domain per host
        (libvirt_xml.domain_uuid), for several agents on one libvirtd."""
        super().__init__(uri, owner, scope)
        self._servers: dict[str, str] = {}  # domain uuid -> server uuid (scope set)
        self.spare_root_ports = spare_root_ports
        self._domain_type = domain_type
        self.networks = networks if networks is not None else MetadataNetworks()
        self.daemons = VirtiofsDaemons(virtiofs_dir, virtiofsd)
        self._events: DomainEvents | None = None
        self.capabilities = VirtCapabilities(
            hot_plug=True, read_only_enforced_by_hypervisor=False,
            share_transports=("virtiofs", "9p"))

    def watch(self, changed: Callable[[str | None], None]) -> None:
        """Call `changed(uuid)` when one of this driver's guests changes (a device removed, a
        power change), `changed(None)` when events may have been missed (libvirt_events)."""
        if self._events is None:
            self._events = DomainEvents(self.uri, self._ours,
                                        lambda dom_uuid: changed(self._server_of(dom_uuid)))
            self._events.start()

    def _server_of(self, dom_uuid: str | None) -> str | None:
        """The server a domain UUID belongs to (None when unknown: look at everything)."""
        if dom_uuid is None or self.scope is None:
            return dom_uuid
        return self._servers.get(dom_uuid)

    def _ours(self, dom: libvirt.virDomain) -> bool:
        return str(dom.name()).startswith(NAME_PREFIX) and self._owned(dom)

    def close(self) -> None:
        if self._events is not None:
            self._events.stop()
            self._events = None
        if self._conn is not None:
            with contextlib.suppress(libvirt.libvirtError):
                self._conn.close()
            self._conn = None

    @property
    def domain_type(self) -> str:
        return self._domain_type or ("kvm" if kvm_usable() else "qemu")

    # -- XML ------------------------------------------------------------------------------------
    def domain_xml(self, spec: GuestSpec) -> str:
        sockets = {s.tag: self.daemons.socket(spec.uuid, s.tag) for s in spec.shares}
        if self.scope is not None:
            self._servers[lx.domain_uuid(spec.uuid, self.scope)] = spec.uuid
        return lx.domain_xml(spec, domain_type=self.domain_type, owner=self.owner,
                             network_socket=stream_socket_path(spec.metadata_socket, spec.uuid),
                             spare_root_ports=self.spare_root_ports, sockets=sockets,
                             scope=self.scope)

    # -- VirtDriver -----------------------------------------------------------------------------
    def start_guest(self, spec: GuestSpec) -> None:
        dom = self._lookup(spec.uuid)
        if dom is not None and active(dom):
            self._ensure_network(spec.uuid, dom)
            return
        xml = self.domain_xml(spec)  # validates first
        stream = stream_socket_path(spec.metadata_socket, spec.uuid)
        Path(spec.console_log).parent.mkdir(parents=True, exist_ok=True)
        self.networks.prepare(stream)
        virtiofs = [s for s in spec.shares if s.transport == "virtiofs"]
        for share in virtiofs:
            self.daemons.ensure(spec.uuid, share.tag, share.host_path)
        try:
            self.conn.createXML(xml, 0)
        except libvirt.libvirtError as e:
            for share in virtiofs:
                self.daemons.stop(spec.uuid, share.tag)
            raise VirtError(f"starting guest {spec.uuid}: {msg(e)}") from e
        # QEMU listens on the stream socket once createXML returns
        self.networks.ensure(spec.uuid, stream, Path(spec.metadata_socket))

    def _ensure_network(self, uuid: str, dom: libvirt.virDomain) -> None:
        """A running guest has its metadata network helper (started again if it is not there)."""
        xml = self._live_xml(uuid, dom)
        relay = lx.relay_sockets(xml) if xml is not None else None
        if relay is not None:
            self.networks.ensure(uuid, *relay)

    def stop_guest(self, uuid: str, timeout: float) -> None:
        dom = self._lookup(uuid)
        if dom is None:
            return
        xml = self._live_xml(uuid, dom)
        relay = lx.relay_sockets(xml) if xml is not None else None
        try:
            self._stop_domain(dom, uuid, timeout)
        finally:
            if relay is not None and not active(dom):
                self.networks.stop(uuid, relay[0])

    def request_shutdown(self, uuid: str) -> None:
        dom = self._lookup(uuid)
        if dom is None or not active(dom):
            return
        try:
            dom.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
        except libvirt.libvirtError as e:
            if not gone(e):
                raise VirtError(f"pressing the power button of guest {uuid}: {msg(e)}") from e

    def _stop_domain(self, dom: libvirt.virDomain, uuid: str, timeout: float) -> None:
        deadline = time.monotonic() + max(timeout, 0.0)
        next_press = 0.0
        while active(dom) and time.monotonic() < deadline:
            if time.monotonic() >= next_press:
                # pressed again every few seconds: a press before the guest's acpid runs is lost
                try:
                    dom.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
                except libvirt.libvirtError as e:
                    if not gone(e):
                        raise VirtError(f"shutting down guest {uuid}: {msg(e)}") from e
                next_press = time.monotonic() + 5.0
            time.sleep(0.2)
        if active(dom):
            try:
                dom.destroy()
            except libvirt.libvirtError as e:
                if not gone(e):
                    raise VirtError(f"destroying guest {uuid}: {msg(e)}") from e

    def guest_state(self, uuid: str) -> PowerState:
        dom = self._lookup(uuid)
        if dom is None:
            return PowerState.MISSING
        return PowerState.RUNNING if active(dom) else PowerState.SHUTOFF

    def list_guests(self) -> dict[str, PowerState]:
        try:
            domains = self.conn.listAllDomains(0)
        except libvirt.libvirtError as e:
            raise VirtError(f"listing guests: {msg(e)}") from e
        guests = {}
        for dom in domains:
            try:
                name, uuid = dom.name(), dom.UUIDString()
            except libvirt.libvirtError:
                continue  # vanished meanwhile
            if name == domain_name(uuid) and self._owned(dom):
                if self.scope is not None:
                    server = self._server_in(dom)
                    if server is None:
                        continue
                    self._servers[uuid] = uuid = server
                guests[uuid] = PowerState.RUNNING if active(dom) else PowerState.SHUTOFF
                if guests[uuid] == PowerState.RUNNING and self.owner is not None:
                    # the owning agent's periodic repair supervises; tools (owner None) do not
                    self._ensure_network(uuid, dom)
        if self.owner is not None:
            self.daemons.tidy()
        return guests

    def observe(self, uuid: str) -> GuestView:
        """One look-up and one read of the live XML for all of it."""
        dom = self._lookup(uuid)
        if dom is None:
            return GuestView(PowerState.MISSING)
        xml = self._live_xml(uuid, dom)
        if xml is None:  # not running (or it went meanwhile)
            return GuestView(self.guest_state(uuid))
        shares = lx.live_shares(xml)
        writable = set()
        for tag, share in shares.items():
            if share.transport == "9p":  # QEMU serves it: the live XML says how
                if not share.read_only:
                    writable.add(tag)
                continue
            pid = self.daemons.pid(uuid, tag) if share.socket else \
                pid_of(virtiofsd_pidfile(dom, share.alias))
            if pid is not None and root_writable(pid):
                writable.add(tag)
        return GuestView(PowerState.RUNNING,
                         {tag: Path(self._source(uuid, s)) for tag, s in shares.items()},
                         frozenset(writable), lx.boot_generation(xml),
                         fixed=frozenset(t for t, s in shares.items() if s.transport == "9p"))

    def guest_share_tags(self, uuid: str) -> set[str]:
        xml = self._live_xml(uuid)
        return set(lx.live_shares(xml)) if xml is not None else set()

    def guest_devices(self, uuid: str) -> dict[str, Path]:
        """tag -> what the device serves: for a socket device, the source its virtiofsd was
        started on (empty when that daemon is unknown: the reconciler replaces the device)."""
        xml = self._live_xml(uuid)
        if xml is None:
            return {}
        return {tag: Path(self._source(uuid, share)) for tag, share in lx.live_shares(xml).items()}

    def _source(self, uuid: str, share: lx.LiveShare) -> str:
        if not share.socket:  # 9p, or
            return share.source  # a device libvirt runs the virtiofsd of (an older attachfs)
        if share.socket != str(self.daemons.socket(uuid, share.tag)):
            return ""
        # as recorded, even when the daemon just ended: QEMU dropped the device and libvirt
        # has not yet taken it out of the live XML (a dead daemon's record goes with `tidy`)
        return self.daemons.source(uuid, share.tag) or ""

    # -- hot plug -------------------------------------------------------------------------------
    def free_share_slots(self, uuid: str) -> int:
        xml = self._live_xml(uuid)
        return len(lx.root_ports(xml)[1]) if xml is not None else 0

    def attach_share(self, uuid: str, share: GuestShare) -> None:
        doing = f"attaching share {share.tag} to guest {uuid}"
        if share.transport != "virtiofs":
            raise VirtError(f"{doing}: a {share.transport} device cannot be hot-plugged")
        # validates tag and path first
        device = lx.to_xml(lx.filesystem_element(share, self.daemons.socket(uuid, share.tag)))
        dom, xml = self._running(uuid, doing)
        if share.tag in lx.live_shares(xml):
            return
        ports, free = lx.root_ports(xml)
        if not free:
            raise NoFreeSlot(f"guest {uuid} has no free hot-plug slot ({len(ports)} in use)")
        self.daemons.ensure(uuid, share.tag, share.host_path)
        try:
            # libvirt puts it on a free pcie-root-port itself (libvirt_xml docstring)
            dom.attachDeviceFlags(device, libvirt.VIR_DOMAIN_AFFECT_LIVE)
        except libvirt.libvirtError as e:
            self.daemons.stop(uuid, share.tag)  # no device: its daemon goes too
            if "No more available PCI slots" in msg(e):
                raise NoFreeSlot(f"guest {uuid} has no free hot-plug slot ({len(ports)} in use): "
                                 f"{msg(e)}") from e
            raise VirtError(f"{doing}: {msg(e)}") from e

    def detach_share(self, uuid: str, tag: str, timeout: float) -> None:
        """Unplug the device with `tag` by its alias (only that device), then poll the live XML
        until libvirt has removed it (it does on QEMU's DEVICE_DELETED, once the guest let the
        slot go; libvirt then stops that device's virtiofsd). The request is sent again every
        `_RESEND` s while the device stays: a guest that is still booting (or paused) drops it.
        libvirt itself may block up to ~5 s on a request, so `timeout` can be overrun by that."""
        dom = self._lookup(uuid)
        deadline = time.monotonic() + max(timeout, 0.0)
        resend: float | None = None  # when to send the unplug request (again)
        while True:
            xml = self._live_xml(uuid, dom) if dom is not None else None
            share = lx.live_shares(xml).get(tag) if xml is not None else None
            if dom is None or share is None:
                return
            now = time.monotonic()
            if resend is not None and now >= deadline:
                raise VirtError(f"share {tag} is still present in guest {uuid} {timeout:g} s "
                                "after the unplug request (the guest did not release it)")
            if resend is None or now >= resend:
                self._unplug(dom, uuid, share)
                resend = time.monotonic() + _RESEND
            time.sleep(_POLL)

    def request_detach(self, uuid: str, tag: str) -> None:
        """One unplug request by alias; libvirt removes the device on QEMU's DEVICE_DELETED
        (and stops its virtiofsd) once the guest lets the slot go."""
        try:
            dom = self._lookup(uuid)
            xml = self._live_xml(uuid, dom) if dom is not None else None
            share = lx.live_shares(xml).get(tag) if xml is not None else None
            if dom is not None and share is not None:
                self._unplug(dom, uuid, share)
        except libvirt.libvirtError as e:  # e.g. the domain's job is busy with another unplug
            raise VirtError(f"asking guest {uuid} to give device {tag} back: {msg(e)}") from e

    def _unplug(self, dom: libvirt.virDomain, uuid: str, share: lx.LiveShare) -> None:
        try:
            dom.detachDeviceAlias(share.alias, libvirt.VIR_DOMAIN_AFFECT_LIVE)
        except libvirt.libvirtError as e:
            if gone(e) or e.get_error_code() in UNPLUG_UNDER_WAY:
                return  # guest gone (next read says so) or an unplug already under way
            xml = self._live_xml(uuid, dom)
            if xml is not None and share.tag in lx.live_shares(xml):
                raise VirtError(f"detaching share {share.tag} from guest {uuid}: {msg(e)}") from e

    def set_config_drive(self, uuid: str, iso: Path) -> None:
        """Insert `iso` into the guest's cdrom (a live media change). The same path again (a
        rebuilt ISO renamed over the old one) is ejected first: libvirt skips a change to the
        same source, and QEMU would keep reading the old, replaced file."""
        doing = f"changing the config drive of guest {uuid}"
        new = lx.to_xml(lx.cdrom_element(iso))
        dom, xml = self._running(uuid, doing)
        present, current = lx.cdrom_source(xml)
        if not present:
            raise VirtError(f"{doing}: the guest has no config drive cdrom")
        flags = libvirt.VIR_DOMAIN_AFFECT_LIVE | libvirt.VIR_DOMAIN_DEVICE_MODIFY_FORCE
        try:
            if current == str(iso):
                dom.updateDeviceFlags(lx.to_xml(lx.cdrom_element(None)), flags)
            dom.updateDeviceFlags(new, flags)
        except libvirt.libvirtError as e:
            raise VirtError(f"{doing}: {msg(e)}") from e
