"""How `make test` runs the suite on two workers (pytest-xdist, `--dist loadgroup`).

Everything that boots a guest or uses a session service (Keystone, Manila, Ceph, NFS-Ganesha)
runs on one worker, in file order, as one group: guests share the machine's two cores badly
(TCG), and each service then starts once per run. Everything else (unit, API, conformance,
most adversarial tests: CPU-bound Python) runs beside it on the other worker.

A test marked `exclusive` disturbs what other tests use (it stops PostgreSQL): `make test` runs
those alone, after the parallel run (`-m exclusive`).
"""

from __future__ import annotations

import pytest

SERVICE_FIXTURES = frozenset({"keystone", "manila", "manila_keystone", "manila_cephfs",
                              "ceph_cluster", "ganesha_server"})
GROUP = "guests-and-services"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "exclusive: disturbs shared services (stops PostgreSQL); "
                                       "run alone, not beside other tests")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("vm") or SERVICE_FIXTURES & set(
                getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.xdist_group(GROUP))
