"""What attachfs will rely on, proved against the real cluster (tests/ceph/conftest.py): a
subvolume has the size asked; a key authorized for it mounts it (ceph-fuse, key only) and reads
and writes, sees its size in `df`, is stopped at its quota, and is refused elsewhere; a deleted
auth ID mounts nothing; and a stopped cluster leaves no process and no mount."""

from __future__ import annotations

import errno
import os
import re
import subprocess
import uuid
from pathlib import Path

import pytest

from harness.ceph import FS_NAME, CephCluster
from harness.cephfuse import CephMountError
from harness.process import proc_stat, processes_mentioning
from tests.ceph_fixture import CEPH_TEST

pytestmark = CEPH_TEST

MiB = 1 << 20
# A multiple of 4 MiB: ceph-fuse reports a quota to statfs in 4 MiB blocks.
SIZE = 64 * MiB
# The MDS refuses a path the key's caps do not cover.
REFUSED = re.compile(r"ceph mount failed with \(1\) Operation not permitted")
# The mon refuses a key it does not know (its entity deleted): ceph-fuse ends before it asks
# for the filesystem.
UNKNOWN_KEY = re.compile(r"handle_auth_bad_method[^\n]*\n.*failed to fetch mon config", re.S)


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class Subvolume:
    """A subvolume of SIZE and a key authorized (rw) for it alone."""

    def __init__(self, cluster: CephCluster) -> None:
        self.name, self.auth_id = _name("sv"), _name("t")
        self.path = cluster.subvolume_create(self.name, SIZE)
        self.key = cluster.subvolume_authorize(self.name, self.auth_id)


@pytest.fixture(scope="module")
def sv_a(ceph_cluster: CephCluster) -> Subvolume:
    return Subvolume(ceph_cluster)


@pytest.fixture(scope="module")
def sv_b(ceph_cluster: CephCluster) -> Subvolume:
    return Subvolume(ceph_cluster)


def ceph_fuse_mounts() -> list[Path]:
    """Every ceph-fuse mount on the host (mountinfo: the type follows " - ")."""
    with open("/proc/self/mountinfo") as f:
        return [Path(line.split()[4]) for line in f
                if line.split(" - ", 1)[1].startswith("fuse.ceph-fuse ")]


def test_subvolume_has_the_size_asked(ceph_cluster: CephCluster, sv_a: Subvolume) -> None:
    assert sv_a.path.startswith(f"/volumes/_nogroup/{sv_a.name}/")
    info = ceph_cluster.ceph_json("fs", "subvolume", "info", FS_NAME, sv_a.name)
    assert info["bytes_quota"] == SIZE
    assert info["path"] == sv_a.path


def test_its_key_mounts_it_and_reads_and_writes(ceph_cluster: CephCluster, sv_a: Subvolume,
                                                tmp_path: Path) -> None:
    with ceph_cluster.fuse_mount(sv_a.path, tmp_path / "a", sv_a.auth_id, sv_a.key) as m:
        assert m.mountpoint in ceph_fuse_mounts()
        (m.mountpoint / "hello.txt").write_text("hello from the host\n")
        assert (m.mountpoint / "hello.txt").read_text() == "hello from the host\n"
        assert os.listdir(m.mountpoint) == ["hello.txt"]  # the subvolume is the mount's root
    assert not m.mounted() and m.proc.state() is None  # unmounted, ceph-fuse reaped
    assert not m.keyring.exists()
    # The file is in CephFS, where the admin sees it under the subvolume's path.
    with ceph_cluster.fuse_mount("/", tmp_path / "admin", "admin", ceph_cluster.admin_key) as adm:
        assert (adm.mountpoint / sv_a.path.lstrip("/") / "hello.txt").read_text() \
            == "hello from the host\n"


def test_its_key_is_refused_on_another_subvolume(ceph_cluster: CephCluster, sv_a: Subvolume,
                                                 sv_b: Subvolume, tmp_path: Path) -> None:
    with pytest.raises(CephMountError, match=REFUSED):
        ceph_cluster.fuse_mount(sv_b.path, tmp_path / "b", sv_a.auth_id, sv_a.key)
    assert tmp_path / "b" not in ceph_fuse_mounts()
    with pytest.raises(CephMountError, match=REFUSED):  # nor the whole filesystem
        ceph_cluster.fuse_mount("/", tmp_path / "root", sv_a.auth_id, sv_a.key)


