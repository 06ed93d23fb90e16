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
from _pytest.nodeid import coerce_node_id

SERVICE_FIXTURES = frozenset({"keystone", "manila", "manila_keystone", "manila_cephfs",
                              "ceph_cluster", "ganesha_server"})


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "exclusive: disturbs shared services (stops PostgreSQL); "
                                       "run alone, not beside other tests")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not getattr(config.option, "loadgroup", False):  # set on xdist's workers only
        return
    for item in items:
        if SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())):
            group = "services"
        elif item.get_closest_marker("vm"):
            group = "guests"
        else:
            continue
        # What pytest-xdist does for an `xdist_group` mark: the group after "@" in the node id
        # it schedules by. Done here because xdist 3.8 sets `item._nodeid`, which pytest 9 no
        # longer reads (measured: with the mark, a group's tests ran on both workers).
        item._id = coerce_node_id(f"{item.nodeid}@{group}")  # type: ignore[attr-defined]
