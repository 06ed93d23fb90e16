#!/usr/bin/env bash
# A separate virtualenv with a real Manila (the shared-file-system service) for tests/manila:
# manila + PyMySQL (its database is MariaDB; SQLite fails with "database is locked").
# Kept apart from .venv: Manila pins its own oslo/eventlet stack. Idempotent; ~0.1 s when done.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${ATTACHFS_MANILA_VENV:-.venv-manila}
MANILA_SPEC=${ATTACHFS_MANILA_SPEC:-"manila>=19"}
stamp=$VENV/.attachfs-manila-stamp
want="$MANILA_SPEC PyMySQL"

# Manila's CephFS driver needs Ceph's Python bindings (rados, ceph_argparse), which only come as
# Debian packages built for this CPython (scripts/setup-ceph.sh installs them): the venv sees
# just those, through a directory of links named by a .pth file (not all of dist-packages).
link_ceph_bindings() {
    local dist=/usr/lib/python3/dist-packages links=$VENV/ceph-bindings site
    [[ -e $dist/ceph_argparse.py ]] || return 0
    site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    mkdir -p "$links"
    for f in "$dist"/rados.cpython-*.so "$dist"/cephfs.cpython-*.so "$dist/ceph_argparse.py"; do
        [[ -e $f ]] && ln -sfn "$f" "$links/$(basename "$f")"
    done
    echo "$(cd "$links" && pwd)" >"$site/attachfs-ceph-bindings.pth"
}

if [[ -x $VENV/bin/python && -f $stamp && $(cat "$stamp") == "$want" ]]; then
    link_ceph_bindings
    exit 0
fi
echo "setup-manila: creating $VENV ($want)"
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q "$MANILA_SPEC" PyMySQL
# Import check: the API's WSGI app, the scheduler, the share manager and the test driver.
"$VENV/bin/python" - <<'PY'
import manila.api.openstack  # noqa: F401
import manila.share.manager  # noqa: F401
import manila.scheduler.manager  # noqa: F401
import manila.tests.share.drivers.dummy  # noqa: F401
import pymysql  # noqa: F401
PY
link_ceph_bindings
echo "$want" >"$stamp"
