"""Request-scoped helpers shared by the routers (never a router itself)."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from attachfs.api.microversion import Version
from attachfs.api.state import ApiState
from attachfs.core.context import RequestContext
from attachfs.core.ports import Env
from attachfs.db.uow import SqlUnitOfWork
from attachfs.errors import BadRequest, NotFound

M = TypeVar("M", bound=BaseModel)


def api(request: Request) -> ApiState:
    state: ApiState = request.app.state.api
    return state


def uow(request: Request) -> SqlUnitOfWork:
    return api(request).uow


def env(request: Request) -> Env:
    return api(request).env


def context(request: Request) -> RequestContext:
    ctx: RequestContext = request.state.context
    return ctx


def base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def version(request: Request) -> Version:
    v: Version = request.state.version
    return v


def extension(request: Request, minimum: str) -> bool:
    """Did the client ask for attachfs extension `minimum` (or newer)?"""
    ext: Version | None = request.state.extension
    return ext is not None and ext.at_least(minimum)


def require_version(request: Request, minimum: str) -> None:
    """Below the microversion that introduced a resource, it does not exist (404)."""
    if not version(request).at_least(minimum):
        raise NotFound("The resource could not be found.")


async def json_body(request: Request) -> Any:
    """The request body as the compute service reads it: empty is None, else JSON (whatever
    the Content-Type said, once the middleware let it through)."""
    return parsed_json(await request.body())


def parsed_json(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest("Malformed request body") from exc


def parse(model: type[M], body: Any) -> M:
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
        )
        raise BadRequest(f"Invalid input for the request body: {problems}") from exc
