"""What a tenant puts in its share never steers the host: symlinks, FIFOs, device nodes and
deep trees are not followed, opened or walked by usage reports and deletes; and a share cannot
be made larger than the host allows (400, nothing made)."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

from fastapi.testclient import TestClient

from attachfs.service import Parts
from attachfs.storage import mountinfo
from tests.conftest import create_share


def _plant(share_dir: Path, victim: Path) -> None:
    (share_dir / "to-victim").symlink_to(victim)
    (share_dir / "to-root").symlink_to("/")
    (share_dir / "up").symlink_to("../../..")
    (share_dir / "loop-a").symlink_to("loop-b")
    (share_dir / "loop-b").symlink_to("loop-a")
    os.mkfifo(share_dir / "fifo")  # opening it would block forever
    os.mknod(share_dir / "zero", 0o666 | stat.S_IFCHR, os.makedev(1, 5))  # endless reads
    deep = share_dir
    for i in range(200):
        deep = deep / f"d{i}"
    deep.mkdir(parents=True)


def test_hostile_contents_are_neither_followed_nor_opened(client: TestClient, parts: Parts,
                                                          tmp_path: Path) -> None:
    victim = tmp_path / "host-secret"
    victim.write_text("host data\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("keep me\n")
    entry = create_share(client, "hostile")
    share_dir = parts.config.storage_root / str(entry["id"])
    _plant(share_dir, victim)
    (share_dir / "dir-link").symlink_to(outside)

    t0 = time.monotonic()
    shown = client.get("/v2.1/os-filesystem/hostile")
    assert shown.status_code == 200
    assert time.monotonic() - t0 < 5  # no FIFO opened, no endless device read
    # usage is the share filesystem's own count: the symlink targets are not in it
    assert shown.json()["fs_entry"]["used_bytes"] < 4 << 20

    assert client.delete("/v2.1/os-filesystem/hostile").status_code == 202
    assert not share_dir.exists()
    assert victim.read_text() == "host data\n"
    assert (outside / "keep").read_text() == "keep me\n"
    assert not (parts.config.storage_root / "images" / f"{entry['id']}.ext4").exists()
    assert mountinfo.mount_points(parts.config.storage_root) == []


def test_share_filesystem_is_mounted_nosuid_nodev(client: TestClient, parts: Parts) -> None:
    entry = create_share(client, "flags")
    options = mountinfo.mount_options(parts.config.storage_root / str(entry["id"]))
    assert options is not None and {"nosuid", "nodev"} <= options
    for d in (parts.config.state_path, parts.config.storage_root, parts.config.mount_root):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d


def test_oversized_share_is_refused_and_nothing_is_made(client: TestClient, parts: Parts) -> None:
    images = parts.config.storage_root / "images"
    before = sorted(images.iterdir()) if images.exists() else []
    too_big = parts.config.storage.max_share_gib + 1
    for method, url, body in (
        ("PUT", "/v2.1/os-filesystem/huge", {"fs_entry": {"size": too_big}}),
        ("PUT", "/v2.1/os-filesystem/huge", {"fs_entry": {"size": 10**15}}),
        ("POST", "/share/v2/shares",
         {"share": {"share_proto": "LOCAL", "size": too_big, "name": "huge"}}),
    ):
        r = client.request(method, url, json=body)
        assert r.status_code == 400, (url, body, r.text)
        assert "larger than" in r.json()["badRequest"]["message"]
    after = sorted(images.iterdir()) if images.exists() else []
    assert after == before
    assert client.get("/v2.1/os-filesystem/huge").status_code == 404
