#!/usr/bin/env bash
# A throw-away single-node Ceph with CephFS on 127.0.0.1, for an operator's demo (docs/ceph.md):
#   scripts/ceph-demo.sh start [DIR]     DIR empty or absent; default a new /var/lib/attachfs/ceph-demo.XXXXXX
#   scripts/ceph-demo.sh info DIR        conf, admin keyring, mons, daemons, how to mount
#   scripts/ceph-demo.sh mount DIR MOUNTPOINT [--path P] [--id ID]   (ceph-fuse; undone by stop)
#   scripts/ceph-demo.sh umount DIR MOUNTPOINT
#   scripts/ceph-demo.sh stop DIR        no daemon or mount left; DIR (logs) kept
#   scripts/ceph-demo.sh destroy DIR     stop, then remove DIR
# The work is done by harness/ceph.py (python -m harness.ceph_demo), the same code tests/ceph uses.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)

if [[ ! -x $ROOT/.venv/bin/python ]]; then
    echo "ceph-demo: no virtualenv: run \`make setup\` first" >&2
    exit 1
fi
if [[ ${1:-} == start ]]; then
    bash "$ROOT/scripts/setup-ceph.sh"
    if [[ $# -eq 1 || ${2:-} == -* ]]; then  # no DIR given
        mkdir -p /var/lib/attachfs
        set -- start "$(mktemp -d /var/lib/attachfs/ceph-demo.XXXXXX)" "${@:2}"
    fi
fi
# Not `cd $ROOT`: DIR and MOUNTPOINT may be relative to the caller's directory.
CEPH_DEMO_PROG=$0 PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" exec "$ROOT/.venv/bin/python" -m harness.ceph_demo "$@"
