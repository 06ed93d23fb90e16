"""Compute hosts (os-services, os-hypervisors): who may look, and an admin's disable, enable
and force-down. The agents register and heartbeat them (agent/hosts.py)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from attachfs.core.commands import UpdateHost
from attachfs.core.context import RequestContext
from attachfs.core.hosts import host_state
from attachfs.core.ports import Env, HostRecord, UnitOfWork
from attachfs.errors import NotFound

SERVICES = "os_compute_api:os-services:%s"
HYPERVISORS = "os_compute_api:os-hypervisors:%s"


@dataclass(frozen=True)
class HostView:
    host: HostRecord
    state: str  # up | down
    servers: int
    vcpus_used: int
    memory_mib_used: int


def _view(host: HostRecord, usage: dict[str, tuple[int, int, int]], now: dt.datetime,
          env: Env) -> HostView:
    n, cpus, mem = usage.get(host.name, (0, 0, 0))
    return HostView(host, host_state(host.heartbeat_at, host.forced_down, now, env.down_after),
                    n, cpus, mem)


def list_hosts(uow: UnitOfWork, env: Env, ctx: RequestContext, rule: str) -> list[HostView]:
    env.policy.authorize(rule, ctx, ctx.project_id)
    with uow.read() as repos:
        usage, now = repos.hosts.usage(), repos.hosts.now()
        return [_view(h, usage, now, env) for h in repos.hosts.all()]


def show_host(uow: UnitOfWork, env: Env, ctx: RequestContext, rule: str, ref: str,
              what: str) -> HostView:
    env.policy.authorize(rule, ctx, ctx.project_id)
    with uow.read() as repos:
        host = repos.hosts.get(ref)
        if host is None:
            raise NotFound(f"{what} with ID {ref} could not be found.")
        return _view(host, repos.hosts.usage(), repos.hosts.now(), env)


def update_host(cmd: UpdateHost, uow: UnitOfWork, env: Env) -> HostView:
    """Disable (with a reason), enable, or force down / up. A disabled host keeps its servers;
    placement (core/scheduler.py) sends no new ones there."""
    env.policy.authorize(SERVICES % "update", cmd.ctx, cmd.ctx.project_id)
    with uow.write() as repos:
        host = repos.hosts.get(cmd.ref, lock=True)
        if host is None:
            raise NotFound(cmd.not_found)
        if cmd.disabled is not None:
            host.disabled = cmd.disabled
            host.disabled_reason = cmd.reason if cmd.disabled else None
        if cmd.forced_down is not None:
            host.forced_down = cmd.forced_down
        host.updated_at = repos.hosts.now()
        return _view(host, repos.hosts.usage(), repos.hosts.now(), env)
