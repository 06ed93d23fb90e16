#!/usr/bin/env bash
# The real OpenStack command-line clients, in their own virtualenv (.venv-clients), kept out of
# attachfs's .venv so attachfs stays lean. Used by tests/clients and docs/openstack-cli.md.
# Idempotent: rebuilt only when the pins below change; well under a second when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${ATTACHFS_CLIENTS_VENV:-.venv-clients}
# python-openstackclient 10 has `server add/remove share` and `server share list/show`;
# python-manilaclient gives it the `share` commands (and the share look-ups those need).
PINS=("python-openstackclient>=10,<11" "python-manilaclient>=5")

stamp=$VENV/.attachfs-clients-stamp
want=$(printf '%s\n' "${PINS[@]}" | sha256sum | cut -d' ' -f1)
if [[ -x $VENV/bin/openstack && -f $stamp && $(cat "$stamp") == "$want" ]]; then
    exit 0
fi

echo "setup-clients: installing ${PINS[*]} into $VENV"
rm -rf "$VENV"
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q "${PINS[@]}"
"$VENV/bin/openstack" --version >/dev/null
echo "$want" >"$stamp"
