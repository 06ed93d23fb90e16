"""Read handlers: what the API shows, with the same visibility and policy rules as the writes.
Each opens one read transaction and returns records (views shape them at the edge)."""

from __future__ import annotations

from dataclasses import dataclass

from attachfs.core.commands import ShareRef
from attachfs.core.context import RequestContext, ShareInfo
from attachfs.core.handlers import attachments, servers, shares
from attachfs.core.handlers.common import NO_CELL, visible_server, visible_server_state
from attachfs.core.hosts import IN_FLIGHT, explain_stall, host_status
from attachfs.core.model import is_uuid
from attachfs.core.ports import (
    ActionRecord,
    AttachedShare,
    AttachmentRecord,
    BuiltinShareRecord,
    Env,
    MigrationRecord,
    Repositories,
    ServerRecord,
    UnitOfWork,
)
from attachfs.core.rules import BUILTIN_PROTOCOL
from attachfs.core.validation import name_filter
from attachfs.errors import BadRequest, NotFound

ACTIONS_RULE = "os_compute_api:os-instance-actions:%s"


# ---- attachments -----------------------------------------------------------------------------
def list_attachments(uow: UnitOfWork, env: Env, ctx: RequestContext,
                     server_id: str) -> list[AttachedShare]:
    with uow.read() as repos:
        server = visible_server_state(repos, server_id, ctx, missing=NO_CELL)
        env.policy.authorize(attachments.RULE % "index", ctx, server.project_id)
        return repos.attachments.of_servers([server.uuid])


def show_attachment(uow: UnitOfWork, env: Env, ctx: RequestContext, server_id: str,
                    share_id: str) -> AttachmentRecord:
    """An id that is not a UUID is simply not attached (404, as the compute service says)."""
    with uow.read() as repos:
        server = visible_server_state(repos, server_id, ctx, missing=NO_CELL)
        env.policy.authorize(attachments.RULE % "show", ctx, server.project_id)
        mapping = repos.attachments.get(server.uuid, share_id) if is_uuid(share_id) else None
        if mapping is None:
            raise NotFound(f"Share {share_id} could not be found.")
        return mapping


# ---- shares, wherever they come from ----------------------------------------------------------
@dataclass(frozen=True)
class ShareOverview:
    """A share the caller may see, its provider, the caller's servers it is attached to (with
    the attachment's status) and, for a built-in share, what its directory holds."""

    provider: str
    share: ShareInfo
    attached_to: list[tuple[str, str]]
    used_bytes: int | None


def shares_overview(uow: UnitOfWork, env: Env,
                    ctx: RequestContext) -> tuple[list[ShareOverview], list[str]]:
    """Every provider's shares the caller sees, and the providers that could not answer."""
    seen = env.shares.visible_shares(ctx)  # outside any transaction: a provider may be remote
    project = None if ctx.is_admin else ctx.project_id
    with uow.read() as repos:
        overview = [ShareOverview(provider, share,
                                  repos.attachments.servers_of_share(share.id, project),
                                  env.builtin.usage_bytes(share.id)
                                  if share.protocol == BUILTIN_PROTOCOL else None)
                    for provider, share in seen.shares]
    return overview, seen.unavailable


# ---- servers ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ServerPage:
    """`GET /servers[/detail]`: newest first; `name` a regular expression searched in the name
    (RE2: linear time), `marker` the last id of the previous page, `limit` the page size."""

    name: str | None = None
    all_tenants: bool = False
    marker: str | None = None
    limit: int = 1000


def list_servers(uow: UnitOfWork, env: Env, ctx: RequestContext, page: ServerPage,
                 with_attachments: bool = False, brief: bool = False) -> ServersSeen:
    """`brief`: ids and names only (GET /servers): no host is read."""
    env.policy.authorize(servers.RULE % "index", ctx, ctx.project_id)
    matches = name_filter(page.name) if page.name is not None else None
    with uow.read() as repos:
        rows = repos.servers.newest_first(
            None if (ctx.is_admin and page.all_tenants) else ctx.project_id)
        if matches is not None:
            rows = [sv for sv in rows if matches(sv.name)]
        if page.marker is not None:
            ids = [sv.uuid for sv in rows]
            if page.marker not in ids:
                raise BadRequest(f"marker [{page.marker}] not found")
            rows = rows[ids.index(page.marker) + 1:]
        rows = rows[:page.limit]
        by_server: dict[str, list[AttachedShare]] = {}
        if with_attachments:
            for m in repos.attachments.of_servers([sv.uuid for sv in rows]):
                by_server.setdefault(m.instance_uuid, []).append(m)
        if brief:
            return ServersSeen(rows, by_server, {})
        return _with_hosts(repos, env, ctx, rows, by_server)


def show_server(uow: UnitOfWork, env: Env, ctx: RequestContext, server_id: str,
                with_attachments: bool = False) -> ServersSeen:
    with uow.read() as repos:
        server = visible_server(repos, server_id, ctx)
        env.policy.authorize(servers.RULE % "show", ctx, server.project_id)
        by_server = {server.uuid: repos.attachments.of_servers([server.uuid])
                     if with_attachments else []}
        return _with_hosts(repos, env, ctx, [server], by_server)


