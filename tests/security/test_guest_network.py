"""From inside real guests: a guest reaches its own metadata service and nothing else on the host,
and what one guest does to the metadata address costs the host a bounded amount.

Booted through a real `attachfs serve` (API, agent, metadata listeners, the per-guest metadata
network helper), under TCG when KVM is not usable. The guests probe with busybox `nc`, `wget` and
`nslookup`; their console lines are the evidence.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Iterator

import pytest

from attachfs.virt.metadata_net import MAX_ADDRESS_SPACE, MAX_OPEN_FILES
from tests.security import guest_probe as gp
from tests.vm.harness import GUEST_TEST, Serve, serving, wait_for

pytestmark = GUEST_TEST

FLOOD = 300
CAP = 16  # metadata.max_connections default


@pytest.fixture
def serve() -> Iterator[Serve]:
    with serving(prefix="gnet-") as s:
        yield s


def _probes(out: str) -> dict[tuple[str, int], str]:
    return {(m[2], int(m[3])): m[1]
            for m in re.finditer(r"^PROBE (open|closed) (\S+) (\d+)", out, re.M)}


def _metadata_uuid(out: str) -> str:
    line = re.search(r"^PROBE-MD (.*)$", out, re.M)
    assert line, out[-3000:]
    return str(json.loads(line[1])["uuid"])


def test_guest_reaches_its_metadata_and_nothing_else(serve: Serve) -> None:
    ports = gp.listening_tcp_ports() | set(gp.REQUIRED_PORTS) | {serve.port}
    print(f"host TCP ports listening on loopback/any: {sorted(ports)}")
    script = gp.probe_script(ports)
    a = gp.boot_server(serve, "gnet-a", script)
    b = gp.boot_server(serve, "gnet-b", script)
    outs = {sid: gp.wait_console(serve, sid, "PROBE-DONE", timeout=300) for sid in (a, b)}

    for sid, other in ((a, b), (b, a)):
        out = outs[sid]
        expected = int(re.search(r"PROBE-DONE (\d+)", out)[1])  # type: ignore[index]
        probes = _probes(out)
        assert len(probes) == expected, f"{len(probes)} of {expected} probes reported"
        # the controls: a port that is there is seen as open
        assert probes[("169.254.169.254", 80)] == "open"
        assert probes[("127.0.0.1", gp.GUEST_LISTEN_PORT)] == "open"
        opened = sorted(k for k, v in probes.items() if v == "open"
                        and k not in {("169.254.169.254", 80), ("127.0.0.1", gp.GUEST_LISTEN_PORT)})
        assert opened == [], f"guest {sid} reached {opened}"
        for port in (serve.port, *gp.REQUIRED_PORTS):
            for target in gp.GUEST_TARGETS:
                assert probes[(target, port)] == "closed"
        # its own metadata, never the other guest's
        assert _metadata_uuid(out) == sid
        assert other not in out
        dns = re.search(r"^PROBE-DNS rc=(\d+)", out, re.M)
        assert dns and dns[1] != "0", "the guest got a DNS answer"
        print(f"guest {sid}: {len(probes) - 2} probes closed, metadata answered with its uuid")


def test_many_connections_cost_the_host_a_bounded_amount(serve: Serve) -> None:
    assert serve.proc is not None
    sid = gp.boot_server(serve, "gnet-flood", gp.flood_script(FLOOD))
    out = gp.wait_console(serve, sid, "FLOOD-BEFORE", timeout=300)
    assert sid in out.split("FLOOD-BEFORE", 1)[1].splitlines()[0]
    helpers = gp.helper_pids(sid)
    assert len(helpers) == 1, f"expected one metadata network helper, found {helpers}"
    before = gp.peak(gp.sample_for(2, serve.proc.pid, sid))
    gp.wait_console(serve, sid, "FLOOD-START", timeout=60)
    t0 = time.monotonic()
    during = gp.sample_for(8, serve.proc.pid, sid)
    out = gp.wait_console(serve, sid, "FLOOD-DONE", timeout=120)
    after = gp.peak(gp.sample_for(2, serve.proc.pid, sid))
    top = gp.peak(during)

    def line(tag: str) -> str:
        found = re.search(rf"^{tag} ?(.*)$", out, re.M)
        assert found, f"{tag} missing:\n{out[-3000:]}"
        return found[1].strip()

    print(f"{FLOOD} connections from one guest to 169.254.169.254:80 (cap {CAP}):")
    for name, s in (("before", before), ("during (peak)", top), ("after", after)):
        print(f"  {name:14} host processes {s.processes:4}  service+guest processes {s.related:3}"
              f"  socat {s.socat}  agent RSS {s.serve_rss_kib / 1024:6.1f} MiB"
              f"  helper RSS {s.helper_rss_kib / 1024:5.1f} MiB  helper fds {s.helper_fds}")
    print(f"  guest: nc still running when all were started {line('FLOOD-OPENED')}, after 2 s "
          f"{line('FLOOD-ALIVE-2S')}, after 12 s {line('FLOOD-ALIVE-12S')}; "
          f"flood took {time.monotonic() - t0:.1f} s")

    assert top.socat == 0
    assert top.related <= before.related + 1, "a process per connection on the host"
    assert len(gp.helper_pids(sid)) == 1
    assert top.serve_rss_kib <= before.serve_rss_kib + 32 * 1024
    # libslirp keeps a closed connection's two 128 KiB buffers through TIME_WAIT (10 s), so a
    # burst costs the helper memory for a while; its address space has a hard ceiling
    assert top.helper_rss_kib <= MAX_ADDRESS_SPACE // 1024 and top.helper_fds <= MAX_OPEN_FILES
    assert int(line("FLOOD-ALIVE-2S")) <= CAP + 4  # the rest were closed at once
    assert int(line("FLOOD-ALIVE-12S")) == 0  # idle ones closed after request_timeout
    assert sid in line("FLOOD-AFTER")  # and the metadata service still answers

    # The helper is supervised: killed, it is started again and the guest is answered again.
    victim = gp.helper_pids(sid)[0]
    seen = len(re.findall(r"^MDLOOP \d+ ok", gp.console(serve, sid), re.M))
    killed = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    fresh = wait_for("a new metadata network helper",
                     lambda: [p for p in gp.helper_pids(sid) if p != victim], timeout=30)
    wait_for("the guest answered again", lambda: len(re.findall(
        r"^MDLOOP \d+ ok", gp.console(serve, sid), re.M)) > seen + 1, timeout=60)
    print(f"helper {victim} killed: helper {fresh[0]} serves the guest again after "
          f"{time.monotonic() - killed:.1f} s")

    assert serve.action(sid, {"os-stop": None}).status_code == 202
    serve.wait_status(sid, "SHUTOFF")
    wait_for("the helper gone with its guest", lambda: gp.helper_pids(sid) == [], timeout=30)
