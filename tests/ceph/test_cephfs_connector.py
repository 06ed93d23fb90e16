"""attachfs's CephFS connector (storage/cephfs.py) against a real Ceph: ceph-fuse with only a
path-restricted key, one backing mount per share shared by its read-write and read-only host
mounts, everything (mounts, key file, ceph-fuse) gone with the last one, and failures that name
their cause and leave nothing behind."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from attachfs.errors import PermanentError
from attachfs.storage import mountinfo
from attachfs.storage.base import HostCredentials
from attachfs.storage.cephfs import CephFsConnector
from harness.ceph import CephCluster
from harness.process import processes_running, wait_for
from tests.ceph_fixture import CEPH_TEST

pytestmark = CEPH_TEST
MIB = 1024 * 1024


def ceph_fuse_for(path: Path) -> list[int]:
    """PIDs of ceph-fuse processes mounting `path`."""
    return processes_running("ceph-fuse", path)


def test_mount_share_and_release(ceph_cluster: CephCluster, tmp_path: Path) -> None:
    path = ceph_cluster.subvolume_create("conn-a", 64 * MIB)
    key = ceph_cluster.subvolume_authorize("conn-a", "attachfs-conn-host")
    creds = HostCredentials("attachfs-conn-host", key)
    connector = CephFsConnector(tmp_path / "mounts", tmp_path / "cephfs")
    export = ceph_cluster.export_location(path)
    rw, ro = tmp_path / "mounts" / "share-a", tmp_path / "mounts" / "share-a-ro"
    backing = tmp_path / "cephfs" / "share-a" / "mnt"
    keyring = tmp_path / "cephfs" / "share-a" / "keyring"

    connector.mount(export, rw, False, creds)
    connector.mount(export, rw, False, creds)  # idempotent
    assert stat.S_IMODE(keyring.stat().st_mode) == 0o600
    assert {"rw", "nosuid", "nodev"} <= (mountinfo.mount_options(rw) or set())
    (rw / "from-host.txt").write_text("written through attachfs's host mount\n")

    # read back through a separate admin mount of the same path, not the agent's mount
    with ceph_cluster.fuse_mount(path, tmp_path / "admin", "admin", ceph_cluster.admin_key):
        assert (tmp_path / "admin" / "from-host.txt").read_text() == \
            "written through attachfs's host mount\n"
        (tmp_path / "admin" / "from-ceph.txt").write_text("written in Ceph\n")
    assert (rw / "from-ceph.txt").read_text() == "written in Ceph\n"

    # a read-only host mount of the same share shares the one ceph-fuse mount
    connector.mount(export, ro, True, creds)
    assert {"ro", "nosuid", "nodev"} <= (mountinfo.mount_options(ro) or set())
    with pytest.raises(OSError) as refused:
        (ro / "nope.txt").write_text("x")
    assert refused.value.errno == errno.EROFS
    assert len(ceph_fuse_for(backing)) == 1

    # the quota shows on the host mount (the guest's df sees the same)
    vfs = os.statvfs(rw)
    assert vfs.f_blocks * vfs.f_frsize == 64 * MIB

    connector.unmount(rw)  # the read-only one still uses the backing mount
    assert mountinfo.is_mountpoint(backing) and keyring.exists()
    assert (ro / "from-ceph.txt").read_text() == "written in Ceph\n"
    connector.unmount(ro)  # the last one: backing mount, key and ceph-fuse go
    connector.unmount(ro)  # idempotent
    assert not mountinfo.is_mountpoint(backing) and not keyring.exists()
    assert not (tmp_path / "cephfs" / "share-a").exists()
    assert mountinfo.mount_points(tmp_path) == []


def test_the_key_opens_only_its_share(ceph_cluster: CephCluster, tmp_path: Path) -> None:
    mine = ceph_cluster.subvolume_create("conn-mine", 16 * MIB)
    theirs = ceph_cluster.subvolume_create("conn-theirs", 16 * MIB)
    key = ceph_cluster.subvolume_authorize("conn-mine", "attachfs-conn-only")
    connector = CephFsConnector(tmp_path / "mounts", tmp_path / "cephfs", mount_timeout=10)
    creds = HostCredentials("attachfs-conn-only", key)
    with pytest.raises(PermanentError, match="could not mount CephFS share share-theirs"):
        connector.mount(ceph_cluster.export_location(theirs), tmp_path / "mounts" / "share-theirs",
                        False, creds)
    assert mountinfo.mount_points(tmp_path) == []
    assert not (tmp_path / "cephfs" / "share-theirs").exists()  # no key left behind
    connector.mount(ceph_cluster.export_location(mine), tmp_path / "mounts" / "share-mine",
                    False, creds)
    connector.unmount(tmp_path / "mounts" / "share-mine")


def test_unreachable_monitors_are_named(ceph_cluster: CephCluster, tmp_path: Path) -> None:
    path = ceph_cluster.subvolume_create("conn-mons", 16 * MIB)
    key = ceph_cluster.subvolume_authorize("conn-mons", "attachfs-conn-mons")
    connector = CephFsConnector(tmp_path / "mounts", tmp_path / "cephfs", mount_timeout=3)
    with pytest.raises(PermanentError, match=r"from monitors 127\.0\.0\.1:9 "):
        connector.mount(f"127.0.0.1:9:{path}", tmp_path / "mounts" / "share-m", False,
                        HostCredentials("attachfs-conn-mons", key))
    assert mountinfo.mount_points(tmp_path) == []
    assert not (tmp_path / "cephfs" / "share-m").exists()
    wait_for("ceph-fuse to exit",
             lambda: ceph_fuse_for(tmp_path / "cephfs" / "share-m" / "mnt") == [], 30)


def test_a_backing_mount_left_by_a_crash_is_released(ceph_cluster: CephCluster,
                                                     tmp_path: Path) -> None:
    """The agent unmounts host mounts through the mount table, then asks connectors to release
    what no host mount uses: a crash between the two leaves a backing mount the next call (or
    the agent's repair) releases; one still in use is kept."""
    path = ceph_cluster.subvolume_create("conn-crash", 16 * MIB)
    key = ceph_cluster.subvolume_authorize("conn-crash", "attachfs-conn-crash")
    creds = HostCredentials("attachfs-conn-crash", key)
    connector = CephFsConnector(tmp_path / "mounts", tmp_path / "cephfs")
    target = tmp_path / "mounts" / "share-c"
    connector.mount(ceph_cluster.export_location(path), target, False, creds)
    assert connector.release_unused() == []  # in use: kept
    mountinfo.unmount(target)  # the host mount goes; the agent dies before releasing
    assert mountinfo.is_mountpoint(tmp_path / "cephfs" / "share-c" / "mnt")
    assert connector.release_unused() == ["CephFS share share-c (ceph-fuse mount and key)"]
    assert mountinfo.mount_points(tmp_path) == [] and not (tmp_path / "cephfs" / "share-c").exists()
    # ceph-fuse exits on its own once its mount is gone (a moment later)
    wait_for("ceph-fuse to exit",
             lambda: ceph_fuse_for(tmp_path / "cephfs" / "share-c" / "mnt") == [], 30)
