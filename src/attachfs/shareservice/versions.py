"""The share service's microversions: 2.0 … 2.98 through `X-OpenStack-Manila-API-Version`
(or `OpenStack-API-Version: shared-file-system X.Y`), echoed on every answer."""

from __future__ import annotations

import re
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response

from attachfs.api.routing import JsonRoute
from attachfs.errors import BadRequest, NotAcceptable

PREFIX = "/share"
MIN_VERSION = (2, 0)
MAX_VERSION = (2, 98)
VERSION_HEADER = "X-OpenStack-Manila-API-Version"
_VERSION = re.compile(r"^([1-9]\d*)\.([1-9]\d*|0)$")


def fmt(v: tuple[int, int]) -> str:
    return f"{v[0]}.{v[1]}"


def parse_version(headers: Any) -> tuple[int, int]:
    """The microversion asked for: the legacy header, else `OpenStack-API-Version:
    shared-file-system X.Y` (what keystoneauth also sends); none means 2.0, as the service."""
    text: str | None = headers.get(VERSION_HEADER)
    if not text:
        for part in (headers.get("OpenStack-API-Version") or "").split(","):
            service, _, value = part.strip().partition(" ")
            if service.lower() in ("shared-file-system", "share", "sharev2"):
                text = value.strip()
    text = (text or "").strip()
    if not text:
        return MIN_VERSION
    if text.lower() == "latest":
        return MAX_VERSION
    m = _VERSION.match(text)
    if not m:
        raise BadRequest(f"API Version String {text} is of invalid format. Must be of format "
                         "MajorNum.MinorNum.")
    version = (int(m.group(1)), int(m.group(2)))
    if not MIN_VERSION <= version <= MAX_VERSION:
        raise NotAcceptable(f"Version {text} is not supported by the API. Minimum is "
                            f"{fmt(MIN_VERSION)} and maximum is {fmt(MAX_VERSION)}.")
    return version


class ShareRoute(JsonRoute):
    """Reads the share microversion before the handler and echoes it on the answer."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            version = parse_version(request.headers)
            request.state.share_version = version
            response = await handler(request)
            response.headers[VERSION_HEADER] = fmt(version)
            return response

        return route


def version(request: Request) -> tuple[int, int]:
    v: tuple[int, int] = request.state.share_version
    return v


def at_least(request: Request, minor: int) -> bool:
    return version(request) >= (2, minor)


def base(request: Request) -> str:
    return str(request.base_url).rstrip("/") + PREFIX
