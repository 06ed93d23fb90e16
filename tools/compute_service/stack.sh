#!/usr/bin/env bash
# A real OpenStack compute service side by side on 127.0.0.1, for recording reference answers:
# Keystone 30, Placement 16, Glance 33 (file store), Manila 23 (dummy driver), Nova 34
# (api under gunicorn, conductor, scheduler, compute with fake.FakeDriverWithoutFakeNodes) and a
# stub network service (netstub.py: empty lists). MariaDB databases `cs_*`, RabbitMQ vhost
# `compute-service`; state, config, logs and pids under one directory.
#
#   stack.sh start  [--state DIR] [--venv DIR]   configure (first time), migrate, start, wait
#   stack.sh stop   [--state DIR]                stop every daemon this state dir started
#   stack.sh status [--state DIR]                show daemons and ports
#   stack.sh env    [--state DIR]                print the recorder's environment (URLs, passwords)
#   stack.sh destroy [--state DIR]               stop, drop the cs_* databases and the vhost, rm DIR
#
# Environment: COMPUTE_SERVICE_STATE (default /tmp/compute-service), COMPUTE_SERVICE_VENV
# (default <repo>/.venv-nova, made by install.sh), COMPUTE_SERVICE_PORT_BASE (default 19000:
# keystone +500, glance +292, network +696, nova +774, placement +778, manila +786),
# COMPUTE_SERVICE_DB_PREFIX (default cs_), COMPUTE_SERVICE_VHOST (default compute-service).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)

STATE=${COMPUTE_SERVICE_STATE:-/tmp/compute-service}
VENV=${COMPUTE_SERVICE_VENV:-$root/.venv-nova}
BASE=${COMPUTE_SERVICE_PORT_BASE:-19000}
DBP=${COMPUTE_SERVICE_DB_PREFIX:-cs_}
VHOST=${COMPUTE_SERVICE_VHOST:-compute-service}
DB_URL_BASE="mysql+pymysql://root@127.0.0.1:3306"

cmd=${1:-}
[[ -n $cmd ]] && shift
while [[ $# -gt 0 ]]; do
    case $1 in
        --state) STATE=$2; shift 2 ;;
        --venv) VENV=$2; shift 2 ;;
        *) echo "stack.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
STATE=$(mkdir -p "$STATE" && cd "$STATE" && pwd)

P_KEYSTONE=$((BASE + 500)); P_GLANCE=$((BASE + 292)); P_NET=$((BASE + 696))
P_NOVA=$((BASE + 774)); P_PLACEMENT=$((BASE + 778)); P_MANILA=$((BASE + 786))
H=127.0.0.1
KS=http://$H:$P_KEYSTONE
ETC=$STATE/etc; LOG=$STATE/log; RUN=$STATE/run
SECRETS=$STATE/secrets.env
BIN=$VENV/bin

log() { echo "stack.sh: $*" >&2; }

mysql_q() { mysql -h127.0.0.1 -uroot -N -e "$1"; }

port_open() { (exec 3<>"/dev/tcp/$H/$1") 2>/dev/null; }

wait_http() {  # URL [seconds]
    local url=$1 limit=${2:-90} t0=$SECONDS
    until curl -s -o /dev/null -m 5 "$url"; do
        if ((SECONDS - t0 > limit)); then log "timeout waiting for $url"; return 1; fi
        sleep 0.3
    done
}

alive() {  # PID: running and not a zombie
    local pid=$1 st
    [[ -r /proc/$pid/stat ]] || return 1
    st=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || return 1
    [[ $st != Z ]]
}

launch() {  # NAME CMD...: run in its own session, pid in run/NAME.pid, output in log/NAME.log
    local name=$1; shift
    if [[ -f $RUN/$name.pid ]] && alive "$(cat "$RUN/$name.pid")"; then
        log "$name already running (pid $(cat "$RUN/$name.pid"))"; return 0
    fi
    setsid "$@" >>"$LOG/$name.log" 2>&1 </dev/null &
    echo $! >"$RUN/$name.pid"
}

