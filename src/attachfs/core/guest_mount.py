"""How a workload mounts an attachment, per transport (seed 000's "get share info"). Pure.

One description serves every reader: the API's mount_info extension, the metadata `devices`
entry the guest agent mounts from, and the CLI's printed `mount` command. The guest agent
checks each field again (it trusts its metadata no more than a tenant's input).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from attachfs.core.rules import Transport, container_target, guest_mount_point

NINEP_OPTIONS = "trans=virtio,version=9p2000.L,msize=512000"
NFS_OPTIONS = "vers=4.1,proto=tcp"  # + port; the host's Ganesha speaks NFSv4 only
# Ganesha pseudo path of an export: one name right under the pseudo root. Flat on purpose:
# a client sees the pseudo root's intermediate directories but not exports it may not mount
# (measured), so /attachfs/<server>/<tag> would show every guest the other servers' ids.
NFS_EXPORT_PREFIX = "/attachfs-"
# Where a guest reaches its host's NFS server: its own link (virt/nfs_link.py) answers on the
# metadata address, port 2049.
GUEST_NFS_ADDRESS, GUEST_NFS_PORT = "169.254.169.254", 2049


@dataclass(frozen=True)
class NfsLink:
    """Where a guest reaches its host's NFS server over its private link."""

    address: str
    port: int = 2049


@dataclass(frozen=True)
class GuestMount:
    transport: str
    fstype: str
    source: str
    options: str
    target: str

    @property
    def command(self) -> str:
        """The `mount` command a person would type in the guest (every field is from a
        checked alphabet: no quoting needed). A container's bind mount is made by the host."""
        if self.transport == Transport.BIND:
            return f"none: the host mounts it at {self.target}"
        return f"mount -t {self.fstype} -o {self.options} {self.source} {self.target}"

    def as_dict(self) -> dict[str, Any]:
        return {"transport": self.transport, "fstype": self.fstype, "source": self.source,
                "options": self.options, "target": self.target}


def nfs_pseudo_path(server_uuid: str, tag: str) -> str:
    """Transport nfs: the export of one attachment's host mount."""
    return f"{NFS_EXPORT_PREFIX}{server_uuid}-{tag}"


def share_pseudo_path(share_id: str) -> str:
    """Transport direct: the export of a built-in NFS share itself, one for all its clients."""
    return f"/share-{share_id}"


def share_nfs_export(share_id: str, address: str = GUEST_NFS_ADDRESS) -> str:
    """A built-in NFS share's export location: what a client with a rule mounts."""
    return f"{address}:{share_pseudo_path(share_id)}"


def guest_mount(transport: str, tag: str, read_only: bool, mount_point: str | None,
                server_uuid: str, nfs: NfsLink | None = None, share_id: str = "",
                layout: str = "mnt") -> GuestMount:
    target = guest_mount_point(mount_point, tag)
    ro = ",ro" if read_only else ""
    if transport == Transport.BIND:  # the host's mount, injected (nosuid,nodev always)
        return GuestMount(transport, "bind", "host", ("ro" if read_only else "rw") +
                          ",nosuid,nodev", container_target(mount_point, tag, share_id, layout))
    if transport == Transport.NINEP:
        return GuestMount(transport, "9p", tag, NINEP_OPTIONS + ro, target)
    if transport == Transport.DIRECT:  # the guest mounts the share's own export itself
        link = nfs or NfsLink(GUEST_NFS_ADDRESS, GUEST_NFS_PORT)
        return GuestMount(transport, "nfs4", share_nfs_export(share_id, link.address),
                          f"{NFS_OPTIONS},port={link.port}{ro}", target)
    if transport == Transport.NFS:
        link = nfs or NfsLink(GUEST_NFS_ADDRESS, GUEST_NFS_PORT)
        return GuestMount(transport, "nfs4", f"{link.address}:{nfs_pseudo_path(server_uuid, tag)}",
                          f"{NFS_OPTIONS},port={link.port}{ro}", target)
    return GuestMount(Transport.VIRTIOFS, "virtiofs", tag, "ro" if read_only else "rw", target)
