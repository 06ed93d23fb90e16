"""attachfs's NFS FUSE process (storage/nfs_fuse.py) against a real NFSv4 server (nfs-ganesha,
tests/nfs_fixture.py), started as the connector starts it (its own session, stderr to a file)
and checked both through the mount and in the directory the server exports: data both ways,
names, attributes, links, df, a 64 MiB file, new files owned by the calling user, read-only
mounts, failures that print one line and mount nothing, unmounting, and a server restart under
a live mount."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mfusepy
import pytest

from attachfs.storage import mountinfo
from harness.ganesha import GaneshaServer
from harness.process import free_port, wait_for
from tests.nfs_fixture import NFS_TEST

pytestmark = NFS_TEST

MiB = 1 << 20
PREFIX = "attachfs-nfs-fuse: "
# Not in /etc/passwd: setpriv takes numbers, and the server stores numbers.
USER, GROUP = 4321, 4322


class FuseProc:
    """One `python -m attachfs.storage.nfs_fuse …`, run as the connector runs it."""

    def __init__(self, proc: subprocess.Popen[bytes], mountpoint: Path, log: Path) -> None:
        self.proc, self.mountpoint, self.log = proc, mountpoint, log
        self.mount_seconds = 0.0

    @classmethod
    def start(cls, server: GaneshaServer, mountpoint: Path, *args: str,
              export: str = "/export", port: int = 0) -> FuseProc:
        """Returns once the mount is in /proc/self/mountinfo or the process has exited."""
        mountpoint.mkdir(parents=True, exist_ok=True)
        log = mountpoint.parent / f"{mountpoint.name}.stderr"
        argv = [sys.executable, "-m", "attachfs.storage.nfs_fuse", "--server", server.host,
                "--port", str(port or server.port), "--export", export, *args, str(mountpoint)]
        began = time.monotonic()
        with open(log, "wb") as err:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=err, start_new_session=True)
        handle = cls(proc, mountpoint, log)
        wait_for(f"{mountpoint} mounted, or the FUSE process gone",
                 lambda: handle.mounted() or proc.poll() is not None, timeout=30, interval=0.01)
        handle.mount_seconds = time.monotonic() - began
        return handle

    def mounted(self) -> bool:
        return mountinfo.is_mountpoint(self.mountpoint)

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def unmount(self) -> int:
        """`umount` from outside; the process's exit status."""
        subprocess.run(["umount", str(self.mountpoint)], check=True, timeout=30)
        return self.proc.wait(timeout=30)

    def cleanup(self) -> None:
        """Whatever a failed test left: the mount (lazily) and the process."""
        if self.mounted():
            subprocess.run(["umount", "-l", str(self.mountpoint)], check=False, timeout=30)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


@pytest.fixture(scope="class")
def mounted(ganesha_server: GaneshaServer, tmp_path_factory: pytest.TempPathFactory,
            pytestconfig: pytest.Config) -> Iterator[FuseProc]:
    """The export mounted read-write for TestThroughOneMount; unmounted at its end, when the
    process must exit 0 having printed nothing (but `_unexpected`'s exception)."""
    fuse = FuseProc.start(ganesha_server, tmp_path_factory.mktemp("nfs-fuse") / "mnt",
                          "--timeout", "10")
    try:
        assert fuse.mounted(), fuse.stderr()
        _report(pytestconfig, f"FUSE mount ready in {fuse.mount_seconds:.2f}s "
                              f"(process start, NFSv4.1 connect, export check, mount)")
        yield fuse
        assert fuse.unmount() == 0, fuse.stderr()
        assert _unexpected(fuse.stderr()) == []
    finally:
        fuse.cleanup()


def _report(config: pytest.Config, line: str) -> None:
    """A measured figure, on the terminal even when output is captured."""
    capture = config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        sys.stderr.write(f"\n[nfs-fuse] {line}\n")


@dataclass
class Both:
    """One directory seen through the mount and in the exported directory behind it."""

    mnt: Path
    backend: Path


