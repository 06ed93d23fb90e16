"""What every request handler of the app shares: config, database, providers, policy, auth,
and from them the core's unit of work and collaborators (`Env`).

Its own module (not app.py) so that request helpers (deps.py) and routers can name it without
importing the app that includes them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

from attachfs.api.adapters import BuiltinShares, HostImages
from attachfs.api.auth import Authenticator
from attachfs.api.policy import PolicyEnforcer
from attachfs.config import Config
from attachfs.core.guest_mount import GUEST_NFS_ADDRESS, GUEST_NFS_PORT, NfsLink
from attachfs.core.ports import Env
from attachfs.db.engine import Database
from attachfs.db.uow import SqlUnitOfWork
from attachfs.notify.hub import EventHub
from attachfs.storage.local import LocalShareProvider
from attachfs.storage.registry import ProviderChain


@dataclass
class ApiState:
    config: Config
    db: Database
    provider: ProviderChain  # where attached shares come from (built-in, static or Manila)
    builtin: LocalShareProvider  # the built-in shares of /os-filesystem
    policy: PolicyEnforcer
    # this process's agent (`attachfs serve`), called once a change for `host` committed;
    # agents in other processes hear PostgreSQL's NOTIFY (db/uow.py)
    wake_agent: Callable[[str | None], None]
    authenticator: Authenticator
    # this process's notifications, for the console's event stream (api/events.py)
    hub: EventHub = field(default_factory=EventHub)

    @cached_property
    def uow(self) -> SqlUnitOfWork:
        return SqlUnitOfWork(self.db, self.wake_agent)

    @cached_property
    def images(self) -> HostImages:
        return HostImages(self.config.images_dir)

    @cached_property
    def env(self) -> Env:
        api, agent = self.config.api, self.config.agent
        return Env(policy=self.policy, shares=self.provider, builtin=BuiltinShares(self.builtin),
                   images=self.images, host=agent.host,
                   hot_plug=api.hot_plug, max_attachments_per_server=api.max_attachments_per_server,
                   transports=frozenset(agent.share_transports),
                   default_transport=agent.share_transport,
                   containers=self.config.containers.enabled,
                   nfs_link=NfsLink(GUEST_NFS_ADDRESS, GUEST_NFS_PORT),
                   container_layout=self.config.containers.mount_layout,
                   down_after=agent.down_after, stall_after=agent.stall_after)
