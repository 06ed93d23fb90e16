"""The static provider: NFS exports the operator declares in the configuration
([[static_shares]]: id, name, export, size, project, access level), for clouds with an NFS
server and no share service.

There is no rule service behind such an export: the operator's own export configuration says
which hosts may mount it (an NFS-Ganesha or kernel `exports` client list), so granting and
revoking a host are no-ops that are always in effect, and the declared access level is the most
an attachment gets: a read-write attachment of a read-only export is refused with a message
that says so, before anything is mounted.
"""

from __future__ import annotations

from collections.abc import Iterable

from attachfs.config import StaticShare
from attachfs.core.rules import ShareProtocol
from attachfs.errors import BadRequest, NotFound, PermanentError
from attachfs.storage.base import HostCredentials, RequestContext, ShareInfo
from attachfs.storage.nfs import parse_export


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
                parse_export(share.export)
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
        if share is None or not (context.is_admin or not share.project_id
                                 or share.project_id == context.project_id):
            raise NotFound(f"Share {share_id} could not be found.")
        return ShareInfo(id=share.id.lower(), name=share.name, status="available",
                         protocol=ShareProtocol.NFS, export_locations=(share.export,),
                         project_id=share.project_id, size_gib=share.size_gib,
                         scope="project" if share.project_id else "global",
                         mount_point=share.mount_point or None)

    def grant_access(self, share_id: str, host: str, access_level: str, reason: str,
                     requester: RequestContext) -> bool:
        share = self._share(share_id)
        if access_level == "rw" and share.access_level == "ro":
            raise PermanentError(f"share {share.name} ({share_id}) is exported read-only: "
                                 "attach it read-only")
        return True  # the export's client list is the operator's: nothing to add

    def revoke_access(self, share_id: str, host: str, requester: RequestContext) -> bool:
        return True

    def access_of(self, share_id: str, host: str) -> str | None:
        share = self.shares.get(share_id.lower())
        return None if share is None else share.access_level

    def host_credentials(self, share_id: str, host: str) -> HostCredentials | None:
        return None  # NFS with AUTH_SYS: the export trusts the host's address