secrets() {
    if [[ ! -f $SECRETS ]]; then
        umask 077
        {
            echo "ADMIN_PASSWORD=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
            echo "SERVICE_PASSWORD=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
        } >"$SECRETS"
    fi
    # shellcheck disable=SC1090
    source "$SECRETS"
}

authtoken() {  # USER: a [keystone_authtoken]-style password block body
    cat <<EOF
auth_type = password
auth_url = $KS/v3
www_authenticate_uri = $KS/v3
project_domain_name = Default
user_domain_name = Default
project_name = service
username = $1
password = $SERVICE_PASSWORD
region_name = RegionOne
EOF
}

wrapper() {  # FILE MODULE: a gunicorn entry point that clears sys.argv before the app reads it
    cat >"$1" <<EOF
import sys
sys.argv = sys.argv[:1]${3:+ + $3}
from $2 import application  # noqa: E402,F401
EOF
}

configure() {
    mkdir -p "$ETC"/{keystone,nova,placement,glance,manila} "$LOG" "$RUN" "$STATE"/{wsgi,lock,glance-images,glance-staging,glance-tasks,nova-instances,nova-state,manila} "$STATE/keystone/fernet-keys" "$STATE/keystone/credential-keys"
    secrets
    local rabbit="rabbit://guest:guest@127.0.0.1:5672/$VHOST"

    cat >"$ETC/keystone/keystone.conf" <<EOF
[DEFAULT]
log_file = $LOG/keystone-app.log
[database]
connection = $DB_URL_BASE/${DBP}keystone
[token]
provider = fernet
[fernet_tokens]
key_repository = $STATE/keystone/fernet-keys
[credential]
key_repository = $STATE/keystone/credential-keys
[resource]
admin_project_name = admin
admin_project_domain_name = Default
EOF

    cat >"$ETC/placement/placement.conf" <<EOF
[DEFAULT]
log_file = $LOG/placement-app.log
[placement_database]
connection = $DB_URL_BASE/${DBP}placement
[api]
auth_strategy = keystone
[keystone_authtoken]
$(authtoken placement)
EOF

    cp "$VENV/etc/glance/glance-api-paste.ini" "$ETC/glance/glance-api-paste.ini"
    cat >"$ETC/glance/glance-api.conf" <<EOF
[DEFAULT]
log_file = $LOG/glance-app.log
enabled_backends = fs:file
bind_host = $H
bind_port = $P_GLANCE
[glance_store]
default_backend = fs
[fs]
filesystem_store_datadir = $STATE/glance-images
[os_glance_staging_store]
filesystem_store_datadir = $STATE/glance-staging
[os_glance_tasks_store]
filesystem_store_datadir = $STATE/glance-tasks
[database]
connection = $DB_URL_BASE/${DBP}glance
[paste_deploy]
flavor = keystone
config_file = $ETC/glance/glance-api-paste.ini
[keystone_authtoken]
$(authtoken glance)
[oslo_concurrency]
lock_path = $STATE/lock
EOF

    cp "$VENV/etc/manila/api-paste.ini" "$ETC/manila/api-paste.ini"
    cat >"$ETC/manila/manila.conf" <<EOF
[DEFAULT]
log_dir = $LOG
transport_url = $rabbit
auth_strategy = keystone
api_paste_config = $ETC/manila/api-paste.ini
state_path = $STATE/manila
host = cs-manila
enabled_share_backends = dummy1
enabled_share_protocols = NFS,CIFS,CEPHFS
default_share_type = default
[database]
connection = $DB_URL_BASE/${DBP}manila
[keystone_authtoken]
$(authtoken manila)
[oslo_concurrency]
lock_path = $STATE/lock
[dummy1]
share_driver = manila.tests.share.drivers.dummy.DummyDriver
share_backend_name = dummy1
driver_handles_share_servers = False
dummy_driver_default_driver_method_delay = 0.1
EOF

    cp "$VENV/etc/nova/api-paste.ini" "$ETC/nova/api-paste.ini"
    local sec
    {
        cat <<EOF
[DEFAULT]
log_dir = $LOG
transport_url = $rabbit
compute_driver = fake.FakeDriverWithoutFakeNodes
host = cs-compute
my_ip = $H
my_shared_fs_storage_ip = $H
state_path = $STATE/nova-state
instances_path = $STATE/nova-instances
initial_ram_allocation_ratio = 4.0
initial_cpu_allocation_ratio = 16.0
[api]
auth_strategy = keystone
[wsgi]
api_paste_config = $ETC/nova/api-paste.ini
[api_database]
connection = $DB_URL_BASE/${DBP}nova_api
[database]
connection = $DB_URL_BASE/${DBP}nova_cell1
[oslo_concurrency]
lock_path = $STATE/lock
[scheduler]
discover_hosts_in_cells_interval = 5
[vnc]
enabled = false
[oslo_policy]
enforce_scope = true
enforce_new_defaults = true
[keystone_authtoken]
$(authtoken nova)
service_token_roles_required = true
[service_user]
send_service_user_token = true
$(authtoken nova)
EOF
        for sec in placement glance neutron manila keystone cinder; do
            echo "[$sec]"
            authtoken nova
            echo "valid_interfaces = public"
            if [[ $sec == neutron ]]; then echo "endpoint_override = http://$H:$P_NET"; fi
        done
    } >"$ETC/nova/nova.conf"

    wrapper "$STATE/wsgi/keystone_api.py" keystone.wsgi.api
    wrapper "$STATE/wsgi/placement_api.py" placement.wsgi.api
    wrapper "$STATE/wsgi/glance_api.py" glance.wsgi.api
    wrapper "$STATE/wsgi/nova_api.py" nova.wsgi.osapi_compute
    wrapper "$STATE/wsgi/manila_api.py" manila.wsgi.api "['--config-file', '$ETC/manila/manila.conf']"
}