@dataclass(frozen=True)
class ServersSeen:
    """Servers as a request reads them: each one's attachments (an attachment stalled on a
    silent host says so) and, for an admin, its host's status."""

    servers: list[ServerRecord]
    attachments: dict[str, list[AttachedShare]]
    host_status: dict[str, str]  # by host name; empty unless the caller is an admin


def _with_hosts(repos: Repositories, env: Env, ctx: RequestContext, rows: list[ServerRecord],
                by_server: dict[str, list[AttachedShare]]) -> ServersSeen:
    """The hosts are read only when they matter: for an admin (host_status), or when some
    attachment has been in flight long enough that its host's silence may be why."""
    now = repos.hosts.now()
    in_flight = any(m.status in IN_FLIGHT and not m.fault_message
                    and (now - m.updated_at).total_seconds() >= env.stall_after
                    for ms in by_server.values() for m in ms)
    if not (ctx.is_admin or in_flight):
        return ServersSeen(rows, by_server, {})
    known = {h.name: h for h in repos.hosts.all()}
    status = {sv.host: host_status(known.get(sv.host), now, env.down_after)
              for sv in rows if sv.host}
    if in_flight:
        host_of = {sv.uuid: sv.host for sv in rows}
        by_server = {uuid: [explain_stall(m, host_of[uuid], status.get(host_of[uuid], ""), now,
                                          env.stall_after, ctx.is_admin) for m in ms]
                     for uuid, ms in by_server.items()}
    return ServersSeen(rows, by_server, status if ctx.is_admin else {})


def console_server(uow: UnitOfWork, env: Env, ctx: RequestContext, server_id: str) -> str:
    """The server whose console may be read (its uuid); the caller reads the log."""
    with uow.read() as repos:
        server = visible_server(repos, server_id, ctx)
        env.policy.authorize("os_compute_api:os-console-output", ctx, server.project_id)
        return server.uuid


# ---- audit trail -----------------------------------------------------------------------------
def list_actions(uow: UnitOfWork, env: Env, ctx: RequestContext,
                 server_id: str) -> list[ActionRecord]:
    with uow.read() as repos:
        server = repos.servers.get(server_id, include_deleted=True)  # deleted keep their trail
        if server is None or (not ctx.is_admin and server.project_id != ctx.project_id):
            raise NotFound(f"Instance {server_id} could not be found.")
        env.policy.authorize(ACTIONS_RULE % "list", ctx, server.project_id)
        return repos.actions.of_server(server.uuid)


def show_action(uow: UnitOfWork, env: Env, ctx: RequestContext, server_id: str,
                request_id: str) -> list[ActionRecord]:
    with uow.read() as repos:
        server = repos.servers.get(server_id, include_deleted=True)
        if server is None or (not ctx.is_admin and server.project_id != ctx.project_id):
            raise NotFound(f"Instance {server_id} could not be found.")
        env.policy.authorize(ACTIONS_RULE % "show", ctx, server.project_id)
        rows = repos.actions.of_request(server.uuid, request_id)
        if not rows:
            raise NotFound(f"Action for request_id {request_id} on instance {server_id} "
                           "not found")
        return rows


# ---- built-in shares -------------------------------------------------------------------------
def list_shares(uow: UnitOfWork, env: Env, ctx: RequestContext,
                order: str = "name") -> list[BuiltinShareRecord]:
    """Every built-in share `ctx` may see (its project's, the global ones; admins: all)."""
    env.policy.authorize(shares.RULE % "index", ctx, ctx.project_id)
    with uow.read() as repos:
        return [sh for sh in repos.shares.all(order) if shares.share_visible(sh, ctx)]


def show_share(uow: UnitOfWork, env: Env, ctx: RequestContext,
               ref: ShareRef) -> BuiltinShareRecord:
    with uow.read() as repos:
        share = shares.find_share(repos, ctx, ref)
    env.policy.authorize(shares.RULE % "show", ctx, shares.policy_target(share, ctx))
    return share


def share_servers(uow: UnitOfWork, env: Env, ctx: RequestContext,
                  ref: ShareRef) -> list[tuple[str, str]]:
    """(server id, attachment status) of the servers that have the share; other projects'
    servers on a global share stay private (admins see all)."""
    with uow.read() as repos:
        share = shares.find_share(repos, ctx, ref)
        env.policy.authorize(shares.RULE % "show", ctx, shares.policy_target(share, ctx))
        return repos.attachments.servers_of_share(
            share.uuid, None if ctx.is_admin else ctx.project_id)


def share_id(uow: UnitOfWork, ctx: RequestContext, ref: ShareRef) -> str:
    """The id of a share `ctx` may see (os-filesystem's connect/disconnect name it)."""
    with uow.read() as repos:
        return shares.find_share(repos, ctx, ref).uuid


MIGRATIONS_RULE = "os_compute_api:os-migrations:index"


def list_migrations(uow: UnitOfWork, env: Env, ctx: RequestContext, instance_uuid: str | None,
                    status: str | None, migration_type: str | None,
                    host: str | None) -> list[MigrationRecord]:
    """Moves of servers between hosts, newest first (admin: the compute service's default)."""
    env.policy.authorize(MIGRATIONS_RULE, ctx, ctx.project_id)
    with uow.read() as repos:
        return repos.migrations.search(instance_uuid, status, migration_type, host)
