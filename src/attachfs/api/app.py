"""The compute API application: microversions, auth context, fault bodies, routers.

`ApiState` lives in api/state.py and is re-exported here for service.py."""

from __future__ import annotations

import json
import logging
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, DBAPIError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from attachfs import ui
from attachfs.api import microversion
from attachfs.api.faults import BAD_REQUEST, HTTP_FAULTS, UNAVAILABLE, fault, fault_of
from attachfs.api.routers import ROUTERS
from attachfs.api.state import ApiState
from attachfs.errors import ClientError, NotAcceptable

__all__ = ["ApiState", "create_app", "is_compute"]

log = logging.getLogger(__name__)

# Discovery is answered without a token (clients call it before authenticating).
UNAUTHENTICATED = {"/", "/v2.1", "/v2.1/", "/share", "/share/", "/share/v2", "/share/v2/",
                   "/identity", "/identity/", "/identity/v3", "/identity/v3/",
                   "/image", "/image/", "/image/v2", "/image/v2/"}
# Paths of the compute API proper; the share/identity/image subsets speak their own versions.
COMPUTE_PREFIXES = ("/v2.1",)


# The web console's pages and login (attachfs/ui): the pages hold no data, the login asks
# Keystone itself.
UNAUTHENTICATED_PREFIXES = ("/ui/",)


def needs_token(path: str) -> bool:
    return path not in UNAUTHENTICATED and path != "/ui" \
        and not path.startswith(UNAUTHENTICATED_PREFIXES)


def is_compute(path: str) -> bool:
    return path == "/" or path.startswith(COMPUTE_PREFIXES)


JSON = "application/json"
# What the compute service reads as JSON; none, empty or text/plain count as JSON too (its
# eventlet/webob heritage), anything else is a 415.
JSON_TYPES = {"", "text/plain", JSON, "application/vnd.openstack.compute+json"}


def _unsupported_content_type(request: Request) -> bool:
    header = request.headers.get("content-type")
    return header is not None and header.split(";")[0].strip().lower() not in JSON_TYPES


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
        parts.append(f"{loc or 'body'}: {err.get('msg')}")
    return "Invalid input for the request body: " + "; ".join(parts)


def create_app(state: ApiState) -> FastAPI:
    # redirect_slashes off: `/servers/{id}/shares/` is no route (a 404, as the compute
    # service's router answers), not a redirect to the list
    app = FastAPI(title="attachfs compute API", openapi_url="/openapi.json", docs_url=None,
                  redirect_slashes=False,
                  redoc_url=None)
    app.state.api = state
    _add_request_context(app, state)
    _add_error_handlers(app)
    for router in ROUTERS:
        # The routers' own routes (their paths carry the prefix), not include_router: this
        # FastAPI matches an included router's routes twice per request, through a wrapper
        # per route (measured: ~0.2 ms of a 0.6 ms GET /v2.1/). No router sets dependencies
        # or other options that including would pass on.
        app.router.routes.extend(router.routes)
    app.router.routes.extend(ui.router.routes)
    app.mount(ui.PREFIX, ui.static_files(), name="console")
    return app


def _add_request_context(app: FastAPI, state: ApiState) -> None:
    app.add_middleware(RequestContextMiddleware, state=state)


