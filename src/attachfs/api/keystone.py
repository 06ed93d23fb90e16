"""Strategy `keystone`: tokens validated by keystonemiddleware's auth_token, as the compute
service does it.

auth_token is WSGI middleware. It is built once, around a tiny WSGI app that only notes that it
was reached; every request runs it on a minimal WSGI environ holding just the token headers
(X-Auth-Token / X-Storage-Token, X-Service-Token). auth_token strips any identity headers a
caller might have forged, validates the token against Keystone (caching the result, by default
for 300 s, in memory or memcached per [keystone_authtoken]) and, when it is good, sets
X-Identity-Status, X-User-Id, X-Project-Id, X-Roles ... on that environ, which become the
RequestContext. A bad, expired or missing token never reaches the tiny app: auth_token answers
401 with `WWW-Authenticate: Keystone uri="..."`, which becomes errors.Unauthorized with that
header. Keystone unreachable: 503.

The options of [keystone_authtoken] (attachfs.toml) are handed to auth_token through a private
oslo.config object (cfg.CONF is left alone): auth_token's own options (www_authenticate_uri,
memcached_servers, service_token_roles, ...) as its "paste" overrides, and the auth plugin's
options (auth_url, username, password, ... for `auth_type`) registered and set in that object.
Empty strings count as unset. `delay_auth_decision` is forced off: attachfs always rejects.
"""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from attachfs.api.faults import status_and_name
from attachfs.config import Config
from attachfs.core.context import RequestContext
from attachfs.errors import Forbidden, ServiceUnavailable, Unauthorized

log = logging.getLogger(__name__)

GROUP = "keystone_authtoken"
# The only request headers auth_token reads (besides the identity headers it strips anyway).
TOKEN_HEADERS = ("x-auth-token", "x-storage-token", "x-service-token")
_REACHED = "attachfs.keystone.reached"
DEFAULT_MESSAGE = "The request you have made requires authentication."

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class KeystoneUnauthorized(Unauthorized):
    """401 carrying the WWW-Authenticate header auth_token asks for."""

    def __init__(self, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.headers: dict[str, str] = dict(headers or {})


class IdentityUnavailable(ServiceUnavailable):
    """Keystone could not be asked: not the caller's fault, and worth retrying."""

    @property
    def code(self) -> int:
        """The HTTP status the API answers with (decided by the edge's table, api/faults.py)."""
        return status_and_name(self)[0]


def _reached(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    environ[_REACHED] = True
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b""]


def _middleware_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """auth_token's `conf` dict: its own options as overrides, plugin options in a private
    oslo.config object (so auth_token does not warn that it does not know them)."""
    from keystoneauth1 import loading
    from keystonemiddleware import auth_token
    from oslo_config import cfg

    values = {k: v for k, v in options.items() if v is not None and v != ""}
    values["delay_auth_decision"] = False

    conf = cfg.ConfigOpts()
    conf([], project="attachfs", default_config_files=[], default_config_dirs=[])
    known: set[str] = set()
    for group, opts in auth_token.list_opts():
        if group != GROUP:
            continue
        for opt in opts:
            known.add(opt.dest)
            known.update(d.name for d in opt.deprecated_opts if d.name)

    plugin_opts: dict[str, Any] = {}
    auth_type = values.get("auth_type")
    if auth_type and not values.get("auth_section"):
        loader: Any = loading.get_plugin_loader(auth_type)
        opts = loading.get_auth_plugin_conf_options(loader)
        conf.register_opts(opts, group=GROUP)
        plugin_opts = {o.dest: o for o in opts}

    overrides: dict[str, Any] = {"oslo_config_config": conf}
    for key, value in values.items():
        if key in plugin_opts and key not in known:
            conf.set_override(key, value, group=GROUP)
        else:
            overrides[key] = value  # unknown keys: auth_token logs that it ignores them
    return overrides


class KeystoneAuthenticator:
    blocks = True  # a token not in the cache is validated by Keystone

    def __init__(self, config: Config, app: WsgiApp | None = None) -> None:
        from keystonemiddleware.auth_token import AuthProtocol

        options = config.keystone_authtoken.model_dump()
        self.www_authenticate_uri = str(options.get("www_authenticate_uri") or "")
        # Built once: it keeps the service's own session and the token cache.
        self._protocol: WsgiApp = AuthProtocol(app or _reached, _middleware_options(options))

    def authenticate(self, headers: Mapping[str, str], request_id: str) -> RequestContext:
        token = (headers.get("x-auth-token") or headers.get("x-storage-token") or "").strip()
        if not token:
            # auth_token would answer the same; no need to build a request for it.
            raise self._unauthorized([])
        environ = self._environ(headers, request_id)
        status: list[str] = []
        response_headers: list[tuple[str, str]] = []

        def start_response(st: str, hdrs: list[tuple[str, str]], exc_info: Any = None) -> None:
            status.append(st)
            response_headers.extend(hdrs)

        try:
            body = b"".join(self._protocol(environ, start_response))
        except Exception as exc:  # a misconfiguration, the catalog without identity, ...
            log.exception("%s: token validation failed", request_id)
            raise IdentityUnavailable(f"Token validation failed: {type(exc).__name__}") from exc
        if not environ.get(_REACHED):
            code = int(status[0].split()[0]) if status else 500
            if code == 401:
                raise self._unauthorized(response_headers)
            log.error("%s: keystonemiddleware answered %s: %s", request_id,
                      status[0] if status else "nothing", body[:200])
            raise IdentityUnavailable("The identity service is temporarily unavailable.")
        return self._context(environ, token, request_id)

    @staticmethod
    def _environ(headers: Mapping[str, str], request_id: str) -> dict[str, Any]:
        environ: dict[str, Any] = {
            # Access rules of application credentials are matched against the method and path;
            # none is given here, so tokens restricted by access rules are refused.
            "REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": "", "QUERY_STRING": "",
            "SERVER_NAME": "attachfs", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
            "wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(),
            "wsgi.errors": sys.stderr, "wsgi.multithread": True, "wsgi.multiprocess": False,
            "wsgi.run_once": False, "openstack.request_id": request_id,
        }
        for name in TOKEN_HEADERS:
            value = headers.get(name)
            if value is not None:
                environ["HTTP_" + name.upper().replace("-", "_")] = value
        return environ

    def _unauthorized(self, response_headers: list[tuple[str, str]]) -> KeystoneUnauthorized:
        found = {k: v for k, v in response_headers if k.lower() == "www-authenticate"}
        headers = {"WWW-Authenticate": next(iter(found.values()))} if found else {
            "WWW-Authenticate": f'Keystone uri="{self.www_authenticate_uri}"'}
        return KeystoneUnauthorized(DEFAULT_MESSAGE, headers)

    def _context(self, environ: Mapping[str, Any], token: str, request_id: str) -> RequestContext:
        if environ.get("HTTP_X_IDENTITY_STATUS") != "Confirmed":
            raise self._unauthorized([])
        user_id = environ.get("HTTP_X_USER_ID") or ""
        project_id = environ.get("HTTP_X_PROJECT_ID") or ""
        if not user_id:
            raise self._unauthorized([])
        if not project_id:
            # Domain- or system-scoped (or unscoped) token: servers and shares belong to projects.
            raise Forbidden("A project-scoped token is required")
        roles = tuple(dict.fromkeys(
            r.strip().lower() for r in (environ.get("HTTP_X_ROLES") or "").split(",") if r.strip()))
        return RequestContext(user_id=user_id, project_id=project_id, roles=roles,
                              auth_token=token, request_id=request_id)
