"""Every router the app serves, in one list (new API areas add themselves here)."""

from fastapi import APIRouter

from attachfs import shareservice
from attachfs.api import (
    catalog,
    events,
    filesystems,
    health,
    hosts,
    instance_actions,
    migrations,
    server_shares,
    servers,
    share_overview,
)

ROUTERS: list[APIRouter] = [
    catalog.router,
    servers.router,
    server_shares.router,
    filesystems.router,
    instance_actions.router,
    hosts.router,  # os-services and os-hypervisors: the agents' hosts (admin)
    migrations.router,  # os-migrations: moves between hosts (admin)
    *shareservice.ROUTERS,  # the shared-file-system API for the built-in shares, at /share
    health.router,  # the agent's own view of its health (admin, read-only)
    events.router,  # what changes, as server-sent events (the web console)
    share_overview.router,  # every share the caller sees, from every provider (the console)
]
