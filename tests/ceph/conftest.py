"""tests/ceph run against the session's real Ceph: the `ceph_cluster` fixture lives in
tests/ceph_fixture.py, a plugin of tests/conftest.py, so that tests/manila gets the same
cluster. `CEPH_TEST` (the `ceph` mark, and a skip without root that CI=true makes a failure) is
re-exported here for the modules that import it from this package."""

from __future__ import annotations

from tests.ceph_fixture import CEPH_TEST

__all__ = ["CEPH_TEST"]
