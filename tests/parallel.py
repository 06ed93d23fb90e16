"""How `make test` runs the suite on two workers (pytest-xdist, `--dist loadgroup`).

Two groups, each on one worker in file order: the tests that use a session service (Keystone,
Manila, Ceph, NFS-Ganesha; their guests included), so that each service starts once per run, and
the other tests that boot a guest. Everything else (unit, API, conformance, most adversarial
tests: CPU-bound Python) fills in beside them. At most two guests run at once, one a worker.

A test marked `exclusive` disturbs what other tests use (it stops PostgreSQL): `make test` runs
those alone, after the parallel run (`-m exclusive`).
"""

from __future__ import annotations

import pytest

SERVICE_FIXTURES = frozenset({"keystone", "manila", "manila_keystone", "manila_cephfs",
                              "ceph_cluster", "ganesha_server"})


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "exclusive: disturbs shared services (stops PostgreSQL); "
                                       "run alone, not beside other tests")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.xdist_group("services"))
        elif item.get_closest_marker("vm"):
            item.add_marker(pytest.mark.xdist_group("guests"))