def test_df_shows_the_subvolume_size(ceph_cluster: CephCluster, sv_b: Subvolume,
                                     tmp_path: Path) -> None:
    with ceph_cluster.fuse_mount(sv_b.path, tmp_path / "b", sv_b.auth_id, sv_b.key) as m:
        df = subprocess.run(["df", "-B1", "--output=size", str(m.mountpoint)],
                            capture_output=True, text=True, check=True).stdout.split()
        assert int(df[-1]) == SIZE, df


def test_writing_past_the_quota_fails(ceph_cluster: CephCluster, tmp_path: Path) -> None:
    sv = Subvolume(ceph_cluster)
    with ceph_cluster.fuse_mount(sv.path, tmp_path / "q", sv.auth_id, sv.key) as m:
        fd = os.open(m.mountpoint / "big", os.O_WRONLY | os.O_CREAT, 0o644)
        written, chunk = 0, os.urandom(4 * MiB)
        try:
            with pytest.raises(OSError) as failure:
                while written < 4 * SIZE:
                    written += os.write(fd, chunk)
                os.fsync(fd)
        finally:
            os.close(fd)
        assert failure.value.errno == errno.EDQUOT, failure.value
        assert "Disk quota exceeded" in str(failure.value)
        # Never before the quota; after it, within the loop's 4 x SIZE. Ceph documents quotas
        # as imprecise (the client learns the tree's size with a delay): measured over 30
        # runs, 0 to 28 MiB past a 64 MiB quota, half of them exactly at it.
        assert written >= SIZE, written


def test_a_deleted_auth_id_mounts_nothing(ceph_cluster: CephCluster, tmp_path: Path) -> None:
    sv = Subvolume(ceph_cluster)
    with ceph_cluster.fuse_mount(sv.path, tmp_path / "before", sv.auth_id, sv.key):
        pass  # the key worked
    assert ceph_cluster.auth_exists(sv.auth_id)
    ceph_cluster.auth_delete(sv.auth_id)
    assert not ceph_cluster.auth_exists(sv.auth_id)
    with pytest.raises(CephMountError, match=UNKNOWN_KEY):
        ceph_cluster.fuse_mount(sv.path, tmp_path / "after", sv.auth_id, sv.key)
    assert tmp_path / "after" not in ceph_fuse_mounts()


def test_stop_leaves_no_process_and_no_mount(ceph_cluster: CephCluster, tmp_path: Path) -> None:
    """A second cluster, beside the session's (its own free ports), stopped with a ceph-fuse
    mount still on: nothing of it is left, not even a zombie."""
    second = CephCluster(tmp_path / "second")
    try:
        second.start()
        assert set(second.mon_ports).isdisjoint(ceph_cluster.mon_ports)
        assert ceph_cluster.not_ready() == []  # both run side by side
        sv = Subvolume(second)
        m = second.fuse_mount(sv.path, tmp_path / "m", sv.auth_id, sv.key)
        (m.mountpoint / "f").write_bytes(b"x" * MiB)
        tracked = [*second.daemons, m.proc]
        assert {p.name.split(".")[0] for p in second.daemons} == {"mon", "mgr", "osd", "mds"}
        assert all(p.alive() for p in tracked)
        second.stop()
    finally:
        second.stop(check=False)
    for p in tracked:  # no /proc entry for the pid with that start time: not even a zombie
        stat = proc_stat(p.pid)
        assert stat is None or stat[1] != p.start_time, f"{p.name} pid {p.pid}: {stat}"
    assert processes_mentioning(second.dir) == []
    assert _ceph_zombies_of_mine() == []
    assert [p for p in ceph_fuse_mounts() if tmp_path in p.parents] == []
    assert second.leftovers() == []


def _ceph_zombies_of_mine() -> list[str]:
    """ceph-* processes that exited and that this process has not reaped."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        state, ppid = stat[stat.rindex(")") + 2:].split()[:2]
        if comm.startswith("ceph") and state == "Z" and int(ppid) == os.getpid():
            found.append(f"{entry} ({comm})")
    return found
