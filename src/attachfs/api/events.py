"""attachfs's extension: a stream of what changes (server-sent events), for the web console.

    GET /v2.1/os-attachfs-events        Accept: text/event-stream, X-Auth-Token: ...

Each versioned notification this process sends about a server (share_attach.end, power_off...)
becomes `event: change` with `{"server": id, "event_type": ...}`, for the servers the caller may
see (its project's; an admin's: all). It says what to look at again, never what it now is:
the console reads that through the API with the caller's own token, so the stream shows
nothing the API would not. A comment line every KEEPALIVE s keeps proxies from closing it.

Fed by the agents' notifications (notify/hub.py): in `attachfs serve` on SQLite its own
agent's, handed over in the process; on PostgreSQL every agent's, announced on the database and
heard by each API process (so `attachfs api --workers N` of a multi-host setup streams them too).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from attachfs.api import deps
from attachfs.api.routing import JsonRoute
from attachfs.api.validation import NO_QUERY, check_query
from attachfs.core.context import RequestContext
from attachfs.notify.hub import Change, EventHub

router = APIRouter(prefix="/v2.1/os-attachfs-events", route_class=JsonRoute)
KEEPALIVE = 15.0


@router.get("")
async def events(request: Request) -> StreamingResponse:
    check_query(NO_QUERY, request.query_params)
    return StreamingResponse(_stream(deps.api(request).hub, deps.context(request)),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


async def _stream(hub: EventHub, ctx: RequestContext) -> AsyncIterator[str]:
    key, queue = hub.subscribe()
    try:
        yield ": attachfs events\n\n"  # the answer starts at once: the client knows it is on
        while True:
            try:
                change = await asyncio.wait_for(queue.get(), KEEPALIVE)
            except TimeoutError:
                yield ": keep-alive\n\n"
                continue
            if visible(change, ctx):
                data = json.dumps({"server": change.server, "event_type": change.event_type})
                yield f"event: change\ndata: {data}\n\n"
    finally:
        hub.unsubscribe(key)


def visible(change: Change, ctx: RequestContext) -> bool:
    return ctx.is_admin or change.project_id == ctx.project_id
