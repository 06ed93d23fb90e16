"""The guest agent's side of the long-poll, without a guest: its `long_poll` function (defined by
ATTACHFS_AGENT_LIB=1) runs under the host's busybox (the busybox-static the guest image carries)
against the real metadata app served over TCP, as the guest's wget reaches it through the
metadata network: an unchanged answer (304), a change pushed by a ring, a device arriving while
a mount is pending (SIGUSR1) and not otherwise, a service that does not wait (the same body at
once), and the bound on waiting requests."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from attachfs.db.engine import Database, migrate
from attachfs.db.tables import Server, ShareMapping
from attachfs.metadata.app import LongPoll, MetadataBell, make_app
from harness.process import free_port, wait_for

AGENT = Path(__file__).parents[2] / "src/attachfs/virt/guest/attachfs-guest-agent"
BUSYBOX = shutil.which("busybox")
pytestmark = pytest.mark.skipif(BUSYBOX is None, reason="busybox (busybox-static) missing")
# Nothing ends a wait by itself during a test: the ring (or the signal) does.
NO_RECHECK = LongPoll(max_wait=60.0, max_waiting=1, recheck=60.0)
# The guest's first read, then one long_poll WAIT; prints its pid first (for SIGUSR1) and the
# return code last. PENDING non-empty: a mount is pending (a device arrival ends the wait).
SCRIPT = """
. "$AGENT"
WORK=$1
trap 'woken=1' USR1
mkdir -p "$WORK/src"
echo "pid $$"
[ -z "$PENDING" ] || echo "$PENDING" >"$WORK/pending"
meta=$WORK/src/meta_data.json
fetch "$MD_URL/meta_data.json$MD_QUERY" "$meta" || exit 9
long_poll "$2"
rc=$?
same=no
[ "$rc" != 0 ] || ! answered_same || same=yes
echo "meta $meta"
echo "same $same"
echo "rc $rc"
"""


@dataclass
class Service:
    db: Database
    sid: str
    bell: MetadataBell
    url: str

    def add_share(self, tag: str) -> None:
        with self.db.session() as s:
            s.add(ShareMapping(uuid=str(uuid.uuid4()), instance_uuid=self.sid,
                               share_id=str(uuid.uuid4()), status="active", tag=tag,
                               user_id="u1", project_id="p1"))


def serve(app: Starlette) -> Iterator[str]:
    """`app` on 127.0.0.1 in a thread, as uvicorn serves the metadata sockets; its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for("the metadata app to listen", lambda: server.started, 30, 0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    url = f"sqlite:///{tmp_path / 'attachfs.db'}"
    migrate(url)
    db = Database(url)
    sid = str(uuid.uuid4())
    with db.session() as s:
        s.add(Server(uuid=sid, name="vm", project_id="p1", user_id="u1", host="h", flavor_id="1",
                     image_id="i", vcpus=1, memory_mib=256, vm_state="active",
                     power_intent="on", meta={}, user_data=base64.b64encode(b"").decode()))
    bell = MetadataBell()
    try:
        for base in serve(make_app(db, sid, bell=bell, long_poll=NO_RECHECK)):
            service = Service(db, sid, bell, base)
            service.add_share("data")
            yield service
    finally:
        db.dispose()


class Agent:
    """The script above under busybox sh, in the background."""

    def __init__(self, base: str, work: Path, wait: int, pending: str = "") -> None:
        assert BUSYBOX is not None
        self.work = work
        self.proc = subprocess.Popen(
            [BUSYBOX, "sh", "-c", SCRIPT, "agent", str(work), str(wait)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=work,
            env={"PATH": os.environ["PATH"], "ATTACHFS_AGENT_LIB": "1", "AGENT": str(AGENT),
                 "ATTACHFS_MD_BASE": base, "PENDING": pending})
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline().decode().split()
        assert first[:1] == ["pid"], first
        self.pid = int(first[1])

    def rc(self) -> int:
        """long_poll's return code, once the script ended."""
        out, err = self.proc.communicate(timeout=30)
        said = dict(line.split(" ", 1) for line in out.decode().splitlines())
        assert "rc" in said, (out, err)
        self.meta, self.same = Path(said["meta"]), said["same"] == "yes"
        return int(said["rc"])

    def tags(self) -> list[str]:
        """The tags of the meta_data.json the agent holds now ($meta)."""
        return [d["tag"] for d in json.loads(self.meta.read_text())["devices"]]


def parked(service: Service) -> None:
    wait_for("the agent's request to wait", lambda: service.bell.waiting == 1, 30, 0.02)


def device_arrives(agent: Agent, times: int | None = None) -> None:
    """SIGUSR1 to the agent, as watch_devices sends on a virtio-fs bind: every 50 ms until the
    script ends (None) or `times` times, so one that lands just before the shell's `wait`
    (where it only sets the flag) is followed by one that ends the wait."""
    sent = 0
    while agent.proc.poll() is None and (times is None or sent < times):
        os.kill(agent.pid, signal.SIGUSR1)
        sent += 1
        with contextlib.suppress(subprocess.TimeoutExpired):
            agent.proc.wait(0.05)


def test_unchanged_metadata_is_a_304_after_the_wait(service: Service, tmp_path: Path) -> None:
    agent = Agent(service.url, tmp_path, 1)
    assert agent.rc() == 3
    assert agent.tags() == ["data"]


def test_a_change_is_pushed_when_the_agent_rings(service: Service, tmp_path: Path) -> None:
    agent = Agent(service.url, tmp_path, 30)
    parked(service)
    service.add_share("more")
    service.bell.ring()
    assert agent.rc() == 0 and not agent.same
    assert agent.tags() == ["data", "more"]


def test_a_device_ends_the_wait_only_while_a_mount_is_pending(service: Service,
                                                             tmp_path: Path) -> None:
    (tmp_path / "pending").mkdir()
    pending = Agent(service.url, tmp_path / "pending", 30, pending="data")
    parked(service)
    device_arrives(pending)
    assert pending.rc() == 5
    wait_for("the ended request to leave", lambda: service.bell.waiting == 0, 30, 0.02)

    (tmp_path / "idle").mkdir()
    idle = Agent(service.url, tmp_path / "idle", 30)
    parked(service)
    device_arrives(idle, times=5)  # nothing pending: it keeps waiting for the service
    assert idle.proc.poll() is None and service.bell.waiting == 1
    service.add_share("more")
    service.bell.ring()
    assert idle.rc() == 0
    assert idle.tags() == ["data", "more"]


def test_a_service_that_does_not_wait(tmp_path: Path) -> None:
    """An older metadata service ignores If-None-Match and wait: the same body at once."""
    body = {"uuid": "x", "devices": []}
    app = Starlette(routes=[Route("/openstack/latest/meta_data.json",
                                  lambda _request: JSONResponse(body))])
    for base in serve(app):
        agent = Agent(base, tmp_path, 30)
        assert agent.rc() == 0 and agent.same  # the agent then asks every POLL s, as a poll


def test_an_error_or_no_answer(service: Service, tmp_path: Path) -> None:
    """Over the bound on waiting requests (429): an HTTP error, 2; nothing listening: 1."""
    (tmp_path / "first").mkdir()
    first = Agent(service.url, tmp_path / "first", 30)
    parked(service)
    (tmp_path / "second").mkdir()
    assert Agent(service.url, tmp_path / "second", 30).rc() == 2
    service.bell.close()
    assert first.rc() == 3

    closed = Starlette(routes=[Route("/openstack/latest/meta_data.json",
                                     lambda _request: Response(status_code=503))])
    for base in serve(closed):
        (tmp_path / "third").mkdir()
        assert Agent(base, tmp_path / "third", 30).proc.wait(30) == 9  # no first read at all


def test_wait_device_ends_when_a_device_arrives(tmp_path: Path) -> None:
    """After a new meta_data.json whose device is not there yet, the agent waits for it (up to
    POLL s) before it retries and reports; the device's uevent ends that wait."""
    assert BUSYBOX is not None
    proc = subprocess.Popen(
        [BUSYBOX, "sh", "-c", '. "$AGENT"; trap "woken=1" USR1; echo "pid $$"; '
                             'wait_device 120; echo "rc $?"'],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path,
        env={"PATH": os.environ["PATH"], "ATTACHFS_AGENT_LIB": "1", "AGENT": str(AGENT)})
    assert proc.stdout is not None
    agent = Agent.__new__(Agent)
    agent.proc, agent.pid = proc, int(proc.stdout.readline().split()[1])
    device_arrives(agent)
    out, err = proc.communicate(timeout=30)
    assert out.split() == [b"rc", b"0"], err
