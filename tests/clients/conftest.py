"""What the tests of the real `openstack` CLI share: the CLI itself (.venv-clients)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from harness.openstack_cli import CLIENTS_VENV, OPENSTACK

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def openstack_exe() -> Path:
    """The clients' virtualenv, created if missing (fast when it is already there)."""
    try:
        done = subprocess.run(["bash", str(REPO / "scripts" / "setup-clients.sh")],
                              capture_output=True, text=True, timeout=900,
                              env={**os.environ, "ATTACHFS_CLIENTS_VENV": str(CLIENTS_VENV)})
        problem = done.stderr[-2000:] if done.returncode else ""
    except (OSError, subprocess.SubprocessError) as exc:
        problem = str(exc)
    if not OPENSTACK.exists():
        pytest.skip(f"{CLIENTS_VENV} is missing and scripts/setup-clients.sh could not create "
                    f"it: {problem}")
    assert not problem, f"scripts/setup-clients.sh failed: {problem}"
    return OPENSTACK
