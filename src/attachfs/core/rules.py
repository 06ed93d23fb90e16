"""Rules every layer must agree on, written once: the share tag, the share protocols, and where
a share is mounted (on the host and in the guest). Pure: no I/O.

Other layers import these (the API checks input with them; the agent, virt and storage code,
the metadata service and the guest agent must apply the same values).
"""

from __future__ import annotations

import enum
import re

from attachfs.errors import BadRequest, Conflict

# ---- tag: what the guest mounts (`mount -t virtiofs TAG`) ------------------------------------
# QEMU's vhost-user-fs "tag" is at most 36 bytes; Nova allows 255 and fails late. We refuse early.
TAG_MAX_BYTES = 36
TAG_CHARS = "a-zA-Z0-9-"
TAG_PATTERN = re.compile(rf"[{TAG_CHARS}]{{1,{TAG_MAX_BYTES}}}")  # the whole rule, as a regex
_TAG_FORM = re.compile(rf"^[{TAG_CHARS}]{{1,255}}$")  # 2.97's schema, before the byte limit


def tag_problem(tag: str) -> str | None:
    """Why `tag` is not a usable tag, or None when it is."""
    if not isinstance(tag, str) or not _TAG_FORM.match(tag):
        return f"must be 1-255 characters of [{TAG_CHARS}]"
    if len(tag.encode()) > TAG_MAX_BYTES:
        return f"'{tag}' is {len(tag)} characters; virtio-fs carries at most {TAG_MAX_BYTES}"
    return None


def is_valid_tag(tag: str) -> bool:
    return isinstance(tag, str) and TAG_PATTERN.fullmatch(tag) is not None


def validate_tag(tag: str) -> str:
    problem = tag_problem(tag)
    if problem is not None:
        raise BadRequest(f"Invalid input for field/attribute tag: {problem}")
    return tag


# ---- protocols -----------------------------------------------------------------------------
class ShareProtocol(enum.StrEnum):
    LOCAL = "LOCAL"  # the built-in shares: a filesystem on this host (storage/local.py)
    NFS = "NFS"
    CEPHFS = "CEPHFS"


# What the API lets a server attach. A protocol is here when a provider can grant a host access
# to it; whether this host can mount it is the agent's step (a missing connector puts the
# attachment in `error` with the reason, docs/manila.md).
ATTACHABLE_PROTOCOLS: tuple[ShareProtocol, ...] = (ShareProtocol.LOCAL, ShareProtocol.NFS,
                                                    ShareProtocol.CEPHFS)
# The only protocol of the built-in shares (/os-filesystem and the emulated share service).
BUILTIN_PROTOCOL = ShareProtocol.LOCAL
# What a built-in share may be created as: LOCAL, a directory on the host handed to guests
# through it; NFS, the same, also served by the host's NFS server to clients granted a rule
# (transport direct, docs/transports.md).
BUILTIN_PROTOCOLS: tuple[ShareProtocol, ...] = (ShareProtocol.LOCAL, ShareProtocol.NFS)
# Protocols the share service (Manila) is asked to grant access rules for.
SHARE_SERVICE_PROTOCOLS: tuple[ShareProtocol, ...] = (ShareProtocol.NFS, ShareProtocol.CEPHFS)


def require_attachable(protocol: str) -> ShareProtocol:
    """The compute service's 409 (and wording) for a protocol it cannot attach."""
    if protocol.upper() not in ATTACHABLE_PROTOCOLS:
        raise Conflict(f"Share protocol {protocol} is not supported.")
    return ShareProtocol(protocol.upper())


# ---- mount paths -----------------------------------------------------------------------------
GUEST_MOUNT_DEFAULT_DIR = "/mnt"
HOST_MOUNT_READ_ONLY_SUFFIX = "-ro"


def guest_mount_point(mount_point: str | None, tag: str) -> str:
    """Where the guest agent mounts an attachment: its mount point, else /mnt/<tag>."""
    return mount_point or f"{GUEST_MOUNT_DEFAULT_DIR}/{tag}"


def mount_points_overlap(a: str, b: str) -> bool:
    """One is the other or inside it: the guest can hold only one of them (the agent refuses
    the later device)."""
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


