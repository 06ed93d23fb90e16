"""Helpers for the guest network tests: what the host listens on, what runs on it, and the shell
that probes from inside a guest (busybox: `nc -w`, `wget`, `nslookup`)."""

from __future__ import annotations

import base64
import os
import time
from dataclasses import dataclass
from pathlib import Path

from tests.vm.harness import Serve, wait_for

# Every address the guest could hope reaches something: the user-mode gateway, DNS, metadata (on
# other ports), another address in its network, and QEMU's classic user-mode host/DNS addresses.
GUEST_TARGETS = ("169.254.169.2", "169.254.169.3", "169.254.169.254", "169.254.169.1",
                 "10.0.2.2", "10.0.2.3")
REQUIRED_PORTS = (5432, 3306, 5672, 6379)  # PostgreSQL, MariaDB, RabbitMQ, Redis on loopback
GUEST_LISTEN_PORT = 7777  # each guest listens here: no other guest may reach it


# /proc/net/tcp{,6} spellings of 0.0.0.0, ::, ::1 and ::ffff:127.0.0.1 (127/8 is checked apart)
_LOOPBACK_OR_ANY = {"00000000", "0" * 32, "00000000000000000000000001000000",
                    "0000000000000000FFFF00000100007F"}


def listening_tcp_ports() -> set[int]:
    """TCP ports the host listens on, on loopback or on every address (/proc/net/tcp{,6})."""
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state = fields[1], fields[3]
            if state != "0A":  # LISTEN
                continue
            addr, port = local.split(":")
            if addr in _LOOPBACK_OR_ANY or (len(addr) == 8 and addr.endswith("7F")):
                ports.add(int(port, 16))
    return ports


def probe_script(ports: set[int], batch: int = 24) -> str:
    """user_data: listen on GUEST_LISTEN_PORT, try every (target, port), report each as
    'PROBE open|closed ADDR PORT', then this guest's metadata and a DNS query. Two controls
    show a reachable port is seen as open: the metadata service and the guest's own listener."""
    targets = [f"{a}:{p}" for a in GUEST_TARGETS for p in sorted(ports | {GUEST_LISTEN_PORT})
               if (a, p) != ("169.254.169.254", 80)]
    targets += ["169.254.169.254:80", f"127.0.0.1:{GUEST_LISTEN_PORT}"]
    return f"""#!/bin/sh
(while :; do nc -l -p {GUEST_LISTEN_PORT} -e /bin/echo guest-listener; done) >/dev/null 2>&1 &
(
# a default route, so that addresses outside 169.254.169.0/24 are really sent to the host side
ip route add default via 169.254.169.2 dev eth0 2>/dev/null
sleep 1
probe() {{
    out=$(timeout 8 nc -w 4 "$1" "$2" </dev/null 2>&1); rc=$?
    case "$out" in
        *"can't connect"*|*"timed out"*|*"unreachable"*) echo "PROBE closed $1 $2" ;;
        *) echo "PROBE open $1 $2 rc=$rc" ;;
    esac
}}
n=0
for t in {" ".join(targets)}; do
    probe "${{t%:*}}" "${{t#*:}}" &
    n=$((n + 1)); [ $((n % {batch})) -eq 0 ] && wait
done
wait
echo "PROBE-MD $(timeout 10 wget -q -O - http://169.254.169.254/openstack/latest/meta_data.json)"
timeout 8 nslookup attachfs.invalid 169.254.169.3 >/dev/null 2>&1
echo "PROBE-DNS rc=$?"
echo "PROBE-DONE {len(targets)}"
) >/dev/console 2>&1 &
"""


