#!/usr/bin/env bash
# A real Keystone (identity service) for tests/keystone, in its own virtualenv .venv-keystone so
# attachfs's .venv stays lean: keystone + gunicorn from PyPI. Nothing is configured or started
# here (the tests start a throw-away Keystone on sqlite). Idempotent; well under 1 s when done.
#
#   KEYSTONE_SPEC   what to install (default "keystone>=26"); changing it reinstalls.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv-keystone
SPEC=${KEYSTONE_SPEC:-"keystone>=26"}
stamp=$VENV/.attachfs-keystone-stamp
want=$(printf '%s\n%s\n' "$SPEC" "gunicorn" | sha256sum | cut -d' ' -f1)

if [[ -x $VENV/bin/keystone-manage && -x $VENV/bin/gunicorn && -f $stamp \
      && $(cat "$stamp") == "$want" ]]; then
    exit 0
fi

echo "setup-keystone: installing $SPEC and gunicorn into $VENV"
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q "$SPEC" gunicorn
"$VENV/bin/keystone-manage" --version >/dev/null 2>&1  # importable and runnable
echo "$want" >"$stamp"
echo "setup-keystone: $("$VENV/bin/pip" show keystone 2>/dev/null | sed -n 's/^Version: /keystone /p') ready"
