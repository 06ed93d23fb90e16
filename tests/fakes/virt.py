"""An in-memory virt driver: guests with power state and filesystem devices (tag -> source),
a fixed number of hot-plug slots, unplug that completes after `unplug_delay` observations."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from attachfs.errors import NoFreeSlot
from attachfs.virt.base import GuestShare, GuestSpec, GuestView, PowerState, VirtCapabilities
from tests.fakes.faults import Faults


@dataclass
class FakeGuest:
    spec: GuestSpec | None
    running: bool = True
    devices: dict[str, Path] = field(default_factory=dict)
    read_only: dict[str, bool] = field(default_factory=dict)
    writable: set[str] = field(default_factory=set)  # devices whose daemon's view is rw
    unplugging: dict[str, int] = field(default_factory=dict)  # tag -> looks left until gone
    boots: int = 0
    config_drive: Path | None = None


class FakeVirt:
    capabilities = VirtCapabilities(hot_plug=True)

    def __init__(self, slots: int = 8, unplug_delay: int = 0,
                 mounts: dict[Path, frozenset[str]] | None = None) -> None:
        """mounts: the host's mount table (FakeHost.mounts): a device's view of its share is
        the flags its host mount had when the device was plugged, as with virtiofsd."""
        self.guests: dict[str, FakeGuest] = {}
        self.mounts = mounts if mounts is not None else {}
        self.slots = slots
        self.unplug_delay = unplug_delay
        self.faults = Faults()
        self.watchers: list[Callable[[str | None], None]] = []

    def watch(self, changed: Callable[[str | None], None]) -> None:
        self.watchers.append(changed)

    def emit(self, uuid: str | None) -> None:
        """What libvirt's events do: tell the watchers that `uuid` changed by itself."""
        for changed in self.watchers:
            changed(uuid)

    def start_guest(self, spec: GuestSpec) -> None:
        self.faults.check("start_guest")
        guest = self.guests.get(spec.uuid)
        if guest is not None and guest.running:
            return
        self.guests[spec.uuid] = FakeGuest(
            spec, True, {s.tag: s.host_path for s in spec.shares},
            {s.tag: s.read_only for s in spec.shares},
            writable={s.tag for s in spec.shares if self._view_writable(s.host_path)},
            boots=(guest.boots if guest else 0) + 1, config_drive=spec.config_drive)

    def stop_guest(self, uuid: str, timeout: float) -> None:
        self.faults.check("stop_guest")
        guest = self.guests.pop(uuid, None)  # transient domains: stopped is gone
        del guest

    def request_shutdown(self, uuid: str) -> None:
        """The guest powers off when asked (transient: stopped is gone)."""
        self.faults.check("request_shutdown")
        self.guests.pop(uuid, None)

    def observe(self, uuid: str) -> GuestView:
        power = self.guest_state(uuid)
        if power != PowerState.RUNNING:
            return GuestView(power)
        guest = self.guests[uuid]
        return GuestView(power, self.guest_devices(uuid), frozenset(self.writable_devices(uuid)),
                         guest.spec.generation if guest.spec is not None else None)

    def guest_state(self, uuid: str) -> PowerState:
        self.faults.check("guest_state")
        guest = self.guests.get(uuid)
        if guest is None:
            return PowerState.MISSING
        return PowerState.RUNNING if guest.running else PowerState.SHUTOFF

    def list_guests(self) -> dict[str, PowerState]:
        self.faults.check("list_guests")
        return {u: PowerState.RUNNING if g.running else PowerState.SHUTOFF
                for u, g in self.guests.items()}

    def guest_share_tags(self, uuid: str) -> set[str]:
        return set(self.guest_devices(uuid))

    def guest_devices(self, uuid: str) -> dict[str, Path]:
        self.faults.check("guest_devices")
        guest = self.guests.get(uuid)
        if guest is None or not guest.running:
            return {}
        for tag in list(guest.unplugging):
            guest.unplugging[tag] -= 1
            if guest.unplugging[tag] < 0:
                del guest.unplugging[tag]
                guest.devices.pop(tag, None)
        return dict(guest.devices)

    def attach_share(self, uuid: str, share: GuestShare) -> None:
        self.faults.check("attach_share")
        guest = self._running(uuid)
        if share.tag in guest.devices:
            return
        if len(guest.devices) >= self.slots:
            raise NoFreeSlot(f"guest {uuid} has no free hot-plug slot")
        guest.devices[share.tag] = share.host_path
        guest.read_only[share.tag] = share.read_only
        guest.writable.discard(share.tag)
        if self._view_writable(share.host_path):
            guest.writable.add(share.tag)

    def _view_writable(self, path: Path) -> bool:
        return "ro" not in self.mounts.get(path, frozenset())

    def writable_devices(self, uuid: str) -> set[str]:
        guest = self.guests.get(uuid)
        if guest is None or not guest.running:
            return set()
        return guest.writable & set(guest.devices)
    def detach_share(self, uuid: str, tag: str, timeout: float) -> None:
        self.faults.check("detach_share")
        guest = self.guests.get(uuid)
        if guest is not None:
            guest.devices.pop(tag, None)

    def request_detach(self, uuid: str, tag: str) -> None:
        self.faults.check("request_detach")
        guest = self.guests.get(uuid)
        if guest is not None and tag in guest.devices:
            guest.unplugging.setdefault(tag, self.unplug_delay)

    def free_share_slots(self, uuid: str) -> int:
        guest = self.guests.get(uuid)
        return self.slots - len(guest.devices) if guest is not None else 0

    def set_config_drive(self, uuid: str, iso: Path) -> None:
        self._running(uuid).config_drive = iso

    def _running(self, uuid: str) -> FakeGuest:
        from attachfs.virt.libvirt_xml import VirtError

        guest = self.guests.get(uuid)
        if guest is None or not guest.running:
            raise VirtError(f"guest {uuid} is not running")
        return guest