def flood_script(connections: int) -> str:
    """user_data: open `connections` idle TCP connections to the metadata service at once (one
    busybox nc each, all reading a FIFO no one writes to), report how many are still open over
    time, then poll the metadata service every second forever ('MDLOOP n ok|fail')."""
    md = "http://169.254.169.254/openstack/latest/meta_data.json"
    return f"""#!/bin/sh
(
alive() {{ ps | grep -c "[n]c 169.254.169.254 80"; }}
sleep 1
echo "FLOOD-BEFORE $(timeout 10 wget -q -O - {md} | head -c 60)"
sleep 6
mkfifo /tmp/hold
exec 3<>/tmp/hold
echo FLOOD-START
start=$(cut -d. -f1 /proc/uptime)
i=0
while [ $i -lt {connections} ]; do
    i=$((i + 1))
    nc 169.254.169.254 80 </tmp/hold >/dev/null 2>&1 &
done
echo "FLOOD-OPENED $(alive) (started in $(($(cut -d. -f1 /proc/uptime) - start)) s)"
sleep 2
echo "FLOOD-ALIVE-2S $(alive)"
sleep 10
echo "FLOOD-ALIVE-12S $(alive)"
echo "FLOOD-AFTER $(timeout 10 wget -q -O - {md} | head -c 60)"
echo FLOOD-DONE
n=0
while :; do
    n=$((n + 1))
    if timeout 5 wget -q -O /dev/null {md}; then echo "MDLOOP $n ok"; else echo "MDLOOP $n fail"; fi
    sleep 1
done
) >/dev/console 2>&1 &
"""


def boot_server(serve: Serve, name: str, user_data: str) -> str:
    r = serve.http.post("/v2.1/servers", json={"server": {
        "name": name, "flavorRef": "2", "imageRef": "debian-busybox",
        "user_data": base64.b64encode(user_data.encode()).decode()}})
    assert r.status_code == 202, r.text
    return str(r.json()["server"]["id"])


def console(serve: Serve, sid: str) -> str:
    path = serve.state_dir / "console" / f"{sid}.log"
    return path.read_text(errors="replace") if path.exists() else ""


def wait_console(serve: Serve, sid: str, text: str, timeout: float = 180) -> str:
    return wait_for(f"{text!r} on the console of {sid}",
                    lambda: (out := console(serve, sid)) and text in out and out, timeout)


# ---- the host's processes -----------------------------------------------------------------------
def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _ppid(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


@dataclass
class HostSample:
    processes: int  # every process on the host (other work on it adds noise)
    related: int  # the service's process tree, the guest's QEMU tree and its helper
    socat: int
    serve_rss_kib: int
    helper_rss_kib: int
    helper_fds: int


def helper_pids(server_uuid: str) -> list[int]:
    return [pid for pid in _pids() if "attachfs.virt.metadata_net" in _cmdline(pid)
            and server_uuid in _cmdline(pid)]


def qemu_pid(server_uuid: str) -> int | None:
    for pid in _pids():
        argv = _cmdline(pid)
        if argv and "qemu-system" in argv[0] and any(server_uuid in a for a in argv):
            return pid
    return None


def _pids() -> list[int]:
    return [int(e) for e in os.listdir("/proc") if e.isdigit()]


def sample(serve_pid: int, server_uuid: str) -> HostSample:
    pids = _pids()
    roots = {serve_pid, *(p for p in [qemu_pid(server_uuid)] if p), *helper_pids(server_uuid)}
    parents = {pid: _ppid(pid) for pid in pids}

    def related(pid: int) -> bool:
        for _ in range(64):
            if pid in roots:
                return True
            pid = parents.get(pid, 0)
            if pid <= 1:
                return False
        return False

    helpers = helper_pids(server_uuid)
    return HostSample(
        processes=len(pids), related=sum(1 for p in pids if related(p)),
        socat=sum(1 for p in pids if (argv := _cmdline(p)) and argv[0].endswith("socat")),
        serve_rss_kib=rss_kib(serve_pid),
        helper_rss_kib=sum(rss_kib(p) for p in helpers),
        helper_fds=sum(open_fds(p) for p in helpers))


def peak(samples: list[HostSample]) -> HostSample:
    return HostSample(*(max(getattr(s, f) for s in samples) for f in HostSample.__dataclass_fields__))


def sample_for(seconds: float, serve_pid: int, server_uuid: str) -> list[HostSample]:
    out = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        out.append(sample(serve_pid, server_uuid))
        time.sleep(0.2)
    return out
