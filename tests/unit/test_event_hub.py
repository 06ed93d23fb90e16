"""The console's event stream: the agent's notifications, handed from its threads to each
listener's event loop, and each caller sees only its own project's servers (an admin: all)."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

from attachfs.api.events import _stream
from attachfs.core.context import RequestContext
from attachfs.notify.base import NoopNotifier
from attachfs.notify.hub import QUEUE_SIZE, Broadcasting, EventHub
from attachfs.notify.payloads import envelope

ALICE = RequestContext(user_id="alice", project_id="p1", roles=("member", "reader"))
ADMIN = RequestContext(user_id="admin", project_id="admin", roles=("admin",))


def _payload(server: str, project: str) -> dict[str, Any]:
    return envelope("InstanceActionPayload", "1.0", {"uuid": server, "tenant_id": project})


async def _read(ctx: RequestContext, hub: EventHub, sent: list[tuple[str, str]]) -> list[Any]:
    stream = _stream(hub, ctx)
    assert (await anext(stream)).startswith(":")  # open at once
    notifier = Broadcasting(NoopNotifier(), hub.publish)

    def agent() -> None:  # another thread, as the agent's workers are
        for server, project in sent:
            notifier.notify("instance.share_attach.end", _payload(server, project))
        notifier.notify("instance.share_attach.end", {"no": "instance"})  # not about a server

    threading.Thread(target=agent).start()
    seen = []
    while len(seen) < len([p for _, p in sent if ctx.is_admin or p == ctx.project_id]):
        block = await asyncio.wait_for(anext(stream), 5)
        if block.startswith("event: change"):
            seen.append(json.loads(block.split("data: ", 1)[1]))
    await stream.aclose()
    return seen


def test_each_caller_hears_of_its_own_servers_only() -> None:
    sent = [("s1", "p1"), ("s2", "p2"), ("s3", "p1")]
    hub = EventHub()
    seen = asyncio.run(_read(ALICE, hub, sent))
    assert [c["server"] for c in seen] == ["s1", "s3"]
    assert seen[0]["event_type"] == "instance.share_attach.end"
    assert asyncio.run(_read(ADMIN, hub, sent))[1]["server"] == "s2"
    assert hub._listeners == {}  # both left: nothing is kept for them


def test_a_listener_that_does_not_keep_up_loses_events_not_the_agent() -> None:
    hub = EventHub()

    async def slow() -> int:
        _key, queue = hub.subscribe()
        notifier = Broadcasting(NoopNotifier(), hub.publish)
        worker = threading.Thread(target=lambda: [
            notifier.notify("instance.power_off.end", _payload(f"s{i}", "p1"))
            for i in range(1000)])
        worker.start()
        worker.join(5)
        assert not worker.is_alive()  # the agent's thread never waited
        await asyncio.sleep(0.1)
        return queue.qsize()

    assert asyncio.run(slow()) == QUEUE_SIZE
