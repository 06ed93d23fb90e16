"""The compute API application: microversions, auth context, fault bodies, routers.

`ApiState` lives in api/state.py and is re-exported here for service.py."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import DataError, DBAPIError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

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
        app.include_router(router)
    return app


def _add_request_context(app: FastAPI, state: ApiState) -> None:
    """Every request gets an id; compute API requests a microversion; all but discovery a
    RequestContext (who is calling)."""

    @app.middleware("http")
    async def context_middleware(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        request_id = f"req-{uuid.uuid4()}"
        if not is_compute(request.url.path):
            other = await _authenticated(request, call_next, request_id)
            other.headers["x-openstack-request-id"] = request_id
            return other
        response: Response
        try:
            version = microversion.parse(request.headers.get(microversion.HEADERS[0]),
                                         request.headers.get(microversion.HEADERS[1]))
            extension = microversion.parse_extension(request.headers.get(microversion.HEADERS[0]))
        except NotAcceptable as exc:
            # the compute service names this fault computeFault and echoes what was asked
            response = fault(406, "computeFault", exc.message)
            if exc.asked:
                response.headers[microversion.HEADERS[0]] = f"compute {exc.asked}"
        except ClientError as exc:
            response = fault_of(exc)
        else:
            request.state.version = version
            request.state.extension = extension
            if _unsupported_content_type(request):
                response = fault(415, HTTP_FAULTS[415], "Unsupported Content-Type")
            else:
                response = await _authenticated(request, call_next, request_id)
            if "content-type" not in response.headers:  # even DELETE's empty 200
                response.headers["Content-Type"] = JSON
            response.headers[microversion.HEADERS[0]] = f"compute {version}" + (
                f", {microversion.EXT_SERVICE} {extension}" if extension else "")
            response.headers[microversion.HEADERS[1]] = str(version)
        response.headers["Vary"] = microversion.VARY
        response.headers["x-openstack-request-id"] = request_id
        response.headers["x-compute-request-id"] = request_id
        return response

    async def _authenticated(request: Request, call_next: Callable[[Request], Awaitable[Response]],
                             request_id: str) -> Response:
        if request.url.path in UNAUTHENTICATED:
            return await call_next(request)
        try:
            request.state.context = await run_in_threadpool(
                state.authenticator.authenticate, request.headers, request_id)
        except ClientError as exc:
            return fault_of(exc)
        return await call_next(request)


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
        if code == 405 and is_compute(request.url.path):
            code = 404  # the compute service routes by method too: no such route
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

