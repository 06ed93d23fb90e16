#!/usr/bin/env bash
# Configure and start libvirt for attachfs on a host without systemd (the reasons are below).
# Idempotent and fast when already done:
#   - /etc/libvirt/qemu.conf: QEMU runs as root (user/group "root"); otherwise libvirt re-probes
#     QEMU for ~60 s per define because the libvirt-qemu user cannot open /dev/kvm, and root is
#     what virtiofsd (started by libvirt) needs to reach our state directories.
#     libvirt's default QEMU seccomp sandbox (spawn=deny, ...) stays on: QEMU spawns nothing (the
#     guest's metadata network runs in a helper of attachfs, not in QEMU), so an older setup's
#     `seccomp_sandbox = 0` is removed.
#   - starts virtlogd (daemon mode) and libvirtd (under a subreaper, start-libvirtd.sh) when not
#     running, and waits until `virsh -c qemu:///system version` answers.
# Packages needed (apt): qemu-system-x86 qemu-system-common libvirt-daemon-system libslirp0 tini.
set -euo pipefail

CONF=/etc/libvirt/qemu.conf
URI=qemu:///system

if [[ $(id -u) -ne 0 ]]; then
    echo "setup-libvirt: must run as root" >&2
    exit 1
fi

for prog in libvirtd virtlogd virsh; do
    if ! command -v "$prog" >/dev/null 2>&1; then
        echo "setup-libvirt: $prog not found (apt-get install libvirt-daemon-system)" >&2
        exit 1
    fi
done

changed=0
# set_conf KEY VALUE: make `KEY = VALUE` the only active setting of KEY in qemu.conf.
set_conf() {
    local key=$1 value=$2
    local active
    active=$(grep -E "^[[:space:]]*${key}[[:space:]]*=" "$CONF" || true)
    if [[ $active == "$key = $value" ]]; then
        return 0
    fi
    sed -i -E "/^[[:space:]]*${key}[[:space:]]*=/d" "$CONF"
    printf '%s = %s\n' "$key" "$value" >>"$CONF"
    changed=1
}

# unset_conf KEY: no active setting of KEY in qemu.conf (libvirt's default applies).
unset_conf() {
    local key=$1
    if grep -qE "^[[:space:]]*${key}[[:space:]]*=" "$CONF"; then
        sed -i -E "/^[[:space:]]*${key}[[:space:]]*=/d" "$CONF"
        changed=1
    fi
}

set_conf user '"root"'
set_conf group '"root"'
unset_conf seccomp_sandbox

running() { pgrep -x "$1" >/dev/null 2>&1; }

# A libvirtd not under a subreaper (an older setup's `libvirtd -d`) is restarted under one:
# see start-libvirtd.sh for why. Running guests keep running across a libvirtd restart.
under_reaper() {
    local pid ppid
    pid=$(pgrep -x libvirtd | head -n1)
    ppid=$(ps -o ppid= -p "$pid" | tr -d ' ')
    [[ $(ps -o comm= -p "$ppid") == tini ]]
}
if running libvirtd && { [[ $changed -eq 1 ]] || ! under_reaper; }; then
    echo "setup-libvirt: restarting libvirtd (configuration changed or not under tini)"
    pid=$(pgrep -x libvirtd | head -n1)
    kill "$pid"
    for _ in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
    done
fi

if ! running virtlogd; then
    virtlogd -d
fi
bash "$(dirname "$0")/start-libvirtd.sh"
echo "setup-libvirt: libvirt ready ($URI)"
