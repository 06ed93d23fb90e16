#!/usr/bin/env bash
# The main job on the embedded default, end to end, leaving nothing running:
# share with a file -> server -> attach (stopped, as 2.97) -> start -> the guest mounts it by tag
# (learned from the metadata service), reads the host's file, writes one the host then reads
# -> stop, detach, delete.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"

STATE=$(mktemp -d /var/lib/attachfs/demo.XXXXXX)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export ATTACHFS_URL="http://127.0.0.1:$PORT" ATTACHFS_TOKEN="demo:demo"
SERVE_PID=""

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

cleanup() {
    rc=$?
    if [[ -n $SERVE_PID ]] && kill -0 "$SERVE_PID" 2>/dev/null; then
        # Best effort on failure: delete the demo server through the API so the agent removes
        # the guest, its mounts and its virtiofsd, then stop the service.
        attachfs server delete demo-vm --wait --timeout 60 >/dev/null 2>&1 || true
        kill "$SERVE_PID" 2>/dev/null || true
        wait "$SERVE_PID" 2>/dev/null || true
    fi
    if [[ $rc -ne 0 ]]; then
        echo "demo failed (exit $rc); service log:" >&2
        tail -n 40 "$STATE/serve.log" >&2 || true
    fi
    # share filesystems (loop-mounted images) a failed run left under the state directory
    grep -o " $STATE/[^ ]*" /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l || true
    # the service binds its state dir onto itself as a shared mount (see docs/architecture.md)
    if mountpoint -q "$STATE"; then umount -l "$STATE" || true; fi
    rm -rf "$STATE"
    exit $rc
}
trap cleanup EXIT

step "Start the embedded service (API + agent + metadata, SQLite, built-in shares)"
# Started directly (not through `run`, whose subshell would take the pid) so the demo can stop it.
printf '$ attachfs serve --state-dir %s --listen 127.0.0.1:%s &\n' "$STATE" "$PORT"
attachfs serve --state-dir "$STATE" --listen "127.0.0.1:$PORT" >"$STATE/serve.log" 2>&1 &
SERVE_PID=$!
for _ in $(seq 1 100); do
    curl -fsS "$ATTACHFS_URL/v2.1/" >/dev/null 2>&1 && break
    sleep 0.1
done
echo "compute API at $ATTACHFS_URL/v2.1 (pid $SERVE_PID)"

step "Create a share and put a file in it (on the host)"
run attachfs share create demo-data --size 1
SHARE_ID=$(attachfs share show demo-data -f json | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
echo "hello from the host, $(date -u +%FT%TZ)" >"$STATE/shares/$SHARE_ID/hello.txt"
echo "host wrote $STATE/shares/$SHARE_ID/hello.txt"

step "Create a server whose user_data reads the share and writes back"
cat >"$STATE/user-data.sh" <<'EOF'
#!/bin/sh
if [ -f /mnt/data/hello.txt ]; then
  echo "guest read: $(cat /mnt/data/hello.txt)"
  echo "hello from the guest $(hostname), uptime $(cut -d' ' -f1 /proc/uptime)s" > /mnt/data/from-guest.txt
  sync
  echo "guest wrote: /mnt/data/from-guest.txt"
fi
EOF
run attachfs server create demo-vm --image debian-busybox --flavor a1.small \
    --user-data "$STATE/user-data.sh" --wait -f json >/dev/null
run attachfs server list
run attachfs server stop demo-vm --wait

step "Attach the share with tag 'data' (server stopped, as microversion 2.97 requires)"
run attachfs server add share demo-vm demo-data --tag data --wait
run attachfs server share list demo-vm

step "Start the server: the agent mounts the share on the host and boots the guest with it"
BEFORE=$(attachfs server console demo-vm | wc -l)  # the first boot's lines (no share yet)
START=$(date +%s.%N)
run attachfs server start demo-vm --wait
for _ in $(seq 1 240); do
    attachfs server console demo-vm | grep -q "guest wrote:" && break
    sleep 0.5
done
ELAPSED=$(python3 -c "import time; print(f'{time.time() - $START:.1f}')")
echo "The guest's own console since this boot (attachfs-guest and user_data lines):"
attachfs server console demo-vm | tail -n +"$((BEFORE + 1))" |
    grep -E "attachfs-guest:|guest (read|wrote):" | sed 's/^/    /'
attachfs server console demo-vm | grep -q "guest wrote:" || { echo "the guest did not report" >&2; exit 1; }
echo "(power-on to the guest's write: ${ELAPSED}s)"

step "The file the guest wrote, seen on the host"
run cat "$STATE/shares/$SHARE_ID/from-guest.txt"
run attachfs server share show demo-vm demo-data

step "Stop, detach, delete: nothing left behind"
run attachfs server stop demo-vm --wait
run attachfs server remove share demo-vm demo-data --wait
run attachfs server delete demo-vm --wait
run attachfs share delete demo-data
kill "$SERVE_PID"
wait "$SERVE_PID" 2>/dev/null || true
service=stopped
kill -0 "$SERVE_PID" 2>/dev/null && service="STILL RUNNING (pid $SERVE_PID)"
SERVE_PID=""
left=$(virsh -q -c qemu:///system list --name | grep -c '^attachfs-' || true)
mounts=$(grep -c " $STATE/" /proc/self/mountinfo || true)  # host mounts and share filesystems
echo "guests left: $left, host mounts left: $mounts, service: $service"
[[ $service == stopped && $left == 0 && $mounts == 0 ]]
