"""A real Manila (harness/manila.py) for the whole session: the `manila`, `manila_share`,
`manila_keystone` and `manila_cephfs` fixtures, loaded as a plugin by tests/conftest.py
(`pytest_plugins`) so that tests/manila and tests/clients share one Manila per run (fixtures
defined in tests/manila/conftest.py would be invisible to tests/clients, and a second copy
would start a second Manila and register a second `sharev2` in the one Keystone).

`manila`: manila-api (noauthv2), manila-scheduler and manila-share with the DummyDriver, on a
fresh MariaDB database and RabbitMQ vhost; stopped at the end, and the session fails if a
process of it is left or a port still answers. `manila_keystone`: a keystone-mode manila-api
on the same deployment against the session's real Keystone (tests/keystone_fixture.py), in its
catalog as `sharev2`. `manila_cephfs`: a second manila-share with Manila's real CephFS driver
on the session's Ceph (tests/ceph_fixture.py), share type CEPHFS_TYPE.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import manila as harness_manila
from harness.ceph import CephCluster
from harness.keystone import Keystone
from harness.manila import DEFAULT_TYPE, KeystoneManila, Manila


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "manila: runs a real Manila (MariaDB, RabbitMQ)")


@pytest.fixture(scope="session")
def manila() -> Iterator[Manila]:
    missing = harness_manila.prerequisites()
    if missing:
        pytest.skip(f"needs a real Manila: {missing}")
    harness_manila.ensure_venv()
    workdir = Path(tempfile.mkdtemp(prefix="attachfs-manila-"))
    service = Manila(workdir, uuid.uuid4().hex[:10])
    try:
        service.start()
        sys.stderr.write(f"\n[manila] started in {service.start_seconds:.1f}s at "
                         f"{service.endpoint}\n")
        service.create_share_type(DEFAULT_TYPE)
        yield service
    finally:
        began = time.monotonic()
        left = service.stop()
        sys.stderr.write(f"\n[manila] stopped in {time.monotonic() - began:.1f}s\n")
        shutil.rmtree(workdir, ignore_errors=True)
    assert not left, f"Manila left behind: {left}"


@pytest.fixture(scope="session")
def manila_share(manila: Manila) -> dict[str, Any]:
    return manila.create_share("attachfs-test-share")


@pytest.fixture(scope="session")
def manila_keystone(manila: Manila, keystone: Keystone) -> Iterator[KeystoneManila]:
    service = harness_manila.start_keystone_api(manila, keystone)
    sys.stderr.write(f"\n[manila] keystone-mode manila-api up in {service.start_seconds:.1f}s "
                     f"at {service.endpoint}\n")
    yield service
    harness_manila.stop_keystone_api(service)


@pytest.fixture(scope="session")
def manila_cephfs(manila: Manila, ceph_cluster: CephCluster) -> Iterator[Manila]:
    """The same Manila with a second backend: its real CephFS native driver (protocol CEPHFS,
    cephx rules) on the session's Ceph cluster, in its own manila-share process, chosen by the
    share type CEPHFS_TYPE (the dummy backend stays the default type's)."""
    began = time.monotonic()
    harness_manila.ensure_venv()  # the Ceph packages are in now: link their Python bindings
    harness_manila.add_cephfs_backend(manila, ceph_cluster)
    sys.stderr.write(f"\n[manila] CephFS backend up in {time.monotonic() - began:.1f}s\n")
    yield manila
