"""A throw-away Ceph cluster for an operator, from the command line (scripts/ceph-demo.sh calls
this; docs/ceph.md):

    python -m harness.ceph_demo start DIR [--objectstore memstore|bluestore]
    python -m harness.ceph_demo info DIR
    python -m harness.ceph_demo mount DIR MOUNTPOINT [--path /] [--id admin]
    python -m harness.ceph_demo umount DIR MOUNTPOINT
    python -m harness.ceph_demo stop DIR       # daemons and mounts gone; DIR (logs) kept
    python -m harness.ceph_demo destroy DIR    # stop, then remove DIR

`start` returns once the cluster is ready; its daemons outlive it (no parent-death signal) and
DIR/cluster.json names them (pid and start time) for the later commands.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from harness.ceph import FS_NAME, CephCluster


def describe(c: CephCluster) -> str:
    conf, keyring = c.conf_path, c.admin_keyring
    prog = os.environ.get("CEPH_DEMO_PROG", "python -m harness.ceph_demo")
    cli = f"ceph -c {conf}"
    rss = c.rss_mib()
    daemons = ", ".join(f"{d.name} pid {d.pid} "
                        + (f"({rss[d.name]:.0f} MiB)" if d.name in rss else "(gone)")
                        for d in c.daemons)
    mounts = "".join(f"\n  mounted:       {m.mountpoint} (ceph-fuse pid {m.proc.pid})"
                     for m in c.mounts)
    return f"""\
Ceph cluster under {c.dir} (fsid {c.fsid}, {c.objectstore}, CephFS "{FS_NAME}")
  conf:          {conf}
  admin keyring: {keyring}
  mons:          {c.mon_addrs}
  daemons:       {daemons}{mounts}

Talk to it (the conf names the admin keyring):
  {cli} -s
  {cli} fs subvolume create {FS_NAME} demo --size 1073741824
  {cli} fs subvolume getpath {FS_NAME} demo
  {cli} fs subvolume authorize {FS_NAME} demo alice --access_level=rw
  {cli} auth get-key client.alice          # alice's key (authorize prints it only with --tenant_id)
Mount what alice may see, with her key only (as attachfs's host connector does):
  printf '[client.alice]\\n\\tkey = KEY\\n' > alice.keyring; chmod 600 alice.keyring
  ceph-fuse -c /dev/null -m '{c.mon_addrs}' --id alice --keyring alice.keyring \\
      -r PATH_FROM_GETPATH /mnt/alice
  (ceph-fuse daemonizes: PID 1 reaps it seconds after the unmount.) Or let this tool mount
  (in the foreground, unmounted at stop): {prog} mount {c.dir} /mnt/x [--path P] [--id ID]
Stop (no daemon or mount left, logs kept): {prog} stop {c.dir}
Stop and remove the directory:            {prog} destroy {c.dir}"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ceph-demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="create and start a cluster under DIR (empty or absent)")
    start.add_argument("dir", type=Path)
    start.add_argument("--objectstore", choices=["memstore", "bluestore"], default="memstore")
    for name in ("info", "stop", "destroy"):
        sub.add_parser(name).add_argument("dir", type=Path)
    mount = sub.add_parser("mount", help="mount a CephFS path with ceph-fuse")
    mount.add_argument("dir", type=Path)
    mount.add_argument("mountpoint", type=Path)
    mount.add_argument("--path", default="/", help="directory of the filesystem (default /)")
    mount.add_argument("--id", default="admin", help="cephx ID (its key is looked up)")
    umount = sub.add_parser("umount")
    umount.add_argument("dir", type=Path)
    umount.add_argument("mountpoint", type=Path)
    args = parser.parse_args(argv)

    if args.command == "start":
        cluster = CephCluster(args.dir, objectstore=args.objectstore, die_with_parent=False)
        cluster.start()
        print(f"started in {cluster.start_seconds:.1f}s\n")
        print(describe(cluster))
        return 0
    if not (args.dir / "cluster.json").exists():
        print(f"ceph-demo: no cluster under {args.dir} (no cluster.json)", file=sys.stderr)
        return 1
    cluster = CephCluster.load(args.dir)
    if args.command == "info":
        print(describe(cluster))
        if all(d.alive() for d in cluster.daemons):
            print("\n" + cluster.ceph("health", "detail").strip())
    elif args.command == "mount":
        key = cluster.admin_key if args.id == "admin" else \
            cluster.ceph("auth", "print-key", f"client.{args.id}").strip()
        m = cluster.fuse_mount(args.path, args.mountpoint, args.id, key)
        cluster.save()
        print(f"mounted {args.path} on {m.mountpoint} as client.{args.id}")
    elif args.command == "umount":
        point = args.mountpoint.resolve()
        mine = [m for m in cluster.mounts if m.mountpoint == point]
        if not mine:
            print(f"ceph-demo: {point} is not a mount made by this tool", file=sys.stderr)
            return 1
        for m in mine:
            m.unmount()
            cluster.mounts.remove(m)
        cluster.save()
        print(f"unmounted {point}")
    elif args.command == "stop":
        cluster.stop()
        print(f"stopped: no daemon or mount of {cluster.dir} left (logs in {cluster.dir}/log)")
    elif args.command == "destroy":
        cluster.destroy()
        print(f"destroyed {cluster.dir}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (RuntimeError, TimeoutError) as exc:  # CephError, CephMountError, what is left
        print(f"ceph-demo: {exc}", file=sys.stderr)
        sys.exit(1)
