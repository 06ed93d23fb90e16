"""Steps several handlers share: finding a visible server, the audit trail, new attachments."""

from __future__ import annotations

import uuid as uuidlib
from typing import Protocol, TypeVar

from attachfs.core.context import RequestContext, ShareInfo
from attachfs.core.model import AttachmentStatus
from attachfs.core.ports import AttachmentRecord, Repositories, ServerRecord, ServerState
from attachfs.errors import NotFound

# What a missing (or another project's) server is called: the servers API says "could not be
# found"; the share attachment API answers from the cell mapping it looks up first.
NOT_FOUND = "Instance {} could not be found."
NO_CELL = "Instance {} has no mapping to a cell."



class _Owned(Protocol):
    @property
    def project_id(self) -> str: ...


S = TypeVar("S", bound=_Owned)


def visible_server(repos: Repositories, server_uuid: str, ctx: RequestContext, *,
                   lock: bool = False, missing: str = NOT_FOUND) -> ServerRecord:
    """The server if it exists and `ctx` may see it (other projects get the same 404: the
    compute service answers 403 there, which tells them the server exists)."""
    return _visible(repos.servers.get(server_uuid, lock=lock), server_uuid, ctx, missing)


def visible_server_state(repos: Repositories, server_uuid: str, ctx: RequestContext, *,
                         lock: bool = False, missing: str = NOT_FOUND) -> ServerState:
    """visible_server's plain row, for a request that changes the server only by `touch`."""
    return _visible(repos.servers.state(server_uuid, lock=lock), server_uuid, ctx, missing)


def _visible(server: S | None, server_uuid: str, ctx: RequestContext, missing: str) -> S:
    if server is None or (not ctx.is_admin and server.project_id != ctx.project_id):
        raise NotFound(missing.format(server_uuid))
    return server


def record_action(repos: Repositories, server_uuid: str, action: str, ctx: RequestContext,
                  message: str | None = None, finished: bool = False) -> None:
    """The audit trail (os-instance-actions); `finished`: done in this request (nothing for
    an agent to do), else the agent that carries it out finishes it."""
    done = {"result": "Success", "finish_time": repos.hosts.now()} if finished else {}
    repos.actions.record(
        request_id=ctx.request_id or f"req-{uuidlib.uuid4()}", instance_uuid=server_uuid,
        action=action, user_id=ctx.user_id, project_id=ctx.project_id, message=message,
        **done)


def touch(repos: Repositories, server_uuid: str) -> None:
    """Desired state changed: the agent sees a generation it has not converged yet."""
    repos.servers.touch(server_uuid)


def new_attachment(repos: Repositories, server_uuid: str, share: ShareInfo, tag: str,
                   mount_point: str | None, ctx: RequestContext,
                   read_only: bool = False, transport: str = "virtiofs") -> AttachmentRecord:
    return repos.attachments.add(
        uuid=str(uuidlib.uuid4()), instance_uuid=server_uuid, share_id=share.id,
        status=AttachmentStatus.ATTACHING, tag=tag, export_location=share.preferred_export,
        share_proto=share.protocol, mount_point=mount_point, read_only=read_only,
        transport=transport,
        user_id=ctx.user_id, project_id=ctx.project_id, request_id=ctx.request_id,
        requester_token=ctx.auth_token)
