"""Which provider answers for a share: the built-in one for its own shares, the static one for
the exports the operator declared, otherwise the configured external one (Manila), so all can
be used side by side."""

from __future__ import annotations

from collections.abc import Collection

from attachfs.config import Config
from attachfs.core.ports import SharesSeen
from attachfs.errors import BackendError
from attachfs.storage.base import HostCredentials, RequestContext, ShareInfo, ShareProvider
from attachfs.storage.local import LocalShareProvider
from attachfs.storage.static import StaticShareProvider


class ProviderChain:
    name = "chain"

    def __init__(self, builtin: LocalShareProvider, external: ShareProvider | None,
                 static: StaticShareProvider | None = None) -> None:
        self.builtin, self.external = builtin, external
        self.static = static or StaticShareProvider(())

    def _for(self, share_id: str) -> ShareProvider:
        if self.static.owns(share_id):
            return self.static
        if self.external is None or self.builtin.owns(share_id):
            return self.builtin
        return self.external

    def get_share(self, share_id: str, context: RequestContext) -> ShareInfo:
        return self._for(share_id).get_share(share_id, context)

    def _providers(self) -> list[ShareProvider]:
        return [p for p in (self.builtin, self.static, self.external) if p is not None]

    def list_shares(self, context: RequestContext) -> list[ShareInfo]:
        return [share for provider in self._providers()
                for share in provider.list_shares(context)]

    def visible_shares(self, context: RequestContext) -> SharesSeen:
        """Every provider's shares that `context` may see, each with its provider's name; a
        provider that cannot answer is named in `unavailable` and the others still count."""
        seen = SharesSeen()
        for provider in self._providers():
            try:
                seen.shares += [(provider.name, share) for share in provider.list_shares(context)]
            except BackendError as exc:
                seen.unavailable.append(f"{provider.name}: {exc.message}")
        return seen

    def fences(self, share_id: str) -> bool:
        """Only the share service's rules cut a host off (Manila's CephFS driver evicts the
        host's sessions when its rule goes; its NFS exports drop the host's address); a
        built-in share is a directory a host bind-mounts, a static one the operator's."""
        return self._for(share_id) is self.external and self.external is not None

    def grant_access(self, share_id: str, host: str, access_level: str, reason: str,
                     requester: RequestContext) -> bool:
        return self._for(share_id).grant_access(share_id, host, access_level, reason, requester)

    def revoke_access(self, share_id: str, host: str, requester: RequestContext) -> bool:
        return self._for(share_id).revoke_access(share_id, host, requester)

    def access_levels(self, share_ids: Collection[str], host: str) -> dict[str, str]:
        """Each provider asked once, for its own shares."""
        static = {s for s in share_ids if self.static.owns(s)}
        rest = set(share_ids) - static
        builtin = rest if self.external is None else self.builtin.owned(rest)
        levels = self.static.access_levels(static, host) if static else {}
        if builtin:
            levels |= self.builtin.access_levels(builtin, host)
        if self.external is not None and rest - builtin:
            levels |= self.external.access_levels(rest - builtin, host)
        return levels

    def host_credentials(self, share_id: str, host: str) -> HostCredentials | None:
        return self._for(share_id).host_credentials(share_id, host)


def make_provider(config: Config, builtin: LocalShareProvider) -> ProviderChain:
    external: ShareProvider | None = None
    if config.storage.provider == "manila":
        from attachfs.storage.manila import ManilaShareProvider  # openstacksdk only if used

        external = ManilaShareProvider(config, builtin.db)
    return ProviderChain(builtin, external, StaticShareProvider(config.static_shares))
