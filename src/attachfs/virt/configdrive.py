"""Config drive: an ISO 9660 image labelled ``config-2`` (the OpenStack layout) built with
genisoimage, e.g.

    build_config_drive(iso, {
        "openstack/latest/meta_data.json": b"{...}",
        "openstack/2025-04-04/meta_data.json": b"{...}",
        "openstack/latest/user_data": b"#!/bin/sh ...",
    })

The guest agent reads ``openstack/latest/meta_data.json`` (and ``user_data``) from it when the
metadata service is unreachable. The libvirt driver attaches it as a SATA cdrom at boot
(`GuestSpec.config_drive`) and swaps it live with `set_config_drive`.

The image is written next to `iso` under a temporary name and renamed over it, so a reader
never sees a half-written ISO; a running QEMU keeps the old file open until the media change.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path, PurePosixPath

from attachfs.errors import BackendError

GENISOIMAGE = "genisoimage"
LABEL = "config-2"


class ConfigDriveError(BackendError):
    """Building a config drive failed."""


def _relative(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if not name or path.is_absolute() or any(p in ("", ".", "..") for p in name.split("/")):
        raise ConfigDriveError(f"config drive file name {name!r} must be a plain relative path")
    return path


def build_config_drive(iso: Path, files: dict[str, bytes]) -> None:
    """Write an ISO 9660 (Joliet + Rock Ridge, volume id config-2) holding `files` to `iso`."""
    iso = Path(iso).absolute()
    names = {name: _relative(name) for name in files}
    iso.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".config-drive-", dir=iso.parent) as tmp:
        stage = Path(tmp) / "root"
        stage.mkdir()
        for name, rel in names.items():
            dest = stage.joinpath(*rel.parts)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(files[name])
        out = Path(tmp) / "config.iso"
        args = [GENISOIMAGE, "-quiet", "-o", str(out), "-J", "-R", "-V", LABEL,
                "-input-charset", "utf-8", str(stage)]
        try:
            proc = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
        except FileNotFoundError as e:
            raise ConfigDriveError(f"{GENISOIMAGE} not found (apt-get install genisoimage)") from e
        except subprocess.TimeoutExpired as e:
            raise ConfigDriveError(f"{GENISOIMAGE} timed out") from e
        if proc.returncode != 0:
            raise ConfigDriveError(f"{GENISOIMAGE} failed ({proc.returncode}): "
                                   f"{proc.stderr.strip()[-500:]}")
        out.chmod(0o644)
        with open(out, "rb") as f:
            os.fsync(f.fileno())
        os.replace(out, iso)  # same directory: atomic


def write_metadata_dir(directory: Path, files: dict[str, bytes]) -> Path:
    """The config drive's files as a directory (a container's, bound into it read-only):
    each file replaced by a rename, so a reader never sees half of one; files no longer
    listed go."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    wanted = set()
    for name, data in files.items():
        rel = _relative(name)
        dest = directory.joinpath(*rel.parts)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp")
        tmp.write_bytes(data)
        tmp.chmod(0o644)
        tmp.replace(dest)
        wanted.add(dest)
    for path in directory.rglob("*"):
        if (path.is_symlink() or path.is_file()) and path not in wanted:
            path.unlink()
    return directory
