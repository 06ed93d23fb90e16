"""Manila's real CephFS native driver on a real Ceph (tests/manila/conftest.py manila_cephfs,
tests/conftest.py ceph_cluster), with attachfs's provider and connector: a CEPHFS share, this
host's cephx rule (locked, with a reason), its key read back, ceph-fuse with only that key,
and on revoke the rule and the cephx ID gone."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from attachfs.config import load_config
from attachfs.service import open_parts
from attachfs.storage import mountinfo
from attachfs.storage.base import RequestContext
from attachfs.storage.cephfs import CephFsConnector
from attachfs.storage.manila import ManilaShareProvider
from harness.ceph import CephCluster
from tests.ceph.conftest import CEPH_TEST
from tests.conftest import make_image_dir
from tests.manila.conftest import CEPHFS_TYPE, TEST_PROJECT, TEST_TOKEN, TEST_USER, Manila

pytestmark = [pytest.mark.manila, *CEPH_TEST,
              pytest.mark.filterwarnings("ignore:The 'service_type' parameter is unnecesary")]
USER = RequestContext(user_id=TEST_USER, project_id=TEST_PROJECT, auth_token=TEST_TOKEN,
                      request_id="req-attachfs-cephfs")


def until(what: str, check: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_cephfs_share_through_manila(manila_cephfs: Manila, ceph_cluster: CephCluster,
                                     tmp_path: Path) -> None:
    host = "cephhost1"
    config = load_config(None, {
        "state_dir": str(tmp_path / "state"), "images.dir": str(make_image_dir(tmp_path)),
        "agent.host": host, "storage.provider": "manila", "manila.auth_type": "none",
        "manila.endpoint_override": manila_cephfs.endpoint, "manila.access_timeout": 30})
    parts = open_parts(config)
    provider = parts.provider.external
    assert isinstance(provider, ManilaShareProvider)
    share = manila_cephfs.create_share("attachfs-cephfs-1", "CEPHFS", share_type=CEPHFS_TYPE)
    info = provider.get_share(share["id"], USER)
    assert info.protocol == "CEPHFS" and info.status == "available"
    export = info.preferred_export
    assert export.startswith(ceph_cluster.mon_host + ":/volumes/"), export

    # this host's rule: cephx for attachfs-<host>, locked, applied by Ceph
    until("the cephx rule", lambda: provider.grant_access(share["id"], host, "rw",
                                                          "test attach", USER))
    (rule,) = manila_cephfs.rules(share["id"])
    assert (rule["access_type"], rule["access_to"], rule["state"]) == (
        "cephx", f"attachfs-{host}", "active")
    assert sorted(lk["resource_action"] for lk in manila_cephfs.locks(rule["id"])) == [
        "delete", "show"]
    assert ceph_cluster.auth_exists(f"attachfs-{host}")
    creds = provider.host_credentials(share["id"], host)
    assert creds is not None and creds.auth_id == f"attachfs-{host}"

    # the connector mounts it with only that key; a separate admin mount sees the data
    connector = CephFsConnector(config.mount_root, config.cephfs_dir)
    target = config.mount_root / share["id"]
    connector.mount(export, target, False, creds)
    (target / "hello.txt").write_text("through Manila's cephx rule\n")
    path = export.rsplit(":", 1)[1]
    with ceph_cluster.fuse_mount(path, tmp_path / "admin", "admin", ceph_cluster.admin_key):
        assert (tmp_path / "admin" / "hello.txt").read_text() == "through Manila's cephx rule\n"
    connector.unmount(target)
    assert mountinfo.mount_points(tmp_path) == []

    # revoke: the rule goes (its locks lifted), and with it the cephx ID in Ceph
    until("the rule gone", lambda: provider.revoke_access(share["id"], host, USER))
    assert manila_cephfs.rules(share["id"]) == []
    until("the cephx ID gone", lambda: not ceph_cluster.auth_exists(f"attachfs-{host}"))
    parts.db.dispose()
