"""The compute API's fault bodies, and the one table from domain errors to HTTP.

    {"itemNotFound": {"code": 404, "message": "..."}}

The core raises errors.* without knowing about HTTP; this edge decides the status and the
fault name (the most specific class in the table wins, so subclasses such as the share
service's `ShareServiceUnavailable` answer as their parent does).
"""

from __future__ import annotations

from fastapi.responses import JSONResponse

from attachfs import errors

# error class -> (HTTP status, compute API fault name)
FAULTS: dict[type[errors.ClientError], tuple[int, str]] = {
    errors.ClientError: (400, "badRequest"),
    errors.BadRequest: (400, "badRequest"),
    errors.Unauthorized: (401, "unauthorized"),
    errors.Forbidden: (403, "forbidden"),
    errors.NotFound: (404, "itemNotFound"),
    errors.NotAcceptable: (406, "notAcceptable"),
    errors.Conflict: (409, "conflictingRequest"),
    errors.ServiceUnavailable: (503, "serviceUnavailable"),
}

# Starlette's own HTTP errors (unknown path, wrong method, ...) by status.
HTTP_FAULTS = {400: "badRequest", 401: "unauthorized", 403: "forbidden", 404: "itemNotFound",
               405: "HTTPMethodNotAllowed", 406: "notAcceptable", 409: "conflictingRequest",
               413: "overLimit", 415: "badMediaType"}

BAD_REQUEST = FAULTS[errors.BadRequest]
UNAVAILABLE = FAULTS[errors.ServiceUnavailable]


def status_and_name(exc: errors.ClientError) -> tuple[int, str]:
    for cls in type(exc).__mro__:
        if cls in FAULTS:
            return FAULTS[cls]
    return FAULTS[errors.ClientError]


class FaultResponse(JSONResponse):
    media_type = "application/json; charset=UTF-8"  # as the compute service labels its faults


def fault(code: int, name: str, message: str,
          headers: dict[str, str] | None = None) -> JSONResponse:
    return FaultResponse({name: {"code": code, "message": message}}, status_code=code,
                         headers=headers)


def fault_of(exc: errors.ClientError) -> JSONResponse:
    """The answer for a domain error (with any headers it carries, e.g. WWW-Authenticate)."""
    code, name = status_and_name(exc)
    return fault(code, name, exc.message, getattr(exc, "headers", None))
