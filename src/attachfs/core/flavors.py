"""The fixed flavors a server is created with."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from attachfs.core.rules import KIND_PROPERTY, TRANSPORT_PROPERTY, ServerKind, Transport
from attachfs.errors import NotFound


@dataclass(frozen=True)
class Flavor:
    id: str
    name: str
    vcpus: int
    ram_mib: int
    disk_gib: int = 0
    extra_specs: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def share_transport(self) -> str | None:
        """The transport this flavor's servers get shares over, when it says."""
        return self.extra_specs.get(TRANSPORT_PROPERTY)

    @property
    def kind(self) -> ServerKind:
        return ServerKind(self.extra_specs.get(KIND_PROPERTY, ServerKind.VM))



FLAVORS = {f.id: f for f in (
    Flavor("1", "a1.tiny", 1, 128),
    Flavor("2", "a1.small", 1, 256),
    Flavor("3", "a1.medium", 2, 512),
    Flavor("4", "a1.large", 2, 1024),
    # 9p: for guests without a virtio-fs driver (seed 002's VirtFS); shares at boot only
    Flavor("5", "a1.small.9p", 1, 256,
           extra_specs=MappingProxyType({TRANSPORT_PROPERTY: Transport.NINEP.value})),
    # an LXC container (virt/lxc.py): shares are bind mounts injected while it runs
    Flavor("6", "c1.small", 1, 256,
           extra_specs=MappingProxyType({KIND_PROPERTY: ServerKind.CONTAINER.value})),
)}


def find_flavor(ref: str) -> Flavor:
    """By id or name; a full URL (`…/flavors/1`) names its last component."""
    ref = ref.rstrip("/").rsplit("/", 1)[-1]
    for flavor in FLAVORS.values():
        if ref in (flavor.id, flavor.name):
            return flavor
    raise NotFound(f"Flavor {ref} could not be found.")


def server_kind(flavor_id: str) -> ServerKind:
    """What a server of this flavor runs as (a flavor that is gone: a VM, as it was made)."""
    flavor = FLAVORS.get(flavor_id)
    return flavor.kind if flavor is not None else ServerKind.VM
