#!/usr/bin/env bash
# Start libvirtd (when not running) in the foreground under `tini -s`, a child subreaper, and
# wait until it answers. The one place libvirtd is started (setup-libvirt.sh, the outage tests).
#
# Why a subreaper: libvirtd daemonizes QEMU and every virtiofsd, so they are orphans whose exit
# is reaped by the nearest subreaper ancestor, else by PID 1. PID 1 here is not systemd and
# reaps orphans late (measured: 1.3-1.6 s after they exit). libvirt waits for a stopped
# virtiofsd to be gone (it polls kill(pid, 0), which a zombie still passes) inside the domain's
# job, so each hot-unplugged share cost ~2 s, one after another: seven unplugs whose
# DEVICE_DELETED arrived together left the live XML 2.0 s apart (14 s in all). Under tini the
# exit is reaped at once.
set -euo pipefail
URI=qemu:///system
LOG=/var/log/libvirt/libvirtd-foreground.log

if ! pgrep -x libvirtd >/dev/null 2>&1; then
    mkdir -p "$(dirname "$LOG")"
    # setsid: out of the caller's session, so it outlives a test run or a shell
    setsid tini -s -- libvirtd </dev/null >>"$LOG" 2>&1 &
fi
for _ in $(seq 1 150); do
    if virsh -c "$URI" version >/dev/null 2>&1; then
        exit 0
    fi
    sleep 0.2
done
echo "start-libvirtd: libvirtd did not answer on $URI within 30 s (see $LOG)" >&2
exit 1
