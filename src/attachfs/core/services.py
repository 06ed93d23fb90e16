"""Former service layer, kept as the names other packages still import.

The verbs are command handlers now (core/handlers/, over the unit of work of db/uow.py);
flavors are core/flavors.py. `finish_action` is used by the agent with its own session.
"""

from __future__ import annotations

from typing import Any

from attachfs.core.flavors import FLAVORS as FLAVORS
from attachfs.core.flavors import Flavor as Flavor
from attachfs.core.flavors import find_flavor as find_flavor


def finish_action(s: Any, request_id: str | None, result: str, message: str | None) -> None:
    """Close the audit trail entries of one request with its result (and why, when given).
    `s` is an open SQLAlchemy session (the caller's unit of work)."""
    if not request_id:
        return
    from attachfs.db.repositories import SqlActions  # the agent's session, the same queries

    actions = SqlActions(s)
    for action in actions.unfinished(request_id):
        actions.finish(action, result)
        if message:
            action.message = (action.message + ": " if action.message else "") + message
