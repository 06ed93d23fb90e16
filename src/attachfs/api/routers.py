"""Every router the app serves, in one list (new API areas add themselves here)."""

from fastapi import APIRouter

from attachfs.api import (
    catalog,
    filesystems,
    instance_actions,
    server_shares,
    servers,
    share_api,
)

ROUTERS: list[APIRouter] = [
    catalog.router,
    servers.router,
    server_shares.router,
    filesystems.router,
    instance_actions.router,
    share_api.router,  # the shared-file-system API for the built-in shares, at /share
]
