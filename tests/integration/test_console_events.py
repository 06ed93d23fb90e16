"""On PostgreSQL the console's event stream hears every agent, wherever it runs: an agent
announces each change on the database and an API process's hub LISTENs (from its first
subscriber on), so `attachfs api` processes stream what agents on other hosts do."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from attachfs.config import load_config
from attachfs.notify.base import NoopNotifier
from attachfs.notify.hub import Broadcasting
from attachfs.notify.payloads import envelope
from attachfs.service import Parts, build_api, change_delivery, open_parts
from tests.conftest import make_image_dir

pytestmark = pytest.mark.postgres


def test_an_agents_change_reaches_another_processes_stream(pg_url: str, tmp_path: Path) -> None:
    def parts_of(name: str) -> Parts:
        return open_parts(load_config(None, {
            "state_dir": str(tmp_path / name), "database_url": pg_url,
            "images.dir": str(make_image_dir(tmp_path / name)), "agent.host": name}))

    api_side, agent_side = parts_of("api"), parts_of("agent")
    try:
        build_api(api_side)  # the API process: its hub hears the database once subscribed
        agent = Broadcasting(NoopNotifier(), change_delivery(agent_side))

        async def hear() -> str:
            _key, queue = api_side.hub.subscribe()
            for _ in range(100):  # until its listener is on (announcements are not kept)
                agent.notify("instance.share_attach.end",
                             envelope("InstanceActionPayload", "1.0",
                                      {"uuid": "srv-1", "tenant_id": "p1"}))
                try:
                    change = await asyncio.wait_for(queue.get(), 0.2)
                except TimeoutError:
                    continue
                return f"{change.server} {change.project_id} {change.event_type}"
            raise AssertionError("no change heard")

        assert asyncio.run(hear()) == "srv-1 p1 instance.share_attach.end"
        assert api_side.hub is not agent_side.hub  # it came through the database
    finally:
        api_side.hub.close()
        api_side.db.dispose()
        agent_side.db.dispose()
