#!/usr/bin/env bash
# Install what is missing, and nothing else: Debian packages, the virtualenv (from the lock
# file), libvirt configured and running, the guest image. Idempotent; ~1 s when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(qemu-system-x86 qemu-system-common qemu-utils libvirt-daemon-system libvirt-clients
          libvirt-dev pkg-config busybox-static kmod cpio libslirp0 genisoimage iproute2 procps tini
          libfuse2 nfs-ganesha nfs-ganesha-vfs lxc chromium chromium-driver)

if [[ $(id -u) -ne 0 ]]; then
    echo "setup: run as root (installs packages, configures libvirt)" >&2
    exit 1
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    [[ $status == "install ok installed" ]] || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# The virtualenv: rebuilt only when the lock file or pyproject.toml changed.
stamp=.venv/.attachfs-stamp
want=$(cat requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)
if [[ ! -x .venv/bin/python || ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
    echo "setup: creating the virtualenv"
    python3 -m venv .venv
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q -r requirements.lock
    .venv/bin/pip install -q --no-deps -e .
    echo "$want" >"$stamp"
fi

bash scripts/setup-libvirt.sh
# The guest image: built by a tool outside the runtime package (tools/build_image.py).
.venv/bin/python -m tools.build_image --dest "${ATTACHFS_IMAGES:-/var/lib/attachfs/images}"
