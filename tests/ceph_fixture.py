"""A real single-node Ceph with CephFS (harness/ceph.py) for the whole session: the `ceph_cluster`
fixture, loaded as a plugin by tests/conftest.py (`pytest_plugins`) so that tests/ceph and
tests/manila share one cluster per run (a fixture defined in tests/ceph/conftest.py would be
invisible to tests/manila).

It yields a started `harness.ceph.CephCluster` (HEALTH_OK, an active MDS, the mgr's volumes
module answering) on free 127.0.0.1 ports under the session's temporary directory: started the
first time a test asks for it (~3 s), stopped when the session ends. The teardown fails if a
daemon (zombies included), a process naming its directory or a ceph-fuse mount is left.

Needs root (the daemons, /dev/fuse, mounts) and Debian's Ceph packages, which
scripts/setup-ceph.sh installs (run here as well: ~0.05 s when done). Without root the tests
skip, and CI=true turns that skip into a failure (tests/conftest.py). A module that uses the
cluster sets `pytestmark = CEPH_TEST` (or adds it to its marks).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.ceph import CephCluster

ROOT = Path(__file__).resolve().parents[1]
NEEDS_ROOT = "a Ceph cluster and its ceph-fuse mounts need root"

# The marks of a test that uses the real cluster.
CEPH_TEST = [pytest.mark.ceph, pytest.mark.skipif(os.geteuid() != 0, reason=NEEDS_ROOT)]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "ceph: starts a real single-node Ceph (harness/ceph.py)")


@pytest.fixture(scope="session")
def ceph_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CephCluster]:
    """The session's started single-node Ceph (harness.ceph.CephCluster), CephFS "cephfs"."""
    if os.geteuid() != 0:
        pytest.skip(NEEDS_ROOT)
    subprocess.run(["bash", str(ROOT / "scripts/setup-ceph.sh")], check=True, timeout=1200)
    cluster = CephCluster(tmp_path_factory.mktemp("ceph"))
    cluster.start()  # a failed start stops what it started, then raises
    sys.stderr.write(f"\n[ceph] HEALTH_OK with CephFS in {cluster.start_seconds:.1f}s, "
                     f"mons {cluster.mon_addrs}, under {cluster.dir}\n")
    try:
        yield cluster
    finally:
        began = time.monotonic()
        cluster.stop(check=False)
        left = cluster.leftovers()
        sys.stderr.write(f"\n[ceph] stopped in {time.monotonic() - began:.1f}s\n")
    assert not left, f"the Ceph cluster left: {left} (logs: {cluster.dir}/log)"
    shutil.rmtree(cluster.dir)  # kept when something was left, for its logs
