"""An NFS export mounted on the host through FUSE, with a userspace NFSv4.1 client (nfs-rs):
for hosts whose kernel has no NFS client. Run as its own process, in the foreground, until
unmounted:

    python -m attachfs.storage.nfs_fuse --server HOST [--port 2049] --export /PATH
        [--read-only] [--timeout 30] MOUNTPOINT

It connects to the server first and checks that the export is a directory; if anything fails it
prints one line, "attachfs-nfs-fuse: <what failed, naming server:port and export>", on stderr and
exits 1 without mounting. Then it mounts (fsname "nfs:HOST:/PATH", type fuse.attachfs-nfs,
allow_other, default_permissions, nosuid, nodev, ro with --read-only) and serves until the mount
goes (`umount MOUNTPOINT`: exit 0) or SIGTERM/SIGINT (it unmounts itself, exit 0; but libfuse
sets its handlers just after mounting, and a signal before that kills the process and leaves the
mount dead: SigCgt in /proc/PID/status shows when they are set).

Paths are named from the server's NFSv4 pseudo root ("PATH/…"): nfs-rs cannot stat or list the
root of the mount it connected to ("bad name" from nfs-ganesha). A second client, connected to
the export itself, answers statfs: the pseudo root's FSSTAT describes the pseudo filesystem
(all zeros on nfs-ganesha), not the export.

A server that stops answering fails operations with EIO after --timeout seconds. nfs-rs does not
recover from a server that lost its session (a restart): its client then fails every call (the
first one after about 5 s, or --timeout if shorter). So a call that fails with the connection
makes a new client, and is retried once on it when that is safe (idempotent, or nfs-rs says
the server never ran it); files open on the old client are reopened by name on the new one.

FUSE through libfuse 2 (mfusepy's default): requests of at most 128 KiB, and utimensat changing
one time alone (`touch -m`, `touch -a`) succeeds without changing anything, as libfuse 2.9 calls
utimens only when both times are set. FUSE_LIBRARY_PATH=/lib/x86_64-linux-gnu/libfuse3.so.3 in
the environment selects libfuse 3, which has neither limit (1 MiB requests: 64 MiB written in
0.7 s rather than 1.6 s) but prints a warning about its thread limit when it mounts and exits 1
after a SIGTERM.

The nfs-rs synchronous client is shared by FUSE's threads: its blocking calls release the GIL,
its files serialize only their cursor (unused here: every read and write is positional), and
the documentation's one restriction on sharing is the asyncio client's event loop.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import mfusepy

from attachfs.storage.nfs_client import Connection, MountError, connect
from attachfs.storage.nfs_fuse_ops import IO_SIZE, NfsOperations
from attachfs.storage.nfs_mount_watch import FS_SUBTYPE, PROG, MountWatch

DEFAULT_PORT = 2049
DEFAULT_TIMEOUT = 30.0
# How long the process waits at exit for its NFS clients to close.
CLOSE_WAIT = 2.0

log = logging.getLogger(PROG)


# ---- the command ---------------------------------------------------------------------------------
def _fuse_option(value: str) -> str:
    # libfuse splits -o on commas; a backslash escapes one.
    return value.replace("\\", "\\\\").replace(",", "\\,")


def mount_options(server: str, export: str, read_only: bool) -> dict[str, Any]:
    """mfusepy's keyword options for the mount (a True flag is "-o name")."""
    options = {
        "foreground": True,  # no fork: nfs-rs's runtime threads would not survive it
        "fsname": _fuse_option(f"nfs:{server}:{export}"),
        "subtype": FS_SUBTYPE,
        # virtiofsd serves the mount to guests and takes each guest user's uid for its
        # thread: FUSE refuses any uid but the mounter's without allow_other.
        "allow_other": True,
        "default_permissions": True,  # the kernel enforces the mode bits
        "ro": read_only,
        "nosuid": True,
        "nodev": True,
        "big_writes": True,
        "max_write": IO_SIZE,
        "max_read": IO_SIZE,
        "use_ino": True,  # st_ino is the NFS fileid
        # nfs-rs keeps an unlinked open file readable through its NFSv4 open state: no
        # ".fuse_hidden" renames
        "hard_remove": True,
    }
    if mfusepy.fuse_version_major != 2:
        # libfuse 3 (FUSE_LIBRARY_PATH=…/libfuse3.so.3) always writes big, negotiates up to
        # 1 MiB per request itself, and refuses these options.
        for name in ("big_writes", "max_write", "max_read"):
            del options[name]
    return options


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m attachfs.storage.nfs_fuse",
                                     description="Mount an NFS export through FUSE (NFSv4.1, "
                                                 "userspace client), in the foreground.")
    parser.add_argument("--server", required=True, help="NFS server host name or address")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="NFS port (2049)")
    parser.add_argument("--export", required=True, help="export path, e.g. /export")
    parser.add_argument("--read-only", action="store_true", help="mount read-only")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help="seconds for connecting and for each NFS operation (30)")
    parser.add_argument("mountpoint", type=Path)
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536:
        parser.error(f"--port {args.port} is not a port")
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format=f"{PROG}: %(levelname)s: %(message)s")
    mountpoint = args.mountpoint.absolute()
    try:
        conn, export_conn, prefix = connect(args.server, args.port, args.export, args.timeout)
    except MountError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr, flush=True)
        return 1
    try:
        if not mountpoint.is_dir():
            print(f"{PROG}: mount point {mountpoint} for {args.server}:{args.port} "
                  f"{args.export} is not a directory", file=sys.stderr, flush=True)
            return 1
        finished = threading.Event()

        def end(why: str) -> None:
            # From the watch thread: libfuse offers no way out of its loop but a signal, whose
            # teardown would unmount whatever is at the mount point by then. Exiting closes
            # /dev/fuse, which ends the session wherever the mount is held.
            log.warning("%s", why)
            _close_all(conn, export_conn)
            sys.stderr.flush()
            os._exit(0)

        watch = MountWatch(mountpoint, finished, end)
        ops = NfsOperations(conn, export_conn, prefix, args.read_only, watch)
        try:
            mfusepy.FUSE(ops, str(mountpoint),
                         **mount_options(args.server, args.export, args.read_only))
        except RuntimeError as exc:  # libfuse printed its reason ("fuse: …") above
            print(f"{PROG}: FUSE mount of {args.server}:{args.port} {args.export} on "
                  f"{mountpoint} failed ({exc})", file=sys.stderr, flush=True)
            return 1
        finally:
            finished.set()
        return 0
    finally:
        _close_all(conn, export_conn)


def _close_all(*conns: Connection) -> None:
    """Close the clients, waiting CLOSE_WAIT s at most: closing only releases the server's
    state (writes were durable already), and waits long for a server that is gone."""
    closing = [threading.Thread(target=c.close, daemon=True) for c in conns]
    for thread in closing:
        thread.start()
    deadline = time.monotonic() + CLOSE_WAIT
    for thread in closing:
        thread.join(max(0.0, deadline - time.monotonic()))


if __name__ == "__main__":
    sys.exit(main())
