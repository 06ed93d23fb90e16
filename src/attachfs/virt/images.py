"""The guest image catalogue: the boot images under `images.dir`, as `BootImage`s.

The runtime only reads the catalogue (the API lists it, the agent boots from it). Images are
built outside the runtime by `tools/build_image.py` (`make setup`), which writes
``DIR/<name>/{vmlinuz,initrd.img,image.json}``; ``image.json`` names the files and the image's
id, name and kernel command line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from attachfs.virt.base import BootImage


class ImageError(Exception):
    """A guest image could not be built or read."""


def read_image(directory: Path) -> tuple[BootImage, dict[str, Any]]:
    """The image in `directory` and its whole image.json; ImageError when unreadable."""
    try:
        meta = json.loads((directory / "image.json").read_text())
        image = BootImage(
            id=str(meta["id"]),
            name=str(meta["name"]),
            kernel=(directory / str(meta["kernel"])).resolve(),
            initrd=(directory / str(meta["initrd"])).resolve(),
            cmdline=str(meta.get("cmdline", "console=ttyS0")),
        )
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ImageError(f"{directory}: unreadable image.json: {e}") from e
    if not image.kernel.is_file() or not image.initrd.is_file():
        raise ImageError(f"{directory}: kernel or initrd missing")
    return image, meta


def load_images(dest: Path) -> list[BootImage]:
    """Every image under DEST (directories holding an image.json); unreadable ones are skipped."""
    images = []
    dest = Path(dest).absolute()
    if not dest.is_dir():
        return []
    for directory in sorted(dest.iterdir()):
        if directory.name.startswith(".") or not (directory / "image.json").is_file():
            continue
        try:
            images.append(read_image(directory)[0])
        except ImageError as e:
            print(f"attachfs.virt.images: skipping {e}", file=sys.stderr)
    return images
