"""Build the guest boot image (kernel + initramfs) from Debian packages.

The image is a stock Debian kernel (`linux-image-6.1.0-N-amd64`, the one `linux-image-amd64`
currently depends on) and a small initramfs: busybox-static, the kernel modules the guest needs
(virtio-fs, 9p, virtio-net, NFSv4, the config-drive CD-ROM on q35's AHCI, the ACPI power button)
in the load order `modprobe --show-depends` computes, our `/init` and the guest agent
(`virt/guest/`). Nothing is installed on the host: the packages are fetched with
`apt-get download` and unpacked with `dpkg-deb -x` in a temporary directory.

Layout: ``DEST/<name>/{vmlinuz,initrd.img,image.json}``. A build is skipped when image.json
records the same inputs hash (guest scripts + module list + builder format); `--force` rebuilds
(e.g. to pick up a newer kernel). Builds are serialized by a lock file and swapped in atomically.

    python -m attachfs.virt.image build --dest /var/lib/attachfs/images [--force]
    python -m attachfs.virt.image list --dest /var/lib/attachfs/images
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import gzip
import hashlib
import json
import lzma
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from attachfs.virt.base import BootImage

IMAGE_NAME = "debian-busybox"
CMDLINE = "console=ttyS0 quiet"
KERNEL_META_PACKAGE = "linux-image-amd64"
BUSYBOX_PACKAGE = "busybox-static"
GUEST_DIR = Path(__file__).parent / "guest"
GUEST_FILES = ("init", "attachfs-guest-agent")
# Bump when the layout of the initramfs changes in a way the hash of the inputs does not show.
BUILD_FORMAT = 1
# Modules (with their dependencies) loaded by /init, in this order.
MODULES = (
    "virtio_pci",
    "virtio_net",
    "virtio_blk",
    "virtio_console",
    "virtio_scsi",
    "fuse",
    "virtiofs",
    "9p",
    "9pnet_virtio",
    "nfsv4",
    "ahci",  # q35's SATA controller: where libvirt puts a cdrom (config drive)
    "sr_mod",
    "isofs",
    "vfat",
    "nls_utf8",
    "nls_ascii",
    "nls_cp437",
    "button",  # ACPI power button (libvirt domain.shutdown())
    "evdev",  # its /dev/input/event* for busybox acpid
)
_NAMESPACE = uuid.UUID("5d3b7a4e-9a57-4c1e-8f2e-6a7b0c1d2e3f")


class ImageError(Exception):
    """Building or reading a guest image failed."""


def image_id(name: str) -> str:
    """Stable id of an image: uuid5 of its name."""
    return str(uuid.uuid5(_NAMESPACE, name))


def inputs_hash() -> str:
    h = hashlib.sha256()
    h.update(f"format={BUILD_FORMAT}\ncmdline={CMDLINE}\n".encode())
    h.update(("modules=" + " ".join(MODULES) + "\n").encode())
    for name in GUEST_FILES:
        data = (GUEST_DIR / name).read_bytes()
        h.update(f"{name} {len(data)}\n".encode())
        h.update(data)
    return h.hexdigest()


def _run(args: list[str], cwd: Path | None = None) -> str:
    try:
        proc = subprocess.run(
            args, cwd=cwd, check=True, capture_output=True, text=True, timeout=600
        )
    except FileNotFoundError as e:
        raise ImageError(f"{args[0]} not found: {e}") from e
    except subprocess.CalledProcessError as e:
        raise ImageError(f"{' '.join(args)} failed ({e.returncode}): {e.stderr.strip()}") from e
    return proc.stdout


def current_kernel_package() -> str:
    """The linux-image-6.1.0-N-amd64 package the linux-image-amd64 meta package points to."""
    pattern = re.compile(r"^linux-image-\d+\.\d+\.\d+-\d+-amd64$")
    out = _run(["apt-cache", "depends", KERNEL_META_PACKAGE])
    for line in out.splitlines():
        key, _, value = line.strip().partition(": ")
        if key == "Depends" and pattern.match(value.strip()):
            return value.strip()
    # No meta package: the highest ABI number among the available packages.
    names = _run(["apt-cache", "pkgnames", "linux-image-6.1.0-"]).split()
    found = sorted(
        (int(n.split("-")[3]), n) for n in names if pattern.match(n) and n.split("-")[3].isdigit()
    )
    if not found:
        raise ImageError("no linux-image-6.1.0-*-amd64 package known to apt (apt-get update?)")
    return found[-1][1]


def _download(packages: list[str], into: Path) -> list[Path]:
    _run(["apt-get", "download", "-o", "APT::Sandbox::User=root", *packages], cwd=into)
    debs = []
    for package in packages:
        matches = sorted(into.glob(f"{package}_*.deb"))
        if not matches:
            raise ImageError(f"apt-get download {package}: no .deb produced")
        debs.append(matches[-1])
    return debs


def _module_order(root: Path, kver: str) -> list[Path]:
    """Paths (relative to root) of the .ko files to insmod, dependencies first, no repeats."""
    _run(["depmod", "-b", str(root), kver])
    out = _run(["modprobe", "-d", str(root), "-S", kver, "--show-depends", "-a", *MODULES])
    order: list[Path] = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "insmod":
            rel = Path(parts[1]).relative_to(root)
            if rel not in order:
                order.append(rel)
    if not order:
        raise ImageError(f"modprobe found none of the modules {MODULES}")
    return order


def _build_initramfs(kroot: Path, kver: str, busybox: Path, stage: Path, out: Path) -> int:
    for d in ("bin", "dev", "etc", "proc", "sys", "run", "tmp", "mnt", "root", "var", "usr"):
        (stage / d).mkdir(parents=True, exist_ok=True)
    for link, target in (("sbin", "bin"), ("usr/bin", "../bin"), ("usr/sbin", "../bin")):
        (stage / link).symlink_to(target)
    shutil.copy2(busybox, stage / "bin/busybox")
    (stage / "bin/busybox").chmod(0o755)
    for applet in _run([str(busybox), "--list"]).split():
        # `busybox --list` names busybox itself: a link over the binary panics the kernel
        if applet != "busybox" and "/" not in applet:
            (stage / "bin" / applet).symlink_to("busybox")
    guest_modules = []
    modules = _module_order(kroot, kver)
    for rel in modules:
        src = kroot / rel
        if rel.suffix == ".xz":
            rel = rel.with_suffix("")
        dst = stage / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.suffix == ".xz":
            dst.write_bytes(lzma.decompress(src.read_bytes()))
        elif src.suffix == ".ko":
            shutil.copyfile(src, dst)
        else:
            raise ImageError(f"unsupported module compression: {src.name}")
        guest_modules.append("/" + str(rel))
    (stage / "etc/modules.order").write_text("\n".join(guest_modules) + "\n")
    for name, dest in (("init", "init"), ("attachfs-guest-agent", "bin/attachfs-guest-agent")):
        shutil.copyfile(GUEST_DIR / name, stage / dest)
        (stage / dest).chmod(0o755)
    # no dev/console here: the kernel's built-in initramfs already has that device node

    entries = ["."]
    for dirpath, dirnames, filenames in os.walk(stage):
        dirnames.sort()
        rel = Path(dirpath).relative_to(stage)
        entries += [str(Path(".") / rel / n) for n in sorted(dirnames + filenames)]
    cpio = subprocess.run(
        ["cpio", "-o", "-H", "newc", "-R", "0:0", "--null", "--quiet"],
        cwd=stage,
        input=b"\0".join(e.encode() for e in entries) + b"\0",
        capture_output=True,
        check=False,
        timeout=300,
    )
    if cpio.returncode != 0:
        raise ImageError(f"cpio failed: {cpio.stderr.decode(errors='replace').strip()}")
    out.write_bytes(gzip.compress(cpio.stdout, compresslevel=6, mtime=0))
    return len(modules)


@contextlib.contextmanager
def _locked(dest: Path, name: str) -> Iterator[None]:
    dest.mkdir(parents=True, exist_ok=True)
    with open(dest / f".{name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _read_image(directory: Path) -> tuple[BootImage, dict[str, object]]:
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


def build_image(dest: Path, force: bool = False) -> BootImage:
    """Build DEST/debian-busybox (or reuse it when its inputs did not change)."""
    dest = Path(dest).absolute()
    final = dest / IMAGE_NAME
    digest = inputs_hash()
    with _locked(dest, IMAGE_NAME):
        if not force and (final / "image.json").is_file():
            try:
                image, meta = _read_image(final)
            except ImageError:
                pass
            else:
                if meta.get("inputs_hash") == digest:
                    return image
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="attachfs-image-") as tmp:
            work = Path(tmp)
            kpkg = current_kernel_package()
            kdeb, bdeb = _download([kpkg, BUSYBOX_PACKAGE], work)
            kroot, broot = work / "kernel", work / "busybox"
            _run(["dpkg-deb", "-x", str(kdeb), str(kroot)])
            _run(["dpkg-deb", "-x", str(bdeb), str(broot)])
            kversions = sorted(p.name for p in (kroot / "lib/modules").iterdir())
            if len(kversions) != 1:
                raise ImageError(f"{kdeb.name}: expected one module tree, found {kversions}")
            kver = kversions[0]
            out = Path(tempfile.mkdtemp(prefix=f".{IMAGE_NAME}.new-", dir=dest))
            try:
                shutil.copyfile(kroot / f"boot/vmlinuz-{kver}", out / "vmlinuz")
                nmod = _build_initramfs(
                    kroot, kver, broot / "bin/busybox", work / "stage", out / "initrd.img"
                )
                meta = {
                    "id": image_id(IMAGE_NAME),
                    "name": IMAGE_NAME,
                    "kernel": "vmlinuz",
                    "initrd": "initrd.img",
                    "cmdline": CMDLINE,
                    "kernel_version": kver,
                    "kernel_package": kdeb.name,
                    "busybox_package": bdeb.name,
                    "modules": nmod,
                    "inputs_hash": digest,
                    "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "build_seconds": round(time.monotonic() - started, 2),
                }
                (out / "image.json").write_text(json.dumps(meta, indent=2) + "\n")
                out.chmod(0o755)
                old = None
                if final.exists():
                    old = Path(tempfile.mkdtemp(prefix=f".{IMAGE_NAME}.old-", dir=dest))
                    final.rename(old / IMAGE_NAME)
                out.rename(final)
                out = final
                if old is not None:
                    shutil.rmtree(old, ignore_errors=True)
            finally:
                if out != final:
                    shutil.rmtree(out, ignore_errors=True)
        return _read_image(final)[0]


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
            images.append(_read_image(directory)[0])
        except ImageError as e:
            print(f"attachfs.virt.image: skipping {e}", file=sys.stderr)
    return images


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m attachfs.virt.image", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build (or reuse) the guest image")
    build.add_argument("--dest", type=Path, required=True)
    build.add_argument("--force", action="store_true", help="rebuild even if up to date")
    listing = sub.add_parser("list", help="list the images under --dest")
    listing.add_argument("--dest", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            started = time.monotonic()
            image = build_image(args.dest, force=args.force)
            print(
                f"{image.name} {image.id} {image.kernel.parent} "
                f"({time.monotonic() - started:.1f} s)"
            )
        else:
            for image in load_images(args.dest):
                print(f"{image.name} {image.id} {image.kernel.parent} cmdline={image.cmdline!r}")
    except ImageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
