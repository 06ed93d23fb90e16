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

if [[ -x $VENV/bin/python && -f $stamp && $(cat "$stamp") == "$want" ]]; then
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
echo "$want" >"$stamp"
