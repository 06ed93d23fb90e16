"""One VirtDriver over this host's two kinds of guest: VMs (libvirt) and containers (LXC).

The agent speaks to one driver; this one sends each call to the driver that runs the guest: a
start by the spec's `kind`, everything else by who has the guest (the container driver knows
its own from its directory, at the cost of a stat). Without containers it is the VM driver.
"""

from __future__ import annotations

from collections.abc import Callable
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


class GuestRouter:
    def __init__(self, vm: VirtDriver, container: LxcDriver | None) -> None:
        self.vm = vm
        self.container = container
        transports = tuple(self.vm.capabilities.share_transports) + (
            container.capabilities.share_transports if container is not None else ())
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
        else:
            self.vm.start_guest(spec)

    def stop_guest(self, uuid: str, timeout: float) -> None:
        self._for(uuid).stop_guest(uuid, timeout)

    def request_shutdown(self, uuid: str) -> None:
        self._for(uuid).request_shutdown(uuid)

    def guest_state(self, uuid: str) -> PowerState:
        return self._for(uuid).guest_state(uuid)

    def observe(self, uuid: str) -> GuestView:
        return self._for(uuid).observe(uuid)

    def watch(self, changed: Callable[[str | None], None]) -> None:
        self.vm.watch(changed)

    def list_guests(self) -> dict[str, PowerState]:
        guests = dict(self.vm.list_guests())
        if self.container is not None:
            guests.update(self.container.list_guests())
        return guests

    def guest_share_tags(self, uuid: str) -> set[str]:
        return self._for(uuid).guest_share_tags(uuid)

    def guest_devices(self, uuid: str) -> dict[str, Path]:
        return self._for(uuid).guest_devices(uuid)

    def attach_share(self, uuid: str, share: GuestShare) -> None:
        self._for(uuid).attach_share(uuid, share)

    def detach_share(self, uuid: str, tag: str, timeout: float) -> None:
        self._for(uuid).detach_share(uuid, tag, timeout)

    def request_detach(self, uuid: str, tag: str) -> None:
        self._for(uuid).request_detach(uuid, tag)

    def free_share_slots(self, uuid: str) -> int:
        return self._for(uuid).free_share_slots(uuid)

    def set_config_drive(self, uuid: str, iso: Path) -> None:
        self._for(uuid).set_config_drive(uuid, iso)

    def close(self) -> None:
        close = getattr(self.vm, "close", None)
        if close is not None:
            close()
