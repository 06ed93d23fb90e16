"""An attachfs API with auth_strategy "keystone" pointed at the session's real Keystone (the
`keystone` fixture: tests/keystone_fixture.py, loaded by tests/conftest.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from fastapi.testclient import TestClient

from attachfs.api.keystone import KeystoneAuthenticator
from attachfs.config import load_config
from attachfs.service import Parts, build_api, open_parts
from tests.conftest import make_image_dir
from tests.keystone_fixture import (  # noqa: F401 - names the tests import from here
    ADMIN_PASSWORD,
    PASSWORD,
    SERVICE_PASSWORD,
    SERVICE_USER,
    USERS,
    Keystone,
    authtoken_overrides,
    free_port,
)


@dataclass
class Cloud:
    """attachfs (auth_strategy keystone) in-process, and the Keystone it trusts."""

    keystone: Keystone
    parts: Parts
    client: TestClient

    def auth(self, user: str) -> dict[str, str]:
        return {"X-Auth-Token": self.keystone.token(user)}

    @property
    def authenticator(self) -> KeystoneAuthenticator:
        auth: KeystoneAuthenticator = self.client.app.state.api.authenticator  # type: ignore[attr-defined]
        return auth


@pytest.fixture(scope="session")
def cloud(keystone: Keystone, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    tmp = tmp_path_factory.mktemp("attachfs-keystone")
    config = load_config(None, {
        "state_dir": str(tmp / "state"), "images.dir": str(make_image_dir(tmp)),
        "agent.host": "test-host", **authtoken_overrides(keystone.url),
    })
    parts = open_parts(config)
    with TestClient(build_api(parts)) as client:
        client.headers.update({"OpenStack-API-Version": "compute 2.97"})  # no token by default
        yield Cloud(keystone, parts, client)
    parts.db.dispose()
