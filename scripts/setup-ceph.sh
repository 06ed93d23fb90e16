#!/usr/bin/env bash
# Debian's Ceph 16.2 (bookworm) for tests/ceph and scripts/ceph-demo.sh: the daemons (mon, mgr,
# OSD, MDS), the CLI, ceph-fuse and the mgr's volumes module. Nothing is configured or started
# here and the packages start nothing (no systemd): harness/ceph.py starts throw-away clusters
# under a directory of their own (see docs/ceph.md). Idempotent; one dpkg-query (~0.05 s) when done.
# python3-rados, python3-cephfs and python3-ceph-argparse: the `ceph` CLI and the mgr need them
# (and so does Manila's CephFS driver, for CPython 3.11 only).
set -euo pipefail

PACKAGES=(ceph-mon ceph-mgr ceph-osd ceph-mds ceph-fuse ceph-common ceph-mgr-modules-core
          python3-rados python3-cephfs python3-ceph-argparse)

if [[ $(id -u) -ne 0 ]]; then
    echo "setup-ceph: run as root (installs packages)" >&2
    exit 1
fi

# One dpkg-query for all (it says nothing of packages it never saw, and then exits 1).
installed=" $(dpkg-query -W -f='${db:Status-Abbrev} ${Package}\n' "${PACKAGES[@]}" 2>/dev/null \
              | awk '$1 == "ii" { printf "%s ", $2 }' || true) "
missing=()
for pkg in "${PACKAGES[@]}"; do
    [[ $installed == *" $pkg "* ]] || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "setup-ceph: installing ${missing[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