databases() {
    local db
    for db in keystone placement glance manila nova_api nova_cell0 nova_cell1; do
        mysql_q "CREATE DATABASE IF NOT EXISTS \`${DBP}$db\` CHARACTER SET utf8mb4"
    done
    if ! rabbitmqctl -q list_vhosts 2>/dev/null | grep -qx "$VHOST"; then
        rabbitmqctl -q add_vhost "$VHOST" >/dev/null
    fi
    rabbitmqctl -q set_permissions -p "$VHOST" guest '.*' '.*' '.*' >/dev/null
}

gunicorn_up() {  # NAME PORT MODULE-DIR-FILE [ENV=VAL...]
    local name=$1 port=$2 mod=$3; shift 3
    launch "$name" env "$@" "$BIN/gunicorn" --chdir "$STATE/wsgi" --bind "$H:$port" \
        --workers 1 --threads 8 --worker-class gthread --timeout 120 --keep-alive 30 \
        --no-control-socket --name "cs-$name" "$mod:application"
}

migrate_and_bootstrap() {
    local marker=$STATE/.migrated
    [[ -f $marker ]] && return 0
    log "migrating databases (first start)"
    local kconf=(--config-file "$ETC/keystone/keystone.conf")
    "$BIN/keystone-manage" "${kconf[@]}" db_sync >>"$LOG/setup.log" 2>&1
    "$BIN/keystone-manage" "${kconf[@]}" fernet_setup --keystone-user root --keystone-group root >>"$LOG/setup.log" 2>&1
    "$BIN/keystone-manage" "${kconf[@]}" credential_setup --keystone-user root --keystone-group root >>"$LOG/setup.log" 2>&1
    "$BIN/keystone-manage" "${kconf[@]}" bootstrap --bootstrap-password "$ADMIN_PASSWORD" \
        --bootstrap-admin-url "$KS/v3" --bootstrap-public-url "$KS/v3" \
        --bootstrap-internal-url "$KS/v3" --bootstrap-region-id RegionOne >>"$LOG/setup.log" 2>&1
    "$BIN/placement-manage" --config-file "$ETC/placement/placement.conf" db sync >>"$LOG/setup.log" 2>&1
    "$BIN/glance-manage" --config-file "$ETC/glance/glance-api.conf" db_sync >>"$LOG/setup.log" 2>&1
    "$BIN/manila-manage" --config-file "$ETC/manila/manila.conf" db sync >>"$LOG/setup.log" 2>&1
    local nconf=(--config-file "$ETC/nova/nova.conf")
    "$BIN/nova-manage" "${nconf[@]}" api_db sync >>"$LOG/setup.log" 2>&1
    "$BIN/nova-manage" "${nconf[@]}" cell_v2 map_cell0 \
        --database_connection "$DB_URL_BASE/${DBP}nova_cell0" >>"$LOG/setup.log" 2>&1
    "$BIN/nova-manage" "${nconf[@]}" cell_v2 list_cells 2>/dev/null | grep -q ' cell1 ' ||
        "$BIN/nova-manage" "${nconf[@]}" cell_v2 create_cell --name cell1 >>"$LOG/setup.log" 2>&1
    "$BIN/nova-manage" "${nconf[@]}" db sync >>"$LOG/setup.log" 2>&1
    touch "$marker"
}

