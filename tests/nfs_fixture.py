"""A real NFSv4 server (nfs-ganesha, harness/ganesha.py) for the whole session: the
`ganesha_server` fixture, loaded as a plugin by tests/conftest.py (`pytest_plugins`) so that
tests/nfs and any other package (tests/manila) share one server per run.

It yields a started `harness.ganesha.GaneshaServer` exporting its directory's export/ as
nfs://127.0.0.1:PORT/export (FSAL VFS, no root squash): started the first time a test asks for
it (~0.05 s), stopped when the session ends. The teardown fails if the daemon (zombies included),
a process naming its directory or a mount below it is left.

Needs root (ganesha, FUSE mounts) and Debian's nfs-ganesha and nfs-ganesha-vfs packages
(scripts/setup.sh). Without either the tests skip, and CI=true turns that skip into a failure
(tests/conftest.py). A module that uses the server sets `pytestmark = NFS_TEST` (or adds it to
its marks).
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Iterator

import pytest

from harness.ganesha import GaneshaServer

NEEDS_ROOT = "nfs-ganesha and FUSE mounts need root"
NEEDS_GANESHA = ("nfs-ganesha is not installed (ganesha.nfsd not found; scripts/setup.sh "
                 "installs nfs-ganesha and nfs-ganesha-vfs)")

# The marks of a test that uses the real server.
NFS_TEST = [pytest.mark.nfs, pytest.mark.skipif(os.geteuid() != 0, reason=NEEDS_ROOT)]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "nfs: starts a real NFSv4 server (harness/ganesha.py)")


@pytest.fixture(scope="session")
def ganesha_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GaneshaServer]:
    """The session's started nfs-ganesha (harness.ganesha.GaneshaServer)."""
    if os.geteuid() != 0:
        pytest.skip(NEEDS_ROOT)
    if shutil.which("ganesha.nfsd") is None:
        pytest.skip(NEEDS_GANESHA)
    server = GaneshaServer(tmp_path_factory.mktemp("ganesha"))
    server.start()  # a failed start stops what it started, then raises
    sys.stderr.write(f"\n[ganesha] serving {server.export_location} in "
                     f"{server.start_seconds:.2f}s, under {server.dir}\n")
    try:
        yield server
    finally:
        began = time.monotonic()
        server.stop(check=False)
        left = server.leftovers()
        sys.stderr.write(f"\n[ganesha] stopped in {time.monotonic() - began:.2f}s\n")
    assert not left, f"nfs-ganesha left: {left} (log: {server.log_path})"
    shutil.rmtree(server.dir)  # kept when something was left, for its log
