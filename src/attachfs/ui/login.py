"""Which login the console shows, and the Keystone login it cannot do by itself."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Depends, Request
from keystoneauth1 import exceptions as ks_exc
from keystoneauth1 import session as ks_session
from keystoneauth1.identity import v3

from attachfs.api import deps
from attachfs.api.routing import JsonRoute
from attachfs.errors import BadRequest, ServiceUnavailable, Unauthorized

log = logging.getLogger(__name__)
router = APIRouter(prefix="/ui", route_class=JsonRoute)
KEYSTONE_TIMEOUT = 10.0


@router.get("/auth")
def auth_info(request: Request) -> dict[str, Any]:
    """noauth: the page makes a token of a user and project name (docs/api.md); keystone: it
    logs in through POST /ui/login."""
    return {"strategy": deps.api(request).config.api.auth_strategy}


@router.post("/login")
def login(request: Request, body: Any = Depends(deps.json_body)) -> dict[str, Any]:
    config = deps.api(request).config
    if config.api.auth_strategy != "keystone":
        raise BadRequest("This cloud does not use Keystone: log in with a user and project name")
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object")
    fields: dict[str, str] = {}
    for name in ("username", "password", "project"):
        value = body.get(name)
        if not isinstance(value, str) or not value:
            raise BadRequest("username, password and project are required")
        fields[name] = value
    domain = body.get("domain") or "Default"
    if not isinstance(domain, str):
        raise BadRequest("domain must be a string")
    ks = config.keystone_authtoken
    auth = v3.Password(auth_url=ks.www_authenticate_uri or ks.auth_url,
                       username=fields["username"], password=fields["password"],
                       project_name=fields["project"], user_domain_name=domain,
                       project_domain_name=domain)
    session = ks_session.Session(auth=auth, timeout=KEYSTONE_TIMEOUT)
    try:
        access = auth.get_access(session)
    except ks_exc.Unauthorized as exc:
        raise Unauthorized("The user name, password or project is not right") from exc
    except (ks_exc.ConnectionError, ks_exc.DiscoveryFailure) as exc:
        log.warning("console login: Keystone unreachable: %s", exc)
        raise ServiceUnavailable("The identity service (Keystone) cannot be reached") from exc
    except ks_exc.ClientException as exc:
        raise Unauthorized(f"Keystone refused the login: {exc}") from exc
    return {"token": access.auth_token, "user": access.username, "user_id": access.user_id,
            "project": access.project_name, "project_id": access.project_id,
            "roles": sorted(access.role_names or ()),
            "expires": access.expires.isoformat() if access.expires else None}
