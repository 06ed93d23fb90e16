"""Who is calling. Strategy `noauth` (the embedded default):

    X-Auth-Token: user:project[:role,role]   e.g. "alice:p1", "bob:p1:reader", "admin:admin"

Any other token (the openstack CLI sends "notused" with auth_type none) maps to the configured
default user and project. User `admin` always holds the admin role; everyone else holds
`member` and `reader` unless roles are given in the token.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from attachfs.config import ApiConfig, Config
from attachfs.core.context import RequestContext


class Authenticator(Protocol):
    # Whether authenticate may block (a token validation over the network): then the app
    # calls it in a worker thread, else inline.
    blocks: bool

    def authenticate(self, headers: Mapping[str, str], request_id: str) -> RequestContext:
        """Who is calling; raise errors.Unauthorized (401) when that cannot be established.
        May block only where `blocks` says so."""


class NoAuth:
    blocks = False  # parses the token, nothing more

    def __init__(self, api: ApiConfig) -> None:
        self.api = api

    def authenticate(self, headers: Mapping[str, str], request_id: str) -> RequestContext:
        return noauth_context(headers.get("x-auth-token"), self.api, request_id)


def make_authenticator(config: Config) -> Authenticator:
    if config.api.auth_strategy == "keystone":
        from attachfs.api.keystone import KeystoneAuthenticator  # only where it is used

        return KeystoneAuthenticator(config)
    return NoAuth(config.api)


def noauth_context(token: str | None, api: ApiConfig, request_id: str) -> RequestContext:
    parts = (token or "").split(":")
    if len(parts) in (2, 3) and all(parts[:2]):
        user, project = parts[0], parts[1]
        roles = tuple(r for r in parts[2].split(",") if r) if len(parts) == 3 else ()
    else:
        user, project, roles = api.default_user, api.default_project, ()
    if not roles:
        roles = ("admin", "member", "reader") if user == "admin" else ("member", "reader")
    elif user == "admin" and "admin" not in roles:
        roles = ("admin", *roles)
    # No token is passed on: under noauth there is nothing a share service could verify.
    return RequestContext(user_id=user, project_id=project, roles=roles, auth_token=None,
                          request_id=request_id)
