"""Request bodies and query strings checked by JSON Schema, worded as the compute service words
its 400s (clients and test suites match these messages).

The compute service validates a request's body and query before it looks anything up, so a
bad body on an unknown server is a 400, not a 404; routers call these first.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jsonschema
from oslo_utils import uuidutils
from starlette.datastructures import QueryParams

from attachfs.errors import BadRequest

_FORMATS = jsonschema.FormatChecker(formats=())


@_FORMATS.checks("uuid")
def _is_uuid(value: object) -> bool:
    # a format constrains only its own type (a number is the `type` keyword's business)
    return not isinstance(value, str) or bool(uuidutils.is_uuid_like(value))


def _validator(schema: Mapping[str, Any]) -> jsonschema.protocols.Validator:
    return jsonschema.Draft202012Validator(schema, format_checker=_FORMATS)


def check_body(schema: Mapping[str, Any], body: Any) -> None:
    """400 with the compute service's wording: the innermost field and its value."""
    _check(schema, body, "field/attribute", innermost=True)


def check_query(schema: Mapping[str, Any], query: QueryParams) -> None:
    """Query parameters as the compute service sees them: each name with a list of values."""
    _check(schema, {name: query.getlist(name) for name in query}, "query parameters",
           innermost=False)


def _check(schema: Mapping[str, Any], value: Any, what: str, *, innermost: bool) -> None:
    """A body names its innermost field; a query its parameter (the path's first item: the
    rest indexes that parameter's list of values)."""
    try:
        _validator(schema).validate(value)
    except jsonschema.ValidationError as exc:
        if exc.path:
            name = exc.path.pop() if innermost else exc.path.popleft()
            raise BadRequest(f"Invalid input for {what} {name}. "
                             f"Value: {exc.instance}. {exc.message}") from exc
        raise BadRequest(exc.message) from exc


# A query that takes no parameters (`additionalProperties: false`: any is a 400).
NO_QUERY: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}
