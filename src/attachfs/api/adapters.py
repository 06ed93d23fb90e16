"""The core's collaborators (core/ports.py), built from what the app holds: the built-in
share storage and the host's guest image catalogue."""

from __future__ import annotations

from pathlib import Path

from attachfs.core.context import ShareInfo
from attachfs.core.ports import BuiltinShareRecord
from attachfs.errors import NotFound
from attachfs.storage.local import LocalShareProvider, share_info
from attachfs.virt.base import BootImage
from attachfs.virt.images import load_images


class BuiltinShares:
    """core.ports.BuiltinStorage over storage/local.py."""

    def __init__(self, provider: LocalShareProvider) -> None:
        self.provider = provider

    def create_dir(self, share_id: str, size_gib: int) -> Path:
        return self.provider.create_dir(share_id, size_gib)

    def delete_dir(self, share_id: str) -> None:
        self.provider.delete_dir(share_id)

    def usage_bytes(self, share_id: str) -> int:
        return self.provider.usage_bytes(share_id)

    def info(self, share: BuiltinShareRecord) -> ShareInfo:
        return share_info(share, self.provider.storage_root)  # type: ignore[arg-type]


def find_image(images: list[BootImage], ref: str) -> BootImage:
    """By id or name; a full URL (`…/images/ID`) names its last component."""
    ref = ref.rstrip("/").rsplit("/", 1)[-1]
    for image in images:
        if ref in (image.id, image.name):
            return image
    raise NotFound(f"Image {ref} could not be found.")


class HostImages:
    """core.ports.ImageLookup over the image catalogue directory (read on every call: images
    may be added while the service runs)."""

    def __init__(self, images_dir: Path) -> None:
        self.images_dir = images_dir

    def all(self) -> list[BootImage]:
        return load_images(self.images_dir)

    def image_id(self, ref: str) -> str:
        return find_image(self.all(), ref).id