class RequestContextMiddleware:
    """Every request gets an id; compute API requests a microversion; all but discovery a
    RequestContext (who is calling).

    Plain ASGI rather than Starlette's BaseHTTPMiddleware, which runs the rest of the app in a
    task of its own and streams the response through a queue (measured: ~0.3 ms a request)."""

    def __init__(self, app: ASGIApp, state: ApiState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = f"req-{uuid.uuid4()}"
        request = Request(scope)
        headers: list[tuple[bytes, bytes]] = [
            (b"x-openstack-request-id", request_id.encode())]
        if not is_compute(scope["path"]):
            await self._authenticated(request, receive, _adding(send, headers), request_id)
            return
        headers += [(b"vary", microversion.VARY.encode()),
                    (b"x-compute-request-id", request_id.encode())]
        # Who is calling comes first, as in the compute service (keystonemiddleware runs
        # before its router reads the microversion): no token is a 401 whatever else is wrong.
        if not await self._authenticate(request, receive, _adding(send, headers), request_id):
            return
        try:
            version = microversion.parse(request.headers.get(microversion.HEADERS[0]),
                                         request.headers.get(microversion.HEADERS[1]))
            extension = microversion.parse_extension(request.headers.get(microversion.HEADERS[0]))
        except NotAcceptable as exc:
            # the compute service names this fault computeFault and echoes what was asked
            response = fault(406, "computeFault", exc.message)
            if exc.asked:
                response.headers[microversion.HEADERS[0]] = f"compute {exc.asked}"
            await response(scope, receive, _adding(send, headers))
            return
        except ClientError as exc:
            await fault_of(exc)(scope, receive, _adding(send, headers))
            return
        request.state.version = version
        request.state.extension = extension
        said = f"compute {version}" + (
            f", {microversion.EXT_SERVICE} {extension}" if extension else "")
        headers += [(microversion.HEADERS[0].lower().encode(), said.encode()),
                    (microversion.HEADERS[1].lower().encode(), str(version).encode())]
        send = _adding(send, headers, default_type=JSON)  # even DELETE's empty 200
        if _unsupported_content_type(request):
            await fault(415, HTTP_FAULTS[415], "Unsupported Content-Type")(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _authenticated(self, request: Request, receive: Receive, send: Send,
                             request_id: str) -> None:
        if await self._authenticate(request, receive, send, request_id):
            await self.app(request.scope, receive, send)

    async def _authenticate(self, request: Request, receive: Receive, send: Send,
                            request_id: str) -> bool:
        """The caller's RequestContext on the request, where its path needs a token; False
        when the answer (401, 403) has been sent instead."""
        if not needs_token(request.scope["path"]):
            return True
        authenticator = self.state.authenticator
        try:
            if authenticator.blocks:
                request.state.context = await run_in_threadpool(
                    authenticator.authenticate, request.headers, request_id)
            else:
                request.state.context = authenticator.authenticate(request.headers, request_id)
        except ClientError as exc:
            await fault_of(exc)(request.scope, receive, send)
            return False
        return True


# The compute service's router's 404 (webob's body; measured on Nova 34.0.0, recorded in
# tests/conformance): no route matched, so no microversion was taken and none is echoed.
ROUTE_NOT_FOUND = {"code": "404 Not Found", "title": "Not Found",
                   "message": "The resource could not be found.<br /><br />\n\n\n"}
UNVERSIONED = "x-attachfs-unversioned"  # a response's mark, taken off before it goes out
_VERSION_HEADERS = {name.lower().encode() for name in microversion.HEADERS}


def _adding(send: Send, headers: list[tuple[bytes, bytes]],
            default_type: str | None = None) -> Send:
    """`send` with `headers` set on the response (replacing any of the same name), and a
    Content-Type when the response has none. A response marked UNVERSIONED gets no
    microversion headers."""
    names = {name for name, _ in headers}
    mark = UNVERSIONED.encode()

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            given = message.get("headers", [])
            adding = headers
            if any(k.lower() == mark for k, _ in given):
                given = [(k, v) for k, v in given if k.lower() != mark]
                adding = [(k, v) for k, v in headers if k not in _VERSION_HEADERS]
            kept = [(k, v) for k, v in given if k.lower() not in names]
            if default_type and not any(k.lower() == b"content-type" for k, _ in kept):
                kept.append((b"content-type", default_type.encode()))
            message = {**message, "headers": kept + adding}
        await send(message)

    return sending


def _add_error_handlers(app: FastAPI) -> None:
    """Whatever a request raises becomes a compute API fault body, never a 500 for input."""

    @app.exception_handler(ClientError)
    async def client_error(_request: Request, exc: ClientError) -> JSONResponse:
        return fault_of(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return fault(*BAD_REQUEST, _validation_message(exc))

    @app.exception_handler(json.JSONDecodeError)
    async def json_error(_request: Request, exc: json.JSONDecodeError) -> JSONResponse:
        return fault(*BAD_REQUEST, f"Malformed request body: {exc}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = exc.status_code
        if code in (404, 405) and is_compute(request.url.path):
            # No such route (the compute service routes by method too): its router's answer,
            # webob's body, before any microversion is looked at (so none is echoed).
            return JSONResponse(ROUTE_NOT_FOUND, 404, headers={UNVERSIONED: "1"})
        name = HTTP_FAULTS.get(code, "computeFault")
        message = "The resource could not be found." if code == 404 else str(exc.detail)
        return fault(code, name, message)

    # The unit of work translates database errors (db/uow.py); these two catch what adapters
    # that use the database on their own (the built-in share provider) let through.
    @app.exception_handler(DataError)
    async def data_error(_request: Request, exc: DataError) -> JSONResponse:
        return fault(*BAD_REQUEST, "Invalid input: a value contains characters the "
                                   "database cannot store (such as NUL)")

    @app.exception_handler(DBAPIError)
    async def db_error(_request: Request, exc: DBAPIError) -> JSONResponse:
        log.error("database error: %s", exc)
        return fault(*UNAVAILABLE, "The database is busy; retry the request")

