"""The NFS connector's choices that need no server: export locations, which client mounts, and
clear refusals (tests/nfs mounts real Ganesha exports); and the static provider."""

from __future__ import annotations

from pathlib import Path

import pytest

from attachfs.config import StaticShare, load_config
from attachfs.errors import BadRequest, NotFound, PermanentError
from attachfs.storage.base import RequestContext
from attachfs.storage.nfs import NfsConnector, NfsExport, parse_export
from attachfs.storage.static import StaticShareProvider, keyring_key

SHARE = "6f1c5a2e-1b7d-4c39-9a51-3f4f0f6b2a10"
ALICE = RequestContext("alice", "p1")
BOB = RequestContext("bob", "p2")


@pytest.mark.parametrize("location,export", [
    ("10.0.0.10:/path/to/share", NfsExport("10.0.0.10", 2049, "/path/to/share")),
    ("nfs.example.org:/", NfsExport("nfs.example.org", 2049, "/")),
    ("[fd00::1]:/export/", NfsExport("fd00::1", 2049, "/export")),
    ("nfs://127.0.0.1:20490/export", NfsExport("127.0.0.1", 20490, "/export")),
    ("nfs://[fd00::1]/a/b", NfsExport("fd00::1", 2049, "/a/b")),
])
def test_export_locations(location: str, export: NfsExport) -> None:
    assert parse_export(location) == export


@pytest.mark.parametrize("location", [
    "10.0.0.10:relative/path", "10.0.0.10", "nfs://h:0/x", "nfs://h:99999/x", "h:/a/../etc",
    "-o:/x", "nfs://h/a b", "",
])
def test_bad_export_locations_are_refused(location: str) -> None:
    with pytest.raises(PermanentError, match="NFS export location"):
        parse_export(location)


def test_kernel_client_refused_clearly_when_the_kernel_has_none(tmp_path: Path) -> None:
    proc = tmp_path / "filesystems"
    proc.write_text("nodev\tsysfs\nnodev\tproc\n\text4\n")
    connector = NfsConnector(tmp_path / "mounts", tmp_path / "nfs", client="kernel",
                             proc_filesystems=proc)
    assert connector.uses_kernel_client()  # forced, even here: the mount is refused below
    with pytest.raises(PermanentError, match="kernel has no nfs4"):
        connector.mount("10.0.0.10:/path/to/share", tmp_path / "mounts" / "s1", read_only=False)
    assert not (tmp_path / "mounts" / "s1").exists() and list((tmp_path / "nfs").iterdir()) == []
    with pytest.raises(PermanentError, match="escapes its root"):
        connector.mount("10.0.0.10:/x", tmp_path / "elsewhere", read_only=False)
    connector.unmount(tmp_path / "mounts" / "s1")  # idempotent: nothing mounted


def test_auto_takes_the_kernel_client_only_where_there_is_one(tmp_path: Path) -> None:
    without, with_ = tmp_path / "without", tmp_path / "with"
    without.write_text("nodev\tproc\n\text4\n")
    with_.write_text("nodev\tproc\n\text4\nnodev\tnfs\nnodev\tnfs4\n")
    assert not NfsConnector(tmp_path, tmp_path, proc_filesystems=without).uses_kernel_client()
    assert NfsConnector(tmp_path, tmp_path, proc_filesystems=with_).uses_kernel_client()
    assert not NfsConnector(tmp_path, tmp_path, client="fuse",
                            proc_filesystems=with_).uses_kernel_client()


# ---- the static provider ---------------------------------------------------------------------

def _static(**kw: object) -> StaticShare:
    return StaticShare.model_validate({"id": SHARE, "name": "data",
                                       "export": "nfs://127.0.0.1:20490/export", **kw})


def test_static_share_visibility_and_access() -> None:
    provider = StaticShareProvider([_static(project_id="p1", size_gib=5)])
    info = provider.get_share(SHARE.upper(), ALICE)
    assert (info.id, info.protocol, info.size_gib, info.export_locations) == (
        SHARE, "NFS", 5, ("nfs://127.0.0.1:20490/export",))
    with pytest.raises(NotFound):
        provider.get_share(SHARE, BOB)  # another project's export
    assert provider.grant_access(SHARE, "h1", "rw", "attached", ALICE)
    assert provider.access_levels([SHARE, "elsewhere"], "h1") == {SHARE: "rw"}
    assert provider.revoke_access(SHARE, "h1", ALICE)
    assert provider.host_credentials(SHARE, "h1") is None
    # an export for every project
    assert StaticShareProvider([_static()]).get_share(SHARE, BOB).scope == "global"


def test_static_read_only_export_refuses_read_write() -> None:
    provider = StaticShareProvider([_static(access_level="ro")])
    with pytest.raises(PermanentError, match="exported read-only: attach it read-only"):
        provider.grant_access(SHARE, "h1", "rw", "attached", ALICE)
    assert provider.grant_access(SHARE, "h1", "ro", "attached", ALICE)


def test_static_shares_are_checked_when_loaded(tmp_path: Path) -> None:
    with pytest.raises(BadRequest, match="declared twice"):
        StaticShareProvider([_static(), _static(name="again")])
    with pytest.raises(BadRequest, match="NFS export location"):
        StaticShareProvider([_static(export="not-an-export")])
    conf = tmp_path / "attachfs.toml"
    conf.write_text(f'[[static_shares]]\nid = "{SHARE}"\nname = "data"\n'
                    'export = "10.0.0.5:/srv/data"\nprotocol = "GLUSTERFS"\n')
    with pytest.raises(BadRequest, match="invalid configuration"):
        load_config(conf)  # NFS and CEPHFS only
    conf.write_text(f'[[static_shares]]\nid = "{SHARE}"\nname = "data"\n'
                    'export = "10.0.0.5:/srv/data"\n')
    assert load_config(conf).static_shares[0].export == "10.0.0.5:/srv/data"


def test_static_cephfs_share_reads_its_key_from_the_keyring(tmp_path: Path) -> None:
    keyring = tmp_path / "ceph.client.web.keyring"
    keyring.write_text("[client.other]\n\tkey = AAAAotherotherotherother==\n"
                       "[client.web]\n\tkey = AQBwebwebwebwebwebweb==\n\tcaps mds = \"allow rw\"\n")
    share = _static(protocol="CEPHFS", export="127.0.0.1:6789:/volumes/_nogroup/web",
                    cephx_id="web", cephx_keyring=str(keyring))
    provider = StaticShareProvider([share])
    assert provider.get_share(SHARE, ALICE).protocol == "CEPHFS"
    creds = provider.host_credentials(SHARE, "h1")
    assert creds is not None and (creds.auth_id, creds.key) == ("web", "AQBwebwebwebwebwebweb==")
    assert "AQB" not in repr(creds)  # a secret: kept out of logs
    with pytest.raises(PermanentError, match="no key for client.nobody"):
        keyring_key(keyring, "nobody")
    with pytest.raises(PermanentError, match="cannot read the keyring"):
        keyring_key(tmp_path / "missing", "web")
    with pytest.raises(BadRequest, match="needs cephx_id and cephx_keyring"):
        StaticShareProvider([_static(protocol="CEPHFS", export="127.0.0.1:6789:/v")])
    with pytest.raises(BadRequest, match="CephFS export location"):
        StaticShareProvider([_static(protocol="CEPHFS", export="no-path", cephx_id="web",
                                     cephx_keyring=str(keyring))])
