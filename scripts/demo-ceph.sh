#!/usr/bin/env bash
# `make demo-ceph`: a CephFS share from a real Ceph, made through a real Manila, attached with the
# unchanged `openstack` CLI (Keystone password auth) to a running guest of `attachfs serve`, which
# reads and writes it; then detach, delete, and everything torn down (also on failure or Ctrl-C).
# The work is done by harness/demo_ceph.py, with the code the tests use (docs/ceph.md).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $(id -u) -ne 0 ]]; then
    echo "demo-ceph: run as root (Ceph daemons, ceph-fuse mounts, libvirt guests)" >&2
    exit 1
fi
if [[ ! -x .venv/bin/python ]]; then
    echo "demo-ceph: no virtualenv: run \`make setup\` first" >&2
    exit 1
fi

# Manila keeps its state in MariaDB and talks over RabbitMQ. They are this host's own services
# (as PostgreSQL is for `make test`): started here when installed but not running (no systemd
# here, so nothing starts them at boot); the demo says so and stops if one is missing.
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for svc in mariadb:3306 rabbitmq-server:5672; do
    name=${svc%:*} port=${svc#*:}
    if ! listening "$port" && [[ -x /etc/init.d/$name ]]; then
        echo "demo-ceph: starting $name"
        service "$name" start >/dev/null
        for _ in $(seq 1 150); do listening "$port" && break; sleep 0.2; done
    fi
done
# The Ceph packages are in (make setup): let Manila's virtualenv see their Python bindings.
bash scripts/setup-manila.sh

exec .venv/bin/python -m harness.demo_ceph