start() {
    [[ -x $BIN/nova-compute ]] || { log "no $BIN/nova-compute: run tools/compute_service/install.sh"; exit 1; }
    local t0=$SECONDS
    configure
    databases
    migrate_and_bootstrap
    gunicorn_up keystone "$P_KEYSTONE" keystone_api "OS_KEYSTONE_CONFIG_DIR=$ETC/keystone"
    launch netstub "$BIN/python" "$here/netstub.py" --host "$H" --port "$P_NET"
    wait_http "$KS/v3"
    "$BIN/python" "$here/ks_setup.py" --auth-url "$KS/v3" --admin-password "$ADMIN_PASSWORD" \
        --service-password "$SERVICE_PASSWORD" --user nova --user placement --user glance --user manila \
        --endpoint "compute=nova=http://$H:$P_NOVA/v2.1" \
        --endpoint "placement=placement=http://$H:$P_PLACEMENT" \
        --endpoint "image=glance=http://$H:$P_GLANCE" \
        --endpoint "network=neutron=http://$H:$P_NET" \
        --endpoint "sharev2=manilav2=http://$H:$P_MANILA/v2" >>"$LOG/setup.log" 2>&1
    gunicorn_up placement "$P_PLACEMENT" placement_api "OS_PLACEMENT_CONFIG_DIR=$ETC/placement"
    gunicorn_up glance "$P_GLANCE" glance_api "OS_GLANCE_CONFIG_DIR=$ETC/glance"
    gunicorn_up manila-api "$P_MANILA" manila_api
    launch manila-scheduler "$BIN/manila-scheduler" --config-file "$ETC/manila/manila.conf"
    # Where this start's manila-share output begins (empty if it is already running).
    local share_log_from=""
    if ! { [[ -f $RUN/manila-share.pid ]] && alive "$(cat "$RUN/manila-share.pid")"; }; then
        share_log_from=$(($(stat -c %s "$LOG/manila-share.log" 2>/dev/null || echo 0) + 1))
    fi
    launch manila-share "$BIN/manila-share" --config-file "$ETC/manila/manila.conf"
    gunicorn_up nova-api "$P_NOVA" nova_api "OS_NOVA_CONFIG_DIR=$ETC/nova" \
        "OS_NOVA_CONFIG_FILES=api-paste.ini;nova.conf"
    local nconf=(--config-file "$ETC/nova/nova.conf")
    launch nova-conductor "$BIN/nova-conductor" "${nconf[@]}"
    launch nova-scheduler "$BIN/nova-scheduler" "${nconf[@]}"
    launch nova-compute "$BIN/nova-compute" "${nconf[@]}"
    wait_http "http://$H:$P_PLACEMENT/"
    wait_http "http://$H:$P_GLANCE/versions"
    wait_http "http://$H:$P_MANILA/"
    wait_http "http://$H:$P_NOVA/v2.1"
    # The compute node must be in placement and mapped to cell1 before a server can be scheduled.
    local t1=$SECONDS
    until "$BIN/nova-manage" "${nconf[@]}" cell_v2 discover_hosts --strict >>"$LOG/setup.log" 2>&1 ||
          mysql_q "SELECT 1 FROM \`${DBP}nova_api\`.host_mappings WHERE host='cs-compute'" | grep -q 1; do
        if ((SECONDS - t1 > 120)) || ! alive "$(cat "$RUN/nova-compute.pid")"; then
            log "nova-compute never registered (see $LOG/nova-compute.log)"; exit 1
        fi
        sleep 2
    done
    # manila-share must report its pool before a share can be scheduled.
    t1=$SECONDS
    until mysql_q "SELECT 1 FROM \`${DBP}manila\`.services WHERE topic='manila-share' AND deleted=0 AND disabled=0" | grep -q 1; do
        if ((SECONDS - t1 > 120)); then log "manila-share never registered (see $LOG/manila-share.log)"; exit 1; fi
        sleep 1
    done
    # ... and have started its driver: first it "ensures" every existing share (status
    # `ensuring`), and only then does the scheduler learn its pool. A share asked for before
    # that goes to error ("There are no hosts to fulfill this provisioning request").
    if [[ -n $share_log_from ]]; then
        t1=$SECONDS
        until tail -c "+$share_log_from" "$LOG/manila-share.log" | grep -q "Finished initialization of driver"; do
            if ((SECONDS - t1 > 600)) || ! alive "$(cat "$RUN/manila-share.pid")"; then
                log "manila-share never started its driver (see $LOG/manila-share.log)"; exit 1
            fi
            sleep 1
        done
    fi
    log "up in $((SECONDS - t0)) s: keystone $KS nova http://$H:$P_NOVA/v2.1 manila http://$H:$P_MANILA/v2"
    rss
}

