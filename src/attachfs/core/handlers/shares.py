"""Built-in share handlers, shared by /os-filesystem and the emulated share service: create
(filesystem first, then the row; nothing half-done on any refusal) and delete."""

from __future__ import annotations

import uuid as uuidlib

from attachfs.core.commands import CreateShare, DeleteShare, ShareRef
from attachfs.core.context import RequestContext
from attachfs.core.handlers.common import new_attachment, touch
from attachfs.core.model import ShareScope, share_visible
from attachfs.core.ports import BuiltinShareRecord, Env, Repositories, UnitOfWork
from attachfs.errors import Conflict, Duplicate, Forbidden, NotFound

RULE = "attachfs:os-filesystem:%s"


def policy_target(share: BuiltinShareRecord, ctx: RequestContext) -> str:
    """The project a read is checked against: a global share is everyone's to read."""
    return ctx.project_id if share.scope == ShareScope.GLOBAL else share.project_id


def create_share(cmd: CreateShare, uow: UnitOfWork, env: Env) -> BuiltinShareRecord:
    ctx = cmd.ctx
    if cmd.project_id != ctx.project_id and not ctx.is_admin:
        raise Forbidden("Only an admin may create a filesystem for another project")
    env.policy.authorize(RULE % "create", ctx, cmd.project_id)
    if cmd.scope == ShareScope.GLOBAL:
        env.policy.authorize(RULE % "global", ctx, cmd.project_id)
    share_id = str(uuidlib.uuid4())
    env.builtin.create_dir(share_id, cmd.size_gib)
    try:
        with uow.write() as repos:
            # Only the namespace the share goes to: another project's names stay unseen.
            if repos.shares.name_taken(cmd.name, cmd.scope == ShareScope.GLOBAL,
                                       cmd.project_id):
                raise Conflict(cmd.taken_message)
            share = repos.shares.add(
                uuid=share_id, name=cmd.name or share_id, project_id=cmd.project_id,
                user_id=ctx.user_id, size_gib=cmd.size_gib, scope=cmd.scope,
                status="available", mount_point=cmd.mount_point, protocol=cmd.protocol)
            repos.flush()
            if cmd.scope == ShareScope.PROJECT:
                _attach_to_project_servers(repos, env, ctx, share)
                repos.ring(None)  # attached to the project's servers (on any host)
    except Duplicate as exc:  # a concurrent create of the same name won the race
        env.builtin.delete_dir(share_id)
        raise Conflict(cmd.taken_message) from exc
    except BaseException:
        env.builtin.delete_dir(share_id)  # nothing half-done: the filesystem goes too
        raise
    return share


def _attach_to_project_servers(repos: Repositories, env: Env, ctx: RequestContext,
                               share: BuiltinShareRecord) -> None:
    """A new project-scope share reaches every server of the project (seed 003)."""
    info = env.builtin.info(share)
    for server in repos.servers.of_project(share.project_id):
        new_attachment(repos, server.uuid, info, share.uuid, share.mount_point, ctx)
        touch(repos, server.uuid)


def find_share(repos: Repositories, ctx: RequestContext, ref: ShareRef) -> BuiltinShareRecord:
    """The share `ref` names, if `ctx` may see it (else the same 404 as a missing one)."""
    if ref.id is not None:
        share = repos.shares.get(ref.id)
    else:
        project = ref.project if ctx.is_admin else None
        share = repos.shares.in_project(ref.name or "", project or ctx.project_id)
        if share is None and project is None:
            share = repos.shares.global_named(ref.name or "")
    if share is None or not share_visible(share, ctx):
        raise NotFound(f"{ref.label} could not be found.")
    return share


def delete_share(cmd: DeleteShare, uow: UnitOfWork, env: Env) -> None:
    """409 while any server has it or a host holds a locked access rule."""
    with uow.write() as repos:
        share = find_share(repos, cmd.ctx, cmd.ref)
        env.policy.authorize(RULE % "delete", cmd.ctx, share.project_id)
        attached = repos.attachments.servers_of_share(share.uuid, None)
        locked = repos.shares.locked_by_host(share.uuid)
        if attached or locked:
            raise Conflict(f"{cmd.ref.label} is attached"
                           + (f" to server {attached[0][0]}" if attached
                              else f" on host {locked}") + "; detach it first")
        repos.shares.delete(share)
    env.builtin.delete_dir(share.uuid)  # after the commit: a refused delete keeps the data
