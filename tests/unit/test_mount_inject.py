"""The container mount injector's path rules (virt/mount_inject.py), without a container: the
target is walked from a root one component at a time and never through a symlink."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from attachfs.virt import mount_inject


@pytest.mark.parametrize("target", ["relative", "/a//b", "/a/../b", "/a/./b", "/a/", ""])
def test_targets_must_be_normalized_absolute_paths(target: str) -> None:
    with pytest.raises(OSError) as info:
        mount_inject.components(target)
    assert info.value.errno == errno.EINVAL


def test_walk_makes_missing_directories(tmp_path: Path) -> None:
    fd = mount_inject.open_target(str(tmp_path / "a" / "b"), create=True)
    try:
        assert os.path.samefile(f"/proc/self/fd/{fd}", tmp_path / "a" / "b")
    finally:
        os.close(fd)


@pytest.mark.parametrize("planted", ["to-root", "to-file"])
def test_walk_never_goes_through_a_symlink_or_a_file(tmp_path: Path, planted: str) -> None:
    (tmp_path / "to-root").symlink_to("/")
    (tmp_path / "to-file").write_text("x")
    with pytest.raises(OSError) as info:
        mount_inject.open_target(str(tmp_path / planted / "etc"), create=True)
    assert info.value.errno in (errno.ELOOP, errno.ENOTDIR)
    assert not Path("/etc/etc").exists()


def test_main_reports_one_line_and_status_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert mount_inject.main(["detach", str(2 ** 22 + 12345), "/mnt/x"]) == 1
    assert capsys.readouterr().err.count("\n") == 1