rss() {  # resident memory of every daemon's process group, MiB
    local f name pid total=0 kb
    for f in "$RUN"/*.pid; do
        [[ -f $f ]] || continue
        name=$(basename "$f" .pid); pid=$(cat "$f")
        alive "$pid" || { printf '  %-17s not running\n' "$name"; continue; }
        kb=$(ps -o rss= --sid "$pid" 2>/dev/null | awk '{s+=$1} END {print s+0}')
        total=$((total + kb))
        printf '  %-17s pid %-7s %5d MiB\n' "$name" "$pid" $((kb / 1024))
    done
    printf '  %-17s %13d MiB\n' total $((total / 1024))
}

stop() {
    local f pid name i
    for f in "$RUN"/*.pid; do
        [[ -f $f ]] || continue
        pid=$(cat "$f"); name=$(basename "$f" .pid)
        if alive "$pid"; then kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true; fi
    done
    for f in "$RUN"/*.pid; do
        [[ -f $f ]] || continue
        pid=$(cat "$f"); name=$(basename "$f" .pid)
        for i in $(seq 1 50); do alive "$pid" || break; sleep 0.2; done
        if alive "$pid" || pgrep -s "$pid" >/dev/null 2>&1; then
            log "$name ignored SIGTERM: SIGKILL"
            kill -KILL -- "-$pid" 2>/dev/null || true
        fi
        rm -f "$f"
    done
    log "stopped"
}

status() {
    rss
    local p
    for p in $P_KEYSTONE $P_PLACEMENT $P_GLANCE $P_MANILA $P_NOVA $P_NET; do
        if port_open "$p"; then echo "  port $p open"; else echo "  port $p closed"; fi
    done
}

print_env() {
    secrets
    cat <<EOF
COMPUTE_SERVICE_AUTH_URL=$KS/v3
COMPUTE_SERVICE_COMPUTE_URL=http://$H:$P_NOVA/v2.1
COMPUTE_SERVICE_SHARE_URL=http://$H:$P_MANILA/v2
COMPUTE_SERVICE_IMAGE_URL=http://$H:$P_GLANCE
COMPUTE_SERVICE_ADMIN_PASSWORD=$ADMIN_PASSWORD
COMPUTE_SERVICE_MANILA_DB=${DBP}manila
EOF
}

destroy() {
    stop
    local db
    for db in keystone placement glance manila nova_api nova_cell0 nova_cell1; do
        mysql_q "DROP DATABASE IF EXISTS \`${DBP}$db\`"
    done
    rabbitmqctl -q delete_vhost "$VHOST" >/dev/null 2>&1 || true
    rm -rf "$STATE"
    log "destroyed"
}

case $cmd in
    start) start ;;
    stop) stop ;;
    status) status ;;
    env) print_env ;;
    destroy) destroy ;;
    *) sed -n 2,18p "$0"; exit 2 ;;
esac
