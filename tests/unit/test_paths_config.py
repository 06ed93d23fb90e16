from pathlib import Path

import pytest

from attachfs.api import microversion
from attachfs.config import load_config
from attachfs.errors import BadRequest, NotAcceptable, PermanentError
from attachfs.paths import check_under, under_root
from attachfs.storage import mountinfo


def test_paths_stay_under_root(tmp_path: Path) -> None:
    assert under_root(tmp_path, "a", "b") == tmp_path.resolve() / "a" / "b"
    with pytest.raises(PermanentError):
        under_root(tmp_path, "..", "etc")
    (tmp_path / "link").symlink_to("/etc")
    with pytest.raises(PermanentError):
        under_root(tmp_path, "link", "passwd")
    with pytest.raises(PermanentError):
        check_under(tmp_path, Path("/etc/passwd"))
    assert check_under(tmp_path, tmp_path / "x") == tmp_path.resolve() / "x"


def test_config_defaults_and_overrides(tmp_path: Path) -> None:
    cfg = load_config(None, {"state_dir": str(tmp_path)})
    assert cfg.db_url == f"sqlite:///{tmp_path.resolve()}/attachfs.db"
    assert cfg.storage_root == tmp_path.resolve() / "shares"
    assert cfg.listen_address() == ("127.0.0.1", 8774)
    f = tmp_path / "a.toml"
    f.write_text('[api]\nlisten = "127.0.0.1:9999"\n[agent]\nhost = "h1"\n')
    cfg = load_config(f, {"api.listen": "127.0.0.1:7777"})
    assert cfg.listen_address() == ("127.0.0.1", 7777) and cfg.agent.host == "h1"
    f.write_text("[api]\nbogus = 1\n")
    with pytest.raises(BadRequest, match="bogus"):
        load_config(f)
    with pytest.raises(BadRequest):
        load_config(tmp_path / "missing.toml")


def test_sample_config_is_valid() -> None:
    sample = Path(__file__).parents[2] / "etc" / "attachfs.toml.sample"
    cfg = load_config(sample)
    assert cfg.api.auth_strategy == "noauth"


def test_microversion_parse() -> None:
    assert str(microversion.parse("compute 2.97", None)) == "2.97"
    assert str(microversion.parse("volume 3.0, compute 2.5", None)) == "2.5"
    assert str(microversion.parse(None, "2.10")) == "2.10"
    assert str(microversion.parse(None, None)) == "2.1"
    with pytest.raises(NotAcceptable):
        microversion.parse("compute 3.0", None)
    with pytest.raises(NotAcceptable):
        microversion.parse("compute 2.0", None)
    with pytest.raises(BadRequest):
        microversion.parse("compute 2.x", None)


def test_mountinfo_sees_a_bind_mount(tmp_path: Path) -> None:
    import os

    if os.geteuid() != 0:
        pytest.skip("bind mounts need root")
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    mountinfo.run(["mount", "--bind", str(src), str(dst)])
    try:
        assert mountinfo.is_mountpoint(dst)
        assert dst in mountinfo.mount_points(tmp_path)
    finally:
        mountinfo.unmount(dst)
    assert not dst.exists()
