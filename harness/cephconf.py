"""What a throw-away single-node cluster is made of before its first daemon starts: its
ceph.conf, cephx keys and their caps, and the mgr modules it loads (harness/ceph.py)."""

from __future__ import annotations

import base64
import os
import struct
import time
from pathlib import Path

FS_NAME = "cephfs"
MON_ID, MGR_ID, MDS_ID, OSD_ID = "a", "x", "a", "0"

# Caps of the daemons' keys; ceph-mon --mkfs imports them with the keys, so the mgr and the
# MDS need no `ceph auth` call before they start.
CAPS = {
    "mon.": {"mon": "allow *"},
    "client.admin": {"mon": "allow *", "osd": "allow *", "mds": "allow *", "mgr": "allow *"},
    f"mgr.{MGR_ID}": {"mon": "allow profile mgr", "osd": "allow *", "mds": "allow *"},
    f"mds.{MDS_ID}": {"mon": "allow profile mds", "osd": "allow *", "mds": "allow",
                      "mgr": "allow profile mds"},
}

# The mgr loads every module of its module path, one after another (~7 s for Debian's 27, and
# 300 MiB). It gets only the always-on ones (one missing is a health error) and `volumes`.
MGR_MODULES_DIR = Path("/usr/share/ceph/mgr")
MGR_MODULES = ("balancer", "crash", "devicehealth", "orchestrator", "pg_autoscaler", "progress",
               "rbd_support", "status", "telemetry", "volumes")


def new_key() -> str:
    """A cephx secret as `ceph-authtool --gen-print-key` makes it (type AES, creation time,
    16 random bytes), made here rather than by a process per key."""
    return base64.b64encode(struct.pack("<HIIH", 1, int(time.time()), 0, 16)
                            + os.urandom(16)).decode()


def mgr_modules(target: Path) -> None:
    """`target`: symlinks to the modules kept, and to the mgr's shared Python files."""
    target.mkdir(parents=True, exist_ok=True)
    for entry in MGR_MODULES_DIR.iterdir():
        if not entry.is_dir() or entry.name in MGR_MODULES:
            (target / entry.name).symlink_to(entry)


def conf(d: Path, fsid: str, mon_addrs: str, objectstore: str) -> str:
    store = ("osd objectstore = memstore\n"
             "# the size it reports; memory is used only as data is written\n"
             "memstore device bytes = 4294967296"
             if objectstore == "memstore" else
             "osd objectstore = bluestore\nbluestore block create = true\n"
             "# a sparse file\nbluestore block size = 10737418240")
    return f"""\
[global]
fsid = {fsid}
mon host = {mon_addrs}
public addr = 127.0.0.1
ms bind ipv6 = false
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
auth allow insecure global id reclaim = false
run dir = {d}/run
admin socket = {d}/run/$cluster-$name.asok
log file = {d}/log/$cluster-$name.log
# one OSD: one copy, the OSD as failure domain, and no warning about either
osd pool default size = 1
osd pool default min size = 1
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
# a developer's nearly full disk is no reason to warn (or to stop the mon)
mon data avail warn = 1
mon data avail crit = 0
mgr initial modules = volumes
# the start waits on these: by default map changes are proposed every 1 s and PG states
# reach `ceph status` every 5 s
paxos propose interval = 0.1
mgr stats period = 1
mon mgr digest period = 1

[client]
# the ceph CLI and other clients: no socket and no log file per invocation
admin socket =
log file =

[client.admin]
keyring = {d}/ceph.client.admin.keyring

[mon]
mon data = {d}/mon.$id

[mgr]
mgr data = {d}/mgr.$id
mgr module path = {d}/mgr-modules
keyring = {d}/mgr.$id/keyring

[mds]
mds data = {d}/mds.$id
keyring = {d}/mds.$id/keyring

[osd]
osd data = {d}/osd.$id
keyring = {d}/osd.$id/keyring
{store}
"""
