"""Transport `nfs` as the router's third kind of device: an export of the host's NFS server
(virt/ganesha.py) to one guest, reached over that guest's private link (virt/nfs_link.py).

For the reconciler an export is a device like a virtio-fs one: `devices` observes the guest's
exports (only while the server process runs: a dead server has none, and the next pass exports
again, which starts it), `plug` exports, `unplug` withdraws, both without a restart of the server
or a change to any other export. The guest mounts ``169.254.169.254:/attachfs-<server>-<tag>``.
"""

from __future__ import annotations

from pathlib import Path

from attachfs.virt.base import GuestShare
from attachfs.virt.ganesha import HOST, HostNfsServer
from attachfs.virt.metadata_net_supervisor import nfs_socket_path
from attachfs.virt.nfs_link import NfsLinks


class NfsTransport:
    def __init__(self, state_dir: Path, metadata_dir: Path, port: int = 0) -> None:
        self.server = HostNfsServer(state_dir / "ganesha", port)
        self.links = NfsLinks(state_dir / "nfs-link", lambda: (HOST, self.server.port))
        self.metadata_dir = metadata_dir

    def link(self, uuid: str) -> None:
        """The guest's link listens (its helper forwards the guest's NFS connections there)."""
        self.links.ensure(uuid, nfs_socket_path(self.metadata_dir / f"{uuid}.sock", uuid))

    def plug(self, uuid: str, share: GuestShare) -> None:
        self.server.ensure_running()
        self.link(uuid)
        self.server.set_export(uuid, share.tag, share.host_path, self.links.address(uuid),
                               share.read_only)

    def unplug(self, uuid: str, tag: str) -> None:
        self.server.remove_export(uuid, tag)

    def holds(self, uuid: str) -> bool:
        """Anything of the guest's here: an export, or its link."""
        return self.links.has(uuid) or any(e.server == uuid for e in self.server.exports())

    def has(self, uuid: str, tag: str) -> bool:
        return any(e.server == uuid and e.tag == tag for e in self.server.exports())

    def devices(self, uuid: str) -> tuple[dict[str, Path], frozenset[str]]:
        """(tag -> host mount, tags exported read-write) of the guest's live exports."""
        if self.server.pid() is None:
            return {}, frozenset()
        mine = [e for e in self.server.exports() if e.server == uuid]
        return ({e.tag: Path(e.path) for e in mine},
                frozenset(e.tag for e in mine if not e.read_only))

    def forget(self, uuid: str) -> None:
        """The guest is gone: its exports and its link go."""
        self.server.remove_export(uuid)
        self.links.remove(uuid)

    def tidy(self, running: set[str]) -> None:
        """Running guests keep (or get back, after an agent restart) their links; the exports
        and links of guests no longer running go."""
        exported = {e.server for e in self.server.exports()}
        for uuid in (exported | self.links.known()) - running:
            self.forget(uuid)
        for uuid in running & (exported | self.links.known()):
            self.link(uuid)
