"""The CephFS connector's checks before anything runs: export locations as Manila's CephFS
driver writes them, credentials, the ceph-fuse binary. (Mounting for real: tests/ceph.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from attachfs.errors import PermanentError
from attachfs.storage.base import HostCredentials
from attachfs.storage.cephfs import CephExport, CephFsConnector, parse_export

KEY = "AQBdAvFmAAAAABAAv0mZ0m0Q5o7i8T1eZ8p9Kw=="


@pytest.mark.parametrize(("export", "parsed"), [
    ("127.0.0.1:6789:/volumes/_nogroup/a1/b2", CephExport(("127.0.0.1:6789",), "/volumes/_nogroup/a1/b2")),
    ("10.0.0.1:6789,10.0.0.2:6789:/v/x", CephExport(("10.0.0.1:6789", "10.0.0.2:6789"), "/v/x")),
    ("[fd00::1]:3300:/v", CephExport(("[fd00::1]:3300",), "/v")),
    ("mon-a:/", CephExport(("mon-a",), "/")),
])
def test_export_locations(export: str, parsed: CephExport) -> None:
    assert parse_export(export) == parsed


@pytest.mark.parametrize("export", ["", "/volumes/x", "127.0.0.1:6789", "a b:/x",
                                    "127.0.0.1:6789:/v/../../etc", "host;rm:/x", ",:/x"])
def test_bad_export_locations(export: str) -> None:
    with pytest.raises(PermanentError):
        parse_export(export)


def _connector(tmp_path: Path, ceph_fuse: str = "ceph-fuse") -> CephFsConnector:
    return CephFsConnector(tmp_path / "mounts", tmp_path / "cephfs", ceph_fuse)


def test_refusals_before_anything_runs(tmp_path: Path) -> None:
    c = _connector(tmp_path, ceph_fuse=str(tmp_path / "no-ceph-fuse"))
    target = tmp_path / "mounts" / "share1"
    export = "127.0.0.1:6789:/volumes/_nogroup/a/b"
    with pytest.raises(PermanentError, match="no cephx key"):
        c.mount(export, target, read_only=False)
    with pytest.raises(PermanentError, match="unusable cephx ID or key"):
        c.mount(export, target, False, HostCredentials("attachfs-h1", "not a key!"))
    with pytest.raises(PermanentError, match="ceph-fuse is not installed"):
        c.mount(export, target, False, HostCredentials("attachfs-h1", KEY))
    with pytest.raises(PermanentError):  # a target outside the mount root
        c.mount(export, tmp_path / "elsewhere", False, HostCredentials("attachfs-h1", KEY))
    assert not (tmp_path / "cephfs" / "share1" / "keyring").exists()  # no key left behind


def test_credentials_keep_the_key_out_of_reprs() -> None:
    assert KEY not in repr(HostCredentials("attachfs-h1", KEY))
