"""Server handlers: create, start, stop, reboot, delete. Each records desired state (and the
audit trail) in one write; the agent makes it so."""

from __future__ import annotations

import uuid as uuidlib

from attachfs.core.commands import (
    CreateServer,
    DeleteServer,
    RebootServer,
    StartServer,
    StopServer,
)
from attachfs.core.context import RequestContext
from attachfs.core.flavors import find_flavor
from attachfs.core.handlers.common import new_attachment, record_action, touch, visible_server
from attachfs.core.model import PowerIntent, TaskState, VmState
from attachfs.core.ports import Env, ServerRecord, UnitOfWork
from attachfs.errors import BadRequest, Conflict

RULE = "os_compute_api:servers:%s"



def create_server(cmd: CreateServer, uow: UnitOfWork, env: Env) -> ServerRecord:
    ctx = cmd.ctx
    env.policy.authorize(RULE % "create", ctx, ctx.project_id)
    flavor = find_flavor(cmd.flavor_ref)
    image_id = env.images.image_id(cmd.image_ref)
    if any(env.images.image_id(ref) != image_id for ref in cmd.boot_image_refs):
        raise BadRequest("block_device_mapping_v2 must boot the image imageRef names")
    with uow.write() as repos:
        server = repos.servers.add(
            uuid=str(uuidlib.uuid4()), name=cmd.name, project_id=ctx.project_id,
            user_id=ctx.user_id, host=env.host, flavor_id=flavor.id, image_id=image_id,
            vcpus=flavor.vcpus, memory_mib=flavor.ram_mib, vm_state=VmState.BUILDING,
            task_state=TaskState.SPAWNING, power_intent=PowerIntent.ON,
            user_data=cmd.user_data, meta=cmd.metadata, generation=1,
            config_drive=cmd.config_drive, observed_generation=0)
        repos.flush()
        for row in repos.shares.project_scoped(ctx.project_id):
            share = env.builtin.info(row)  # seed 003: project shares reach every new server
            new_attachment(repos, server, share, share.id, share.mount_point, ctx)
        record_action(repos, server.uuid, "create", ctx)
    env.wake_agent()
    return server


def _require_idle(server: ServerRecord, allowed: tuple[str, ...], verb: str) -> None:
    if server.vm_state not in allowed or server.task_state is not None:
        raise Conflict(
            f"Cannot '{verb}' instance {server.uuid} while it is in vm_state {server.vm_state}"
            + (f" and task_state {server.task_state}" if server.task_state else "")
        )


def _power_change(uow: UnitOfWork, env: Env, ctx: RequestContext, server_id: str,
                  verb: str, allowed: tuple[str, ...], task: str, intent: str) -> None:
    with uow.write() as repos:
        server = visible_server(repos, server_id, ctx, lock=True)
        env.policy.authorize(RULE % verb, ctx, server.project_id)
        _require_idle(server, allowed, verb)
        server.task_state, server.power_intent = task, intent
        touch(server)
        record_action(repos, server.uuid, verb, ctx)
    env.wake_agent()


def start_server(cmd: StartServer, uow: UnitOfWork, env: Env) -> None:
    _power_change(uow, env, cmd.ctx, cmd.server_id, "start", (VmState.STOPPED,),
                  TaskState.POWERING_ON, PowerIntent.ON)


def stop_server(cmd: StopServer, uow: UnitOfWork, env: Env) -> None:
    _power_change(uow, env, cmd.ctx, cmd.server_id, "stop", (VmState.ACTIVE, VmState.ERROR),
                  TaskState.POWERING_OFF, PowerIntent.OFF)


def reboot_server(cmd: RebootServer, uow: UnitOfWork, env: Env) -> None:
    allowed = (VmState.ACTIVE,) + ((VmState.ERROR,) if cmd.hard else ())
    _power_change(uow, env, cmd.ctx, cmd.server_id, "reboot", allowed,
                  TaskState.REBOOTING_HARD if cmd.hard else TaskState.REBOOTING, PowerIntent.ON)


def delete_server(cmd: DeleteServer, uow: UnitOfWork, env: Env) -> None:
    with uow.write() as repos:
        server = visible_server(repos, cmd.server_id, cmd.ctx, lock=True)
        env.policy.authorize(RULE % "delete", cmd.ctx, server.project_id)
        if server.task_state != TaskState.DELETING:  # a repeated DELETE changes nothing
            server.task_state, server.power_intent = TaskState.DELETING, PowerIntent.OFF
            touch(server)
            record_action(repos, server.uuid, "delete", cmd.ctx)
    env.wake_agent()