def host_mount_name(share_id: str, read_only: bool) -> str:
    """The host mount handed to guests, under the mount root: one per share and access mode on
    a host, shared by the guests there (`<share>` or `<share>-ro`)."""
    return share_id + (HOST_MOUNT_READ_ONLY_SUFFIX if read_only else "")


# ---- transports: how a host hands a share to its guest --------------------------------------
class Transport(enum.StrEnum):
    VIRTIOFS = "virtiofs"  # a vhost-user-fs device served by virtiofsd (hot-pluggable)
    NINEP = "9p"  # a virtio-9p device served by QEMU itself (at boot only)
    NFS = "nfs"  # the host's NFS-Ganesha, over the guest's private link (no device)
    BIND = "bind"  # a container's: the host mount injected into its mount namespace
    # a built-in NFS share's own export, mounted by the guest itself with a rule for its
    # address (seed 002's direct IP); the host mounts nothing
    DIRECT = "direct"


DEFAULT_TRANSPORT = Transport.VIRTIOFS
# Transports whose device can come and go while the guest runs. 9p cannot: QEMU 7.2's
# virtio-9p-pci is not hot-pluggable through libvirt (measured: libvirt refuses the device).
HOT_PLUG_TRANSPORTS = frozenset({Transport.VIRTIOFS, Transport.NFS, Transport.BIND,
                                 Transport.DIRECT})
# Transports whose share the host mounts (the others: the guest mounts the export itself).
HOST_MOUNTED = frozenset({Transport.VIRTIOFS, Transport.NINEP, Transport.NFS, Transport.BIND})
# The flavor extra spec that picks a server's transport (images carry no properties yet).
TRANSPORT_PROPERTY = "attachfs:share_transport"


# ---- what a server runs as ----------------------------------------------------------------
class ServerKind(enum.StrEnum):
    VM = "vm"  # a libvirt/QEMU guest
    CONTAINER = "container"  # an LXC container (virt/lxc.py)


KIND_PROPERTY = "attachfs:virt"  # the flavor extra spec that makes a server a container
# Where containers get shares without a mount point: /mnt/<tag>, or seed 000's layout
# /dev/manila/<share id> when the operator chooses it ([containers] mount_layout).
CONTAINER_LAYOUTS = ("mnt", "dev-manila")


def container_target(mount_point: str | None, tag: str, share_id: str, layout: str) -> str:
    if mount_point:
        return mount_point
    if layout == "dev-manila":
        return f"/dev/manila/{share_id}"
    return guest_mount_point(None, tag)


def transport_problem(value: object) -> str | None:
    if not isinstance(value, str) or value not in Transport.__members__.values():
        return f"must be one of {', '.join(t.value for t in Transport)}"
    return None


def choose_transport(asked: str | None, server_default: str | None, host_default: str,
                     kind: str = ServerKind.VM) -> str:
    """The attach body's choice, else the server's flavor's extra spec, else the operator's
    default (each already checked where it was read). A container takes bind mounts only, a
    VM never: asking otherwise is a 409."""
    if kind == ServerKind.CONTAINER:
        if asked not in (None, Transport.BIND):
            raise Conflict(f"Transport {asked} is not possible for a container: its shares "
                           "are bind mounts (transport bind).")
        return Transport.BIND
    if asked == Transport.BIND:
        raise Conflict("Transport bind is for containers only; this server is a virtual "
                       "machine (virtiofs, 9p, nfs or direct).")
    return asked or server_default or host_default


def require_transport(transport: str, host_can: frozenset[str]) -> None:
    """Before anything changes: the host must serve `transport` (a 409 that says why)."""
    if transport not in host_can:
        offered = ", ".join(sorted(host_can)) or "none"
        raise Conflict(f"Transport {transport} is not available on this host (it offers: "
                       f"{offered}).")


def require_direct_export(transport: str, share_id: str, nfs_export: str) -> None:
    """Transport direct needs a share this host serves over NFS itself."""
    if transport == Transport.DIRECT and not nfs_export:
        raise Conflict(f"Transport direct needs a share served over NFS by this host (a "
                       f"built-in share of protocol NFS); share {share_id} is not one.")


def require_hot_pluggable(transport: str, running: bool) -> None:
    """A running server takes (or gives back) a share only over a hot-pluggable transport."""
    if running and transport not in HOT_PLUG_TRANSPORTS:
        raise Conflict(f"Transport {transport} cannot be hot-plugged: stop the server, then "
                       "attach or detach the share.")
