"""Build the guest boot image (kernel + initramfs) from Debian packages.

The image is a stock Debian kernel (`linux-image-6.1.0-N-amd64`, the one `linux-image-amd64`
currently depends on) and a small initramfs: busybox-static, the kernel modules the guest needs
(virtio-fs, 9p, virtio-net, NFSv4, the config-drive CD-ROM on q35's AHCI, the ACPI power button)
in the load order `modprobe --show-depends` computes, our `/init` and the guest agent
(`src/attachfs/virt/guest/`). Nothing is installed on the host: the packages are fetched with
`apt-get download` and unpacked with `dpkg-deb -x` in a temporary directory.

Layout: ``DEST/<name>/{vmlinuz,initrd.img,image.json}``, the catalogue the runtime reads
(`attachfs.virt.images`). A build is skipped when image.json records the same inputs hash
(guest scripts + module list + builder format); `--force` rebuilds (e.g. to pick up a newer
kernel). Builds are serialized by a lock file and swapped in atomically. This is a build tool,
run by `make setup` (scripts/setup.sh); it is not part of the runtime package.

    .venv/bin/python -m tools.build_image [--dest /var/lib/attachfs/images] [--force]
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
from dataclasses import dataclass
from pathlib import Path

import attachfs
from attachfs.virt.base import BootImage
from attachfs.virt.images import ImageError, read_image

IMAGE_NAME = "debian-busybox"
DEFAULT_DEST = Path("/var/lib/attachfs/images")
CMDLINE = "console=ttyS0 quiet"
KERNEL_META_PACKAGE = "linux-image-amd64"
BUSYBOX_PACKAGE = "busybox-static"
# What runs inside the guest ships with the runtime package: it is product code, not a tool.
GUEST_DIR = Path(attachfs.__file__).parent / "virt" / "guest"
GUEST_FILES = ("init", "attachfs-guest-agent")
# Bump when the layout of the initramfs changes in a way the hash of the inputs does not show.
BUILD_FORMAT = 2
# Modules (with their dependencies) /init loads before the network and the guest agent start:
# the devices, virtio-fs, the config drive's, and the power button's.
MODULES = (
    "virtio_pci",
    "virtio_net",
    "virtio_blk",
    "virtio_console",
    "virtio_scsi",
    "fuse",
    "virtiofs",
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
# Loaded after them, in the background while DHCP and the agent's first round run: the 9p and
# NFS clients (sunrpc, nfs and nfsv4 alone take ~1 s to load under TCG, half of all modules).
# /run/modules-later.done appears when they are in.
LATER_MODULES = (
    "9p",
    "9pnet_virtio",
    "nfsv4",
)
_NAMESPACE = uuid.UUID("5d3b7a4e-9a57-4c1e-8f2e-6a7b0c1d2e3f")


def image_id(name: str) -> str:
    """Stable id of an image: uuid5 of its name."""
    return str(uuid.uuid5(_NAMESPACE, name))


def inputs_hash() -> str:
    h = hashlib.sha256()
    h.update(f"format={BUILD_FORMAT}\ncmdline={CMDLINE}\n".encode())
    h.update(("modules=" + " ".join(MODULES) + "\n").encode())
    h.update(("later=" + " ".join(LATER_MODULES) + "\n").encode())
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


def _module_order(root: Path, kver: str, modules: tuple[str, ...],
                  loaded: tuple[Path, ...] = ()) -> list[Path]:
    """Paths (relative to root) of the .ko files to insmod, dependencies first, no repeats,
    none of `loaded`."""
    _run(["depmod", "-b", str(root), kver])
    out = _run(["modprobe", "-d", str(root), "-S", kver, "--show-depends", "-a", *modules])
    order: list[Path] = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "insmod":
            rel = Path(parts[1]).relative_to(root)
            if rel not in order and rel not in loaded:
                order.append(rel)
    if not order:
        raise ImageError(f"modprobe found none of the modules {modules}")
    return order


def _stage_busybox(busybox: Path, stage: Path) -> None:
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


def _stage_modules(kroot: Path, kver: str, stage: Path) -> int:
    """The modules, uncompressed, and the lists /init loads: /etc/modules.order (first) and
    /etc/modules.later (in the background); how many."""
    first = _module_order(kroot, kver, MODULES)
    later = _module_order(kroot, kver, LATER_MODULES, tuple(first))
    for name, modules in (("modules.order", first), ("modules.later", later)):
        guest_modules = []
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
        (stage / "etc" / name).write_text("\n".join(guest_modules) + "\n")
    return len(first) + len(later)


def _pack(stage: Path, out: Path) -> None:
    """cpio newc of `stage` (sorted, owned by root), gzip-compressed into `out`."""
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


def _build_initramfs(kroot: Path, kver: str, busybox: Path, stage: Path, out: Path) -> int:
    _stage_busybox(busybox, stage)
    nmod = _stage_modules(kroot, kver, stage)
    for name, dest in (("init", "init"), ("attachfs-guest-agent", "bin/attachfs-guest-agent")):
        shutil.copyfile(GUEST_DIR / name, stage / dest)
        (stage / dest).chmod(0o755)
    # no dev/console here: the kernel's built-in initramfs already has that device node
    _pack(stage, out)
    return nmod


@contextlib.contextmanager
def _locked(dest: Path, name: str) -> Iterator[None]:
    dest.mkdir(parents=True, exist_ok=True)
    with open(dest / f".{name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)




@dataclass
class _Packages:
    """The kernel and busybox packages, unpacked under a work directory."""

    kernel_deb: Path
    busybox_deb: Path
    kroot: Path
    kver: str
    busybox: Path


def _fetch(work: Path) -> _Packages:
    kdeb, bdeb = _download([current_kernel_package(), BUSYBOX_PACKAGE], work)
    kroot, broot = work / "kernel", work / "busybox"
    _run(["dpkg-deb", "-x", str(kdeb), str(kroot)])
    _run(["dpkg-deb", "-x", str(bdeb), str(broot)])
    kversions = sorted(p.name for p in (kroot / "lib/modules").iterdir())
    if len(kversions) != 1:
        raise ImageError(f"{kdeb.name}: expected one module tree, found {kversions}")
    return _Packages(kdeb, bdeb, kroot, kversions[0], broot / "bin/busybox")


def _assemble(pkgs: _Packages, stage: Path, out: Path, digest: str, started: float) -> None:
    """vmlinuz, initrd.img and image.json in `out`."""
    shutil.copyfile(pkgs.kroot / f"boot/vmlinuz-{pkgs.kver}", out / "vmlinuz")
    nmod = _build_initramfs(pkgs.kroot, pkgs.kver, pkgs.busybox, stage, out / "initrd.img")
    meta = {
        "id": image_id(IMAGE_NAME),
        "name": IMAGE_NAME,
        "kernel": "vmlinuz",
        "initrd": "initrd.img",
        "cmdline": CMDLINE,
        "kernel_version": pkgs.kver,
        "kernel_package": pkgs.kernel_deb.name,
        "busybox_package": pkgs.busybox_deb.name,
        "modules": nmod,
        "inputs_hash": digest,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "build_seconds": round(time.monotonic() - started, 2),
    }
    (out / "image.json").write_text(json.dumps(meta, indent=2) + "\n")
    out.chmod(0o755)


def _swap_in(out: Path, final: Path, dest: Path) -> None:
    """Replace `final` by `out` with renames (the old one is removed afterwards)."""
    old = None
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{IMAGE_NAME}.old-", dir=dest))
        final.rename(old / IMAGE_NAME)
    out.rename(final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _up_to_date(final: Path, digest: str) -> BootImage | None:
    if not (final / "image.json").is_file():
        return None
    try:
        image, meta = read_image(final)
    except ImageError:
        return None
    return image if meta.get("inputs_hash") == digest else None


def build_image(dest: Path, force: bool = False) -> BootImage:
    """Build DEST/debian-busybox (or reuse it when its inputs did not change)."""
    dest = Path(dest).absolute()
    final = dest / IMAGE_NAME
    digest = inputs_hash()
    with _locked(dest, IMAGE_NAME):
        current = None if force else _up_to_date(final, digest)
        if current is not None:
            return current
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="attachfs-image-") as tmp:
            pkgs = _fetch(Path(tmp))
            out = Path(tempfile.mkdtemp(prefix=f".{IMAGE_NAME}.new-", dir=dest))
            try:
                _assemble(pkgs, Path(tmp) / "stage", out, digest, started)
                _swap_in(out, final, dest)
            finally:
                if out.exists():
                    shutil.rmtree(out, ignore_errors=True)
        return read_image(final)[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.build_image", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEST,
                        help=f"the image catalogue directory (default {DEFAULT_DEST})")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        image = build_image(args.dest, force=args.force)
    except (ImageError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{image.name} {image.id} {image.kernel.parent} ({time.monotonic() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