@pytest.fixture
def both(mounted: FuseProc, ganesha_server: GaneshaServer,
         request: pytest.FixtureRequest) -> Both:
    """A fresh directory for the test, made through the mount."""
    name = request.node.name
    (mounted.mountpoint / name).mkdir()
    return Both(mounted.mountpoint / name, ganesha_server.export_dir / name)


def _unexpected(stderr: str) -> list[str]:
    """What a FUSE process printed besides ending a session that a copy of its mount in
    another mount namespace kept alive: on this host libvirt starts qemus (other tests, CI) in
    namespaces copied from the host's, at any time."""
    return [line for line in stderr.splitlines() if "still holds a copy" not in line]


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _as_user(cwd: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """`argv` as USER:GROUP with no supplementary groups, in `cwd` (entered as root: the
    mount's parents under pytest's 0700 temporary directory are closed to other users)."""
    return subprocess.run(["setpriv", f"--reuid={USER}", f"--regid={GROUP}", "--clear-groups",
                           "--", *argv], cwd=cwd, capture_output=True, text=True, timeout=30,
                          check=False)


# ---- the mount ----------------------------------------------------------------------------------
class TestThroughOneMount:
    """Through one read-write mount (`mounted`). Class-scoped, it is gone before the server
    restarts in the last test: its unmount's statfs would otherwise be its first call after the
    restart, which nfs-rs fails (to be retried on a new client) only after ~5 s."""

    def test_mount_table_entry(self, mounted: FuseProc) -> None:
        with open("/proc/self/mountinfo") as f:
            lines = [line.split() for line in f if line.split()[4] == str(mounted.mountpoint)]
        assert len(lines) == 1, lines
        fields = lines[0]
        sep = fields.index("-")
        fstype, source, super_options = fields[sep + 1:sep + 4]
        assert fstype == "fuse.attachfs-nfs"
        assert source == "nfs:127.0.0.1:/export"
        assert {"rw", "nosuid", "nodev"} <= set(fields[5].split(","))
        assert {"allow_other", "default_permissions"} <= set(super_options.split(","))

    def test_files_both_ways(self, both: Both) -> None:
        (both.mnt / "from-mount.txt").write_text("written through the FUSE mount\n")
        assert (both.backend / "from-mount.txt").read_text() == "written through the FUSE mount\n"
        (both.backend / "from-server.txt").write_text("written in the exported directory\n")
        assert (both.mnt / "from-server.txt").read_text() == "written in the exported directory\n"
        with open(both.mnt / "from-mount.txt", "r+b") as f:  # a write at an offset
            f.seek(8)
            f.write(b"THROUGH")
        with open(both.mnt / "from-mount.txt", "ab") as f:
            f.write(b"appended\n")
        assert (both.backend / "from-mount.txt").read_bytes() \
            == b"written THROUGH the FUSE mount\nappended\n"
        assert os.stat(both.mnt / "from-mount.txt").st_size \
            == os.stat(both.backend / "from-mount.txt").st_size
        # the server's owner and mode, as a root caller made it (the kernel applied the umask)
        st = os.stat(both.backend / "from-mount.txt")
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, 0o666 & ~_umask())

    def test_names(self, both: Both) -> None:
        (both.mnt / "d1" / "sub").mkdir(parents=True, mode=0o750)
        assert stat.S_IMODE(os.stat(both.backend / "d1" / "sub").st_mode) == 0o750 & ~_umask()
        (both.mnt / "d1" / "sub" / "f").write_text("f")
        os.rename(both.mnt / "d1" / "sub" / "f", both.mnt / "d1" / "g")
        os.rename(both.mnt / "d1" / "sub", both.mnt / "d2")
        assert sorted(os.listdir(both.backend)) == ["d1", "d2"]
        assert os.listdir(both.backend / "d1") == ["g"]
        assert sorted(os.listdir(both.mnt)) == sorted(os.listdir(both.backend))
        listing = subprocess.run(["ls", "-a", str(both.mnt)], capture_output=True, text=True,
                                 check=True).stdout.split()
        assert listing == [".", "..", "d1", "d2"]
        with pytest.raises(OSError) as full:
            os.rmdir(both.mnt / "d1")
        assert full.value.errno == errno.ENOTEMPTY
        with pytest.raises(FileNotFoundError):
            os.unlink(both.mnt / "d1" / "missing")
        with pytest.raises(FileExistsError):
            os.mkdir(both.mnt / "d2")
        os.unlink(both.mnt / "d1" / "g")
        os.rmdir(both.mnt / "d1")
        os.rmdir(both.mnt / "d2")
        assert os.listdir(both.backend) == []
        # removed behind the mount's back: gone once the kernel's 1 s attribute cache expires
        (both.backend / "h").write_text("h")
        assert (both.mnt / "h").exists()
        (both.backend / "h").unlink()
        wait_for("h gone from the mount", lambda: not (both.mnt / "h").exists(), timeout=5,
                 interval=0.1)

    def test_attributes(self, both: Both) -> None:
        path, backend = both.mnt / "f", both.backend / "f"
        path.write_bytes(b"0123456789")
        os.truncate(path, 4)  # by name
        assert backend.read_bytes() == b"0123"
        with open(path, "r+b") as f:  # by open file
            f.truncate(2)
        assert backend.read_bytes() == b"01"
        os.truncate(path, 6)
        assert backend.read_bytes() == b"01\0\0\0\0"
        with open(path, "wb"):  # O_TRUNC
            pass
        assert backend.stat().st_size == 0
        os.chmod(path, 0o640)
        assert stat.S_IMODE(backend.stat().st_mode) == 0o640
        os.chown(path, 1234, 5678)
        assert (backend.stat().st_uid, backend.stat().st_gid) == (1234, 5678)
        os.utime(path, ns=(1_000_000_001_000, 2_000_000_002_000))
        assert (backend.stat().st_atime_ns, backend.stat().st_mtime_ns) \
            == (1_000_000_001_000, 2_000_000_002_000)
        subprocess.run(["touch", str(path)], check=True)  # both times now (UTIME_NOW)
        assert time.time() - backend.stat().st_mtime < 60
        assert backend.stat().st_atime_ns == backend.stat().st_mtime_ns
        # touch -m: the access time left as it is (UTIME_OMIT)
        os.utime(path, ns=(1_000_000_001_000, 2_000_000_002_000))
        subprocess.run(["touch", "-m", "-d", "@1500000000", str(path)], check=True)
        if mfusepy.fuse_version_major == 2:
            # libfuse 2.9 calls utimens only when both times change: one alone is dropped, and
            # the call succeeds (nfs_fuse's docstring; libfuse 3 has it right).
            assert backend.stat().st_mtime_ns == 2_000_000_002_000
        else:
            assert (backend.stat().st_atime_ns, backend.stat().st_mtime_ns) \
                == (1_000_000_001_000, 1_500_000_000 * 10**9)

    def test_links(self, both: Both) -> None:
        (both.mnt / "target").write_text("t")
        os.symlink("target", both.mnt / "link")
        assert os.readlink(both.backend / "link") == "target"
        assert (both.mnt / "link").read_text() == "t"
        os.symlink("../elsewhere", both.backend / "made-there")
        assert os.readlink(both.mnt / "made-there") == "../elsewhere"
        assert stat.S_ISLNK(os.lstat(both.mnt / "made-there").st_mode)
        os.link(both.mnt / "target", both.mnt / "hard")
        assert os.stat(both.backend / "target").st_nlink == 2
        assert os.stat(both.backend / "hard").st_ino == os.stat(both.backend / "target").st_ino
        assert os.stat(both.mnt / "hard").st_ino == os.stat(both.mnt / "target").st_ino

    def test_df_shows_the_export(self, mounted: FuseProc, ganesha_server: GaneshaServer) -> None:
        mnt, backend = os.statvfs(mounted.mountpoint), os.statvfs(ganesha_server.export_dir)
        assert mnt.f_blocks > 0 and mnt.f_bavail > 0 and mnt.f_files > 0
        size = mnt.f_blocks * mnt.f_frsize
        assert size == pytest.approx(backend.f_blocks * backend.f_frsize, rel=0.01)
        df = subprocess.run(["df", "-B1", "--output=source,size", str(mounted.mountpoint)],
                            capture_output=True, text=True, check=True).stdout.split()
        assert df[-2:] == ["nfs:127.0.0.1:/export", str(size)]

    def test_64_mib_file(self, both: Both, pytestconfig: pytest.Config) -> None:
        data = os.urandom(64 * MiB)
        want = hashlib.sha256(data).hexdigest()
        began = time.monotonic()
        fd = os.open(both.mnt / "big", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(data)
            for offset in range(0, len(data), MiB):
                assert os.write(fd, view[offset:offset + MiB]) == MiB
            os.fsync(fd)
        finally:
            os.close(fd)
        wrote = time.monotonic() - began
        began = time.monotonic()
        digest = hashlib.sha256()
        with open(both.mnt / "big", "rb", buffering=0) as f:  # a new open: not the page cache
            while chunk := f.read(MiB):
                digest.update(chunk)
        read = time.monotonic() - began
        _report(pytestconfig, f"64 MiB: written in {wrote:.2f}s ({64 / wrote:.0f} MiB/s), "
                              f"read in {read:.2f}s ({64 / read:.0f} MiB/s)")
        assert digest.hexdigest() == want
        assert hashlib.sha256((both.backend / "big").read_bytes()).hexdigest() == want
        os.unlink(both.mnt / "big")

    def test_new_files_belong_to_the_caller(self, both: Both) -> None:
        """allow_other lets another user in; default_permissions has the kernel check the mode
        bits; what that user makes is the user's on the server."""
        os.chmod(both.mnt, 0o777)
        assert _as_user(both.mnt, "touch", "mine").returncode == 0
        assert _as_user(both.mnt, "mkdir", "mydir").returncode == 0
        assert _as_user(both.mnt, "ln", "-s", "mine", "mylink").returncode == 0
        for name in ("mine", "mydir", "mylink"):
            st = os.lstat(both.backend / name)
            assert (st.st_uid, st.st_gid) == (USER, GROUP), name
        # touch's 0666 less the umask, which setpriv keeps
        assert stat.S_IMODE(os.stat(both.backend / "mine").st_mode) == 0o666 & ~_umask()
        # a setgid directory passes its group on, as on a local filesystem
        (both.mnt / "shared").mkdir()
        os.chown(both.mnt / "shared", 0, 777)
        os.chmod(both.mnt / "shared", 0o2777)
        assert _as_user(both.mnt / "shared", "touch", "f").returncode == 0
        st = os.stat(both.backend / "shared" / "f")
        assert (st.st_uid, st.st_gid) == (USER, 777)
        # the kernel refuses what the mode bits refuse
        (both.mnt / "closed").mkdir(mode=0o755)
        (both.mnt / "closed" / "secret").write_text("s")
        os.chmod(both.mnt / "closed" / "secret", 0o600)
        denied = _as_user(both.mnt / "closed", "touch", "x")
        assert denied.returncode != 0 and "Permission denied" in denied.stderr
        denied = _as_user(both.mnt / "closed", "cat", "secret")
        assert denied.returncode != 0 and "Permission denied" in denied.stderr
        assert not (both.backend / "closed" / "x").exists()


# ---- read-only -----------------------------------------------------------------------------------
def test_read_only_mount_refuses_writes(ganesha_server: GaneshaServer, tmp_path: Path) -> None:
    (ganesha_server.export_dir / "ro-file").write_text("read me\n")
    fuse = FuseProc.start(ganesha_server, tmp_path / "ro", "--read-only")
    try:
        assert fuse.mounted(), fuse.stderr()
        options = mountinfo.mount_options(fuse.mountpoint)
        assert options is not None and {"ro", "nosuid", "nodev"} <= options
        assert (fuse.mountpoint / "ro-file").read_text() == "read me\n"
        assert os.statvfs(fuse.mountpoint).f_flag & os.ST_RDONLY
        attempts = [
            lambda: open(fuse.mountpoint / "ro-file", "ab"),  # noqa: SIM115 - it must fail
            lambda: (fuse.mountpoint / "new").write_text("x"),
            lambda: os.mkdir(fuse.mountpoint / "dir"),
            lambda: os.unlink(fuse.mountpoint / "ro-file"),
            lambda: os.chmod(fuse.mountpoint / "ro-file", 0o600),
            lambda: os.utime(fuse.mountpoint / "ro-file"),
            lambda: os.truncate(fuse.mountpoint / "ro-file", 0),
        ]
        for attempt in attempts:
            with pytest.raises(OSError) as refused:
                attempt()
            assert refused.value.errno == errno.EROFS, refused.value
        assert (ganesha_server.export_dir / "ro-file").read_text() == "read me\n"
        assert fuse.unmount() == 0
    finally:
        fuse.cleanup()


def test_read_only_operations_refuse_writes_themselves(ganesha_server: GaneshaServer) -> None:
    """Behind the kernel's own `ro` check, the process refuses every change (EROFS)."""
    from mfusepy import FuseOSError

    from attachfs.storage.nfs_client import connect
    from attachfs.storage.nfs_fuse_ops import NfsOperations

    (ganesha_server.export_dir / "ro-ops").write_text("x")
    conn, export_conn, prefix = connect(ganesha_server.host, ganesha_server.port, "/export", 5)
    try:
        ops = NfsOperations(conn, export_conn, prefix, read_only=True)
        calls = [lambda: ops.open("/ro-ops", os.O_RDWR), lambda: ops.create("/n", 0o644, 0),
                 lambda: ops.mkdir("/n", 0o755), lambda: ops.unlink("/ro-ops"),
                 lambda: ops.rename("/ro-ops", "/n"), lambda: ops.chmod("/ro-ops", 0o600),
                 lambda: ops.truncate("/ro-ops", 0), lambda: ops.symlink("/n", "ro-ops"),
                 lambda: ops.utimens("/ro-ops")]
        for call in calls:
            with pytest.raises(FuseOSError) as refused:
                call()
            assert refused.value.errno == errno.EROFS
        fh = ops.open("/ro-ops", os.O_RDONLY)
        assert ops.read("/ro-ops", 10, 0, fh) == b"x"
        with pytest.raises(FuseOSError) as refused:
            ops.write("/ro-ops", b"y", 0, fh)
        assert refused.value.errno == errno.EROFS
        ops.release("/ro-ops", fh)
        assert ops.getattr("/ro-ops")["st_size"] == 1
    finally:
        export_conn.close()
        conn.close()


# ---- failures: one line, no mount ------------------------------------------------------------------
def _failed(fuse: FuseProc) -> str:
    """The one line a failed start printed (after checking that it mounted nothing)."""
    assert fuse.proc.wait(timeout=30) == 1
    assert not fuse.mounted()
    lines = fuse.stderr().splitlines()
    assert len(lines) == 1 and lines[0].startswith(PREFIX), lines
    return lines[0]


def test_wrong_export_mounts_nothing(ganesha_server: GaneshaServer, tmp_path: Path) -> None:
    line = _failed(FuseProc.start(ganesha_server, tmp_path / "a", export="/nope"))
    assert line == f"{PREFIX}export /nope not found on NFS server 127.0.0.1:{ganesha_server.port}"
    (ganesha_server.export_dir / "plain").write_text("not a directory")
    line = _failed(FuseProc.start(ganesha_server, tmp_path / "b", export="/export/plain"))
    assert line == (f"{PREFIX}export /export/plain on NFS server 127.0.0.1:"
                    f"{ganesha_server.port} is not a directory (file)")


def test_no_server_mounts_nothing(ganesha_server: GaneshaServer, tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    line = _failed(FuseProc.start(ganesha_server, tmp_path / "a", port=port))
    assert line.startswith(f"{PREFIX}cannot connect to NFS server 127.0.0.1:{port} "
                           f"(export /export): NfsConnectionError: Connection refused"), line


# ---- the end of a mount ------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["umount", "SIGTERM", "umount, a copy held elsewhere"])
def test_the_process_ends_with_its_mount(ganesha_server: GaneshaServer, tmp_path: Path,
                                         how: str) -> None:
    """Whichever way the mount ends, the process exits 0. A copy of the mount in another mount
    namespace (libvirt's qemu: here `unshare -m`, after the mount) would keep the FUSE session
    alive after the umount: the process sees its mount gone and ends it."""
    fuse = FuseProc.start(ganesha_server, tmp_path / "m")
    holder = None
    try:
        assert fuse.mounted(), fuse.stderr()
        if how == "SIGTERM":  # libfuse unmounts
            # libfuse installs its handler just after mounting: a SIGTERM before kills
            wait_for("libfuse's SIGTERM handler", lambda: _catches(fuse.proc.pid, signal.SIGTERM),
                     timeout=10, interval=0.01)
            os.kill(fuse.proc.pid, signal.SIGTERM)
            assert fuse.proc.wait(timeout=30) == 0
        else:
            if how != "umount":
                holder = subprocess.Popen(["unshare", "--mount", "--propagation", "private",
                                           "--", "sleep", "60"])
                wait_for("the copy", lambda: str(fuse.mountpoint) in _mountinfo_of(holder),
                         timeout=10, interval=0.01)
            began = time.monotonic()
            assert fuse.unmount() == 0
            assert time.monotonic() - began < 10
        assert not fuse.mounted()
        if holder is not None:
            assert "still holds a copy: ending the FUSE session" in fuse.stderr()
        else:
            assert _unexpected(fuse.stderr()) == []
    finally:
        fuse.cleanup()
        if holder is not None:
            holder.kill()
            holder.wait()


def _catches(pid: int, sig: int) -> bool:
    """Whether process `pid` has a handler for `sig` (SigCgt in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (sig - 1)))
    return False


def _mountinfo_of(proc: subprocess.Popen[bytes]) -> str:
    try:
        return Path(f"/proc/{proc.pid}/mountinfo").read_text()
    except OSError:
        return ""


def test_server_restart_under_a_live_mount(ganesha_server: GaneshaServer,
                                           tmp_path: Path) -> None:
    """While the server is down a new mount fails at once (one line, nothing mounted); once it
    is back a live mount serves again: a new NFS client, its open files reopened by name.
    (--timeout 2: nfs-rs's first call after a restart fails only after ~5 s otherwise.)"""
    fuse = FuseProc.start(ganesha_server, tmp_path / "live", "--timeout", "2")
    try:
        assert fuse.mounted(), fuse.stderr()
        (fuse.mountpoint / "restart").mkdir()
        (fuse.mountpoint / "restart" / "kept").write_text("before the restart\n")
        with open(fuse.mountpoint / "restart" / "kept", "r+b", buffering=0) as kept:
            ganesha_server.stop()
            try:
                line = _failed(FuseProc.start(ganesha_server, tmp_path / "down"))
                assert line.startswith(f"{PREFIX}cannot connect to NFS server 127.0.0.1:"
                                       f"{ganesha_server.port} (export /export): "), line
            finally:
                ganesha_server.start()
            assert sorted(os.listdir(fuse.mountpoint / "restart")) == ["kept"]
            assert kept.read() == b"before the restart\n"
            kept.write(b"after\n")
        assert (ganesha_server.export_dir / "restart" / "kept").read_text() \
            == "before the restart\nafter\n"
        (fuse.mountpoint / "restart" / "new").write_text("new")
        assert (ganesha_server.export_dir / "restart" / "new").read_text() == "new"
        assert fuse.unmount() == 0
        # the first call after the restart timed out, was retried on a new client: no EIO
        lines = _unexpected(fuse.stderr())
        assert lines and all(line.endswith("reconnected (client 1)") for line in lines), lines
    finally:
        fuse.cleanup()
