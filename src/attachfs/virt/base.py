"""The interface every virt driver implements (libvirt for VMs; LXC for containers later).

The agent builds a `GuestSpec` from the database and asks the driver to make the host match it.
Drivers keep no state of their own between calls: what is running is read back from the
hypervisor (`list_guests`, `guest_state`), so a restarted agent sees exactly what is there.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


class PowerState(enum.StrEnum):
    RUNNING = "running"
    SHUTOFF = "shutoff"  # defined/known but not running
    MISSING = "missing"  # the hypervisor has no such guest


@dataclass(frozen=True)
class GuestShare:
    """One filesystem handed to the guest; the guest mounts it by `tag`."""

    tag: str
    host_path: Path  # the host-side mount (under the configured mount root)
    read_only: bool = False
    transport: str = "virtiofs"  # core.rules.Transport: the device that carries it
    target: str = ""  # where it appears in a container (bind); a VM's guest mounts it itself
    share_id: str = ""  # transport direct: the share whose own export the guest mounts


@dataclass(frozen=True)
class BootImage:
    """A direct-kernel-boot guest image (kernel + initramfs), see virt/images.py."""

    id: str
    name: str
    kernel: Path
    initrd: Path
    cmdline: str = "console=ttyS0"


@dataclass(frozen=True)
class GuestSpec:
    uuid: str
    name: str
    vcpus: int
    memory_mib: int
    image: BootImage
    console_log: Path  # serial console of the guest is appended here
    metadata_socket: Path  # guest HTTP to 169.254.169.254:80 is relayed to this unix socket
    shares: tuple[GuestShare, ...] = field(default_factory=tuple)
    # A VM's: an ISO 9660 image, label config-2, attached as a cdrom. A container's: a
    # directory of the same files, bound read-only into it.
    config_drive: Path | None = None
    kind: str = "vm"  # core.rules.ServerKind: which driver runs it
    # The server generation this boot serves: kept with the guest, so a reboot requested at
    # generation G is done once a guest started for G (or later) runs, even across a crash.
    generation: int = 0


@dataclass(frozen=True)
class GuestView:
    """One guest as the reconciler observes it (VirtDriver.observe)."""

    power: PowerState
    devices: dict[str, Path] = field(default_factory=dict)  # tag -> what it serves
    # Tags whose file server sees its share writable now (virtiofs_view): a read-only share's
    # device here was plugged while its host mount was writable, and is replaced. Devices that
    # cannot be told are left out.
    writable: frozenset[str] = frozenset()
    generation: int | None = None  # the GuestSpec.generation the running guest started with
    # Tags of devices that cannot leave while the guest runs (9p: not hot-pluggable): the
    # reconciler never asks for them; they go when the guest stops.
    fixed: frozenset[str] = frozenset()
    # False: nothing in the guest mounts or reports (a container: the host injects and removes
    # its mounts), so a detach does not wait for the guest to let go.
    cooperative: bool = True


@dataclass(frozen=True)
class VirtCapabilities:
    hot_plug: bool = False
    read_only_enforced_by_hypervisor: bool = False
    share_transports: tuple[str, ...] = ("virtiofs",)


class VirtDriver(Protocol):
    capabilities: VirtCapabilities

    def start_guest(self, spec: GuestSpec) -> None:
        """Boot the guest as `spec` describes. Idempotent: a guest already running is left alone."""

    def stop_guest(self, uuid: str, timeout: float) -> None:
        """Ask the guest to power off; force it off after `timeout` seconds. Missing guest: no-op."""

    def request_shutdown(self, uuid: str) -> None:
        """Press the guest's power button (ACPI) and return at once: the reconciler looks
        again, and stops it with stop_guest(uuid, 0) if it is still running after its grace.
        A missing or stopped guest is fine."""

    def guest_state(self, uuid: str) -> PowerState: ...

    def observe(self, uuid: str) -> GuestView:
        """Everything the reconciler looks at for one guest, read once."""

    def watch(self, changed: Callable[[str | None], None]) -> None:
        """From now on call `changed(uuid)` when a guest's actual state changes by itself (a
        device left, the guest stopped), and `changed(None)` when changes may have been missed.
        A driver without events does nothing: the agent's polling still finds every change."""

    def list_guests(self) -> dict[str, PowerState]:
        """Every guest this driver manages on the host (by server uuid), running or not."""

    def guest_share_tags(self, uuid: str) -> set[str]:
        """Tags of the filesystem devices the running guest has (empty if not running)."""

    def guest_devices(self, uuid: str) -> dict[str, Path]:
        """The running guest's filesystem devices: tag -> host source path (empty if not
        running). What the reconciler observes: a device on the wrong source is fixed."""

    # ---- hot plug (running guests) ----------------------------------------------------------
    def attach_share(self, uuid: str, share: GuestShare) -> None:
        """Add a filesystem device to the running guest. Idempotent: a device with that tag
        already present is left alone. Raises NoFreeSlot when no hot-plug slot is left."""

    def detach_share(self, uuid: str, tag: str, timeout: float) -> None:
        """Remove the device with `tag` from the running guest and wait (up to `timeout`) until
        it is gone. Idempotent: no such device (or no guest) is fine. Other devices untouched."""

    def request_detach(self, uuid: str, tag: str) -> None:
        """Ask the running guest to give the device with `tag` back, without waiting: the
        reconciler looks again later (`guest_devices`). Idempotent; no device is fine."""

    def free_share_slots(self, uuid: str) -> int:
        """How many more filesystem devices the running guest can take by hot plug."""

    def set_config_drive(self, uuid: str, iso: Path) -> None:
        """Point the running guest's config drive at `iso` (live media change)."""
