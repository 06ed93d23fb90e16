"""A real Keystone (harness/keystone.py, from .venv-keystone, see scripts/setup-keystone.sh) for
the whole session: the `keystone` fixture, loaded as a plugin by tests/conftest.py
(`pytest_plugins`) so that tests/keystone, tests/manila and tests/clients share one Keystone per
run.

Keystone: sqlite in a temp dir, fernet tokens, `keystone-manage bootstrap` (admin in project
`admin`, `[resource] admin_project_name = admin`), served by gunicorn on a free loopback port.
Then, through its API: projects A and B, users with reader / member roles there, and the
service user attachfs validates tokens with (role `service` in project `service`). At the end
the process group is killed and the port is checked to be free.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from harness import keystone as harness_keystone
from harness.keystone import (  # noqa: F401 - names other test modules import from here
    ADMIN_PASSWORD,
    PASSWORD,
    REGION,
    ROOT,
    SERVICE_PASSWORD,
    SERVICE_USER,
    USERS,
    Keystone,
    authtoken_overrides,
    free_port,
    port_listening,
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "keystone: needs a real Keystone (.venv-keystone)")
    # keystonemiddleware -> webob imports cgi (deprecated in 3.11, gone in 3.13).
    config.addinivalue_line("filterwarnings", "ignore:'cgi' is deprecated:DeprecationWarning")


@pytest.fixture(scope="session")
def keystone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keystone]:
    setup = subprocess.run(["bash", str(ROOT / "scripts" / "setup-keystone.sh")],
                           capture_output=True, text=True, timeout=900)
    if setup.returncode != 0:
        pytest.fail(f"scripts/setup-keystone.sh failed:\n{setup.stdout}\n{setup.stderr}")
    ks = harness_keystone.start(tmp_path_factory.mktemp("keystone"))
    try:
        harness_keystone.populate(ks)
        print(f"\nkeystone on {ks.url}: up in {ks.started_in:.1f} s", file=sys.stderr)
        yield ks
    finally:
        harness_keystone.stop(ks)
