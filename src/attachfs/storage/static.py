"""The static provider: NFS exports and CephFS paths the operator declares in the configuration
([[static_shares]]: id, name, protocol, export, size, project, access level; for CephFS the
cephx user and its keyring file), for clouds with storage and no share service.

There is no rule service behind such a share: the operator's own configuration says which hosts
may mount it (an NFS export's client list, a cephx user's caps), so granting and revoking a host
are no-ops that are always in effect, and the declared access level is the most an attachment
gets: a read-write attachment of a read-only share is refused with a message that says so,
before anything is mounted. A CephFS share's key is read from its keyring file when a host
mounts (never copied into attachfs's database).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from pathlib import Path

from attachfs.config import StaticShare
from attachfs.core.rules import ShareProtocol
from attachfs.errors import BadRequest, NotFound, PermanentError
from attachfs.storage import cephfs, nfs
from attachfs.storage.base import HostCredentials, RequestContext, ShareInfo

_KEY_LINE = re.compile(r"^\s*key\s*=\s*(\S+)\s*$")


class StaticShareProvider:
    name = "static"

    def __init__(self, shares: Iterable[StaticShare]) -> None:
        self.shares: dict[str, StaticShare] = {}
        for share in shares:
            key = share.id.lower()
            if key in self.shares:
                raise BadRequest(f"invalid configuration: static share id {share.id} is declared "
                                 "twice")
            try:
                _check(share)
            except PermanentError as exc:
                raise BadRequest(f"invalid configuration: static share {share.name}: {exc}") from exc
            self.shares[key] = share

    def owns(self, share_id: str) -> bool:
        return share_id.lower() in self.shares

    def _share(self, share_id: str) -> StaticShare:
        share = self.shares.get(share_id.lower())
        if share is None:
            raise PermanentError(f"static share {share_id} is no longer in the configuration")
        return share

    # ---- ShareProvider ---------------------------------------------------------------------
    def get_share(self, share_id: str, context: RequestContext) -> ShareInfo:
        share = self.shares.get(share_id.lower())
        if share is None or not _visible(share, context):
            raise NotFound(f"Share {share_id} could not be found.")
        return _info(share)

    def list_shares(self, context: RequestContext) -> list[ShareInfo]:
        return [_info(share) for share in self.shares.values() if _visible(share, context)]

    def grant_access(self, share_id: str, host: str, access_level: str, reason: str,
                     requester: RequestContext) -> bool:
        share = self._share(share_id)
        if access_level == "rw" and share.access_level == "ro":
            raise PermanentError(f"share {share.name} ({share_id}) is exported read-only: "
                                 "attach it read-only")
        return True  # the export's client list is the operator's: nothing to add

    def revoke_access(self, share_id: str, host: str, requester: RequestContext) -> bool:
        return True

    def access_levels(self, share_ids: Collection[str], host: str) -> dict[str, str]:
        return {share_id: share.access_level for share_id in share_ids
                if (share := self.shares.get(share_id.lower())) is not None}

    def host_credentials(self, share_id: str, host: str) -> HostCredentials | None:
        share = self._share(share_id)
        if share.protocol != ShareProtocol.CEPHFS:
            return None  # NFS with AUTH_SYS: the export trusts the host's address
        return HostCredentials(share.cephx_id, keyring_key(Path(share.cephx_keyring),
                                                           share.cephx_id))


def _check(share: StaticShare) -> None:
    if share.protocol == ShareProtocol.NFS:
        nfs.parse_export(share.export)
        return
    cephfs.parse_export(share.export)
    if not share.cephx_id or not share.cephx_keyring:
        raise PermanentError("a CEPHFS share needs cephx_id and cephx_keyring")


def keyring_key(path: Path, auth_id: str) -> str:
    """The key of client.<auth_id> in a Ceph keyring file."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise PermanentError(f"cannot read the keyring of client.{auth_id}: {exc}") from exc
    section = ""
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            section = stripped[1:-1]
        elif section == f"client.{auth_id}" and (m := _KEY_LINE.match(line)):
            return m.group(1)
    raise PermanentError(f"no key for client.{auth_id} in {path}")


def _visible(share: StaticShare, context: RequestContext) -> bool:
    return context.is_admin or not share.project_id or share.project_id == context.project_id


def _info(share: StaticShare) -> ShareInfo:
    return ShareInfo(id=share.id.lower(), name=share.name, status="available",
                     protocol=ShareProtocol(share.protocol), export_locations=(share.export,),
                     project_id=share.project_id, size_gib=share.size_gib,
                     scope="project" if share.project_id else "global",
                     mount_point=share.mount_point or None)
