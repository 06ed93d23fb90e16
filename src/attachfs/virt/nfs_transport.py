"""Transports `nfs` and `direct` as the router's third kind of device: exports of the host's
NFS server (virt/ganesha.py) that a guest reaches over its private link (virt/nfs_link.py).

- `nfs`: one export per attachment, of its host mount, to that guest alone
  (``169.254.169.254:/attachfs-<server>-<tag>``).
- `direct` (seed 002's direct IP): one export per built-in NFS share, of the share's own
  directory, with one client per guest that holds an access rule for its address
  (``169.254.169.254:/share-<share id>``, the share's export location). The host mounts nothing.

For the reconciler either is a device like a virtio-fs one: `devices` observes the guest's
clients on live exports (none while the server process is down: the next pass allows again,
which starts it), `plug` allows, `unplug` withdraws, each without a restart of the server or a
change for any other guest.
"""

from __future__ import annotations

from pathlib import Path

from attachfs.core.guest_mount import nfs_pseudo_path, share_pseudo_path
from attachfs.virt.base import GuestShare
from attachfs.virt.ganesha import HOST, Client, HostNfsServer
from attachfs.virt.metadata_net_supervisor import nfs_socket_path
from attachfs.virt.nfs_link import NfsLinks

EXPORTED = ("nfs", "direct")


class NfsTransport:
    def __init__(self, state_dir: Path, metadata_dir: Path, port: int = 0) -> None:
        self.server = HostNfsServer(state_dir / "ganesha", port)
        self.links = NfsLinks(state_dir / "nfs-link", lambda: (HOST, self.server.port))
        self.metadata_dir = metadata_dir

    def link(self, uuid: str) -> None:
        """The guest's link listens (its helper forwards the guest's NFS connections there)."""
        self.links.ensure(uuid, nfs_socket_path(self.metadata_dir / f"{uuid}.sock", uuid))

    def address(self, uuid: str) -> str:
        """The address the NFS server sees the guest's connections come from."""
        return self.links.address(uuid)

    def plug(self, uuid: str, share: GuestShare) -> None:
        self.server.ensure_running()
        self.link(uuid)
        pseudo = share_pseudo_path(share.share_id) if share.transport == "direct" \
            else nfs_pseudo_path(uuid, share.tag)
        self.server.allow(pseudo, share.host_path,
                          Client(self.address(uuid), uuid, share.tag, share.read_only))

    def unplug(self, uuid: str, tag: str) -> None:
        self.server.deny(uuid, tag)

    def has(self, uuid: str, tag: str) -> bool:
        return any(c.tag == tag for _, c in self.server.clients_of(uuid))

    def holds(self, uuid: str) -> bool:
        """Anything of the running guest's here: an export client, or its link."""
        return uuid in self.links.listening() or bool(self.server.clients_of(uuid))

    def devices(self, uuid: str) -> tuple[dict[str, Path], frozenset[str]]:
        """(tag -> what is exported, tags exported read-write) of the guest's live exports."""
        if self.server.pid() is None:
            return {}, frozenset()
        mine = self.server.clients_of(uuid)
        return ({c.tag: Path(e.path) for e, c in mine},
                frozenset(c.tag for _, c in mine if not c.read_only))

    def forget(self, uuid: str) -> None:
        """The guest stopped: its clients, exports only it had, and its link go."""
        self.server.deny(uuid)
        self.links.remove(uuid)

    def release(self, uuid: str) -> None:
        """The server is deleted: its address too (access rules named it until now)."""
        self.forget(uuid)
        self.links.release(uuid)

    def tidy(self, running: set[str]) -> None:
        """Running guests keep (or get back, after an agent restart) their links; the exports
        and links of guests no longer running go."""
        exported = {c.server for e in self.server.exports() for c in e.clients}
        for uuid in (exported | self.links.listening()) - running:
            self.forget(uuid)
        for uuid in running:  # listeners die with an agent restart: back for every guest
            self.link(uuid)
