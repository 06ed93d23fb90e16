"""One VirtDriver over this host's two kinds of guest, VMs (libvirt) and containers (LXC), and
the host's NFS server as a third kind of VM device (transport nfs).

The agent speaks to one driver; this one sends each call to the driver that runs the guest: a
start by the spec's `kind`, everything else by who has the guest (the container driver knows
its own from its directory, at the cost of a stat). A VM's shares over transport nfs are no
device of the VM driver: they are exports (virt/nfs_transport.py), observed and changed here
beside the VM's devices. Without containers or NFS it is the VM driver.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from attachfs.virt.base import (
    GuestShare,
    GuestSpec,
    GuestView,
    PowerState,
    VirtCapabilities,
    VirtDriver,
)
from attachfs.virt.libvirt_xml import VirtError
from attachfs.virt.lxc import LxcDriver
from attachfs.virt.nfs_transport import EXPORTED, NfsTransport

NFS = "nfs"


class GuestRouter:
    def __init__(self, vm: VirtDriver, container: LxcDriver | None,
                 nfs: NfsTransport | None = None) -> None:
        self.vm = vm
        self.container = container
        self.nfs = nfs
        transports = tuple(self.vm.capabilities.share_transports) + (
            container.capabilities.share_transports if container is not None else ()) + (
            EXPORTED if nfs is not None else ())
        self.capabilities = VirtCapabilities(
            hot_plug=self.vm.capabilities.hot_plug,
            read_only_enforced_by_hypervisor=self.vm.capabilities.read_only_enforced_by_hypervisor,
            share_transports=transports)

    def _for(self, uuid: str) -> VirtDriver:
        if self.container is not None and self.container.owns(uuid):
            return self.container
        return self.vm

    def start_guest(self, spec: GuestSpec) -> None:
        if spec.kind == "container":
            if self.container is None:
                raise VirtError(f"server {spec.uuid} is a container; this host runs none")
            self.container.start_guest(spec)
            return
        exports = [s for s in spec.shares if s.transport in EXPORTED]
        if exports and self.nfs is None:
            raise VirtError(f"server {spec.uuid} has shares over NFS; this host serves none")
        self.vm.start_guest(replace(spec, shares=tuple(
            s for s in spec.shares if s.transport not in EXPORTED)))
        if self.nfs is not None:
            self.nfs.link(spec.uuid)
            for share in exports:
                self.nfs.plug(spec.uuid, share)

    def stop_guest(self, uuid: str, timeout: float) -> None:
        self._for(uuid).stop_guest(uuid, timeout)
        if self.nfs is not None:
            self.nfs.forget(uuid)

    def request_shutdown(self, uuid: str) -> None:
        self._for(uuid).request_shutdown(uuid)

    def guest_state(self, uuid: str) -> PowerState:
        return self._for(uuid).guest_state(uuid)

    def observe(self, uuid: str) -> GuestView:
        view = self._for(uuid).observe(uuid)
        if self.nfs is None:
            return view
        if view.power != PowerState.RUNNING:
            # it powered off by itself (no stop_guest here): like its devices, its exports and
            # its link go (an export would keep its host mount busy)
            if self.nfs.holds(uuid):
                self.nfs.forget(uuid)
            return view
        exports, writable = self.nfs.devices(uuid)
        if not exports:
            return view
        return replace(view, devices={**view.devices, **exports},
                       writable=view.writable | writable)

    def watch(self, changed: Callable[[str | None], None]) -> None:
        self.vm.watch(changed)

    def list_guests(self) -> dict[str, PowerState]:
        guests = dict(self.vm.list_guests())
        if self.nfs is not None:
            self.nfs.tidy({u for u, p in guests.items() if p == PowerState.RUNNING})
        if self.container is not None:
            guests.update(self.container.list_guests())
        return guests

    def guest_share_tags(self, uuid: str) -> set[str]:
        return set(self.observe(uuid).devices)

    def guest_devices(self, uuid: str) -> dict[str, Path]:
        return self.observe(uuid).devices

    def attach_share(self, uuid: str, share: GuestShare) -> None:
        if share.transport in EXPORTED:
            if self.nfs is None:
                raise VirtError(f"share {share.tag}: this host serves no NFS")
            if self.vm.guest_state(uuid) != PowerState.RUNNING:
                raise VirtError(f"exporting share {share.tag}: guest {uuid} is not running")
            self.nfs.plug(uuid, share)
            return
        self._for(uuid).attach_share(uuid, share)

    def detach_share(self, uuid: str, tag: str, timeout: float) -> None:
        if self.nfs is not None and self.nfs.has(uuid, tag):
            self.nfs.unplug(uuid, tag)
            return
        self._for(uuid).detach_share(uuid, tag, timeout)

    def request_detach(self, uuid: str, tag: str) -> None:
        if self.nfs is not None and self.nfs.has(uuid, tag):
            self.nfs.unplug(uuid, tag)
            return
        self._for(uuid).request_detach(uuid, tag)

    def free_share_slots(self, uuid: str) -> int:
        return self._for(uuid).free_share_slots(uuid)

    def set_config_drive(self, uuid: str, iso: Path) -> None:
        self._for(uuid).set_config_drive(uuid, iso)

    def close(self) -> None:
        close = getattr(self.vm, "close", None)
        if close is not None:
            close()
