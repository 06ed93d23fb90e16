"""Drive a real `attachfs serve` process (API + agent + metadata) for the vm tests."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx

from attachfs.storage import mountinfo

IMAGES_DIR = Path(os.environ.get("ATTACHFS_IMAGES", "/var/lib/attachfs/images"))
TEST_STATE = Path("/var/lib/attachfs/test-state")
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, fn: Callable[[], T | None], timeout: float = 120,
             interval: float = 0.3) -> T:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class Serve:
    """`attachfs serve` in its own process, so a test can kill -9 it and start it again."""

    def __init__(self, state_dir: Path, config: str = "") -> None:
        self.state_dir = state_dir
        self.config = config  # TOML text, for settings that have no flag
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = state_dir / "serve.log"
        self.http = httpx.Client(base_url=self.url, timeout=30, headers={
            "X-Auth-Token": "alice:p1", "OpenStack-API-Version": "compute 2.97"})

    def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        exe = Path(sys.executable).with_name("attachfs")
        argv = [str(exe), "serve", "--state-dir", str(self.state_dir),
                "--listen", f"127.0.0.1:{self.port}", "--images-dir", str(IMAGES_DIR)]
        if self.config:
            (self.state_dir / "attachfs.toml").write_text(self.config)
            argv += ["--config", str(self.state_dir / "attachfs.toml")]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        wait_for("the API to answer", self._answers, timeout=30)

    def _answers(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"attachfs serve exited: {self.log.read_text()[-3000:]}")
        try:
            return self.http.get("/v2.1/").status_code == 200
        except httpx.TransportError:
            return False

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    # ---- API helpers ---------------------------------------------------------------------
    def new_share(self, name: str) -> tuple[str, Path]:
        """A built-in share: its id and its directory on the host."""
        r = self.http.put(f"/v2.1/os-filesystem/{name}", json={"fs_entry": {"size": 1}})
        assert r.status_code == 201, r.text
        share_id = str(r.json()["fs_entry"]["id"])
        return share_id, self.state_dir / "shares" / share_id

    def server(self, sid: str) -> dict[str, Any] | None:
        r = self.http.get(f"/v2.1/servers/{sid}")
        if r.status_code == 404:
            return None
        r.raise_for_status()
        server: dict[str, Any] = r.json()["server"]
        return server

    def wait_status(self, sid: str, status: str, timeout: float = 180) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            s = self.server(sid)
            assert s is not None, f"server {sid} vanished"
            if s["status"] == "ERROR":
                raise AssertionError(f"server went to ERROR: {s.get('fault')}")
            return s if s["status"] == status and s["OS-EXT-STS:task_state"] is None else None
        return wait_for(f"server {sid} {status}", check, timeout)

    def wait_gone(self, sid: str, timeout: float = 120) -> None:
        wait_for(f"server {sid} deleted", lambda: self.server(sid) is None, timeout)

    def action(self, sid: str, body: dict[str, Any]) -> httpx.Response:
        return self.http.post(f"/v2.1/servers/{sid}/action", json=body)

    def mapping(self, sid: str, share_id: str) -> dict[str, Any] | None:
        r = self.http.get(f"/v2.1/servers/{sid}/shares/{share_id}",
                          headers={"X-Auth-Token": "admin:admin"})
        if r.status_code == 404:
            return None
        r.raise_for_status()
        mapping: dict[str, Any] = r.json()["share"]
        return mapping

    def wait_mapping(self, sid: str, share_id: str, status: str,
                     timeout: float = 120) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            m = self.mapping(sid, share_id)
            return m if m and m["status"] == status else None
        return wait_for(f"attachment {share_id} {status}", check, timeout)

    def console(self, sid: str) -> str:
        r = self.action(sid, {"os-getConsoleOutput": {}})
        r.raise_for_status()
        return str(r.json()["output"])

    def wait_console(self, sid: str, text: str, timeout: float = 120) -> str:
        return wait_for(f"console line {text!r}",
                        lambda: (out := self.console(sid)) and text in out and out, timeout)

    def notifications(self) -> list[dict[str, Any]]:
        """What the file notifier wrote (the serve must run with notifications.driver file)."""
        path = self.state_dir / "notifications.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def cleanup(self) -> None:
        """Stop the service and remove what it left: only ITS guests (several test runs and
        benches may share this libvirtd), its host mounts, its state directory."""
        from attachfs.virt.libvirt import LibvirtDriver

        self.stop()
        driver = LibvirtDriver(owner=f"{socket.gethostname()}:{self.state_dir.resolve()}")
        try:
            for guest in driver.list_guests():
                driver.stop_guest(guest, 0)
        finally:
            driver.close()
        for point in self.host_mounts():
            mountinfo.unmount(point)
        # the share filesystems (loop-mounted images under shares/) go with the state
        for point in reversed(mountinfo.mount_points(self.state_dir.resolve())):
            mountinfo.run(["umount", "-l", str(point)])
        shutil.rmtree(self.state_dir, ignore_errors=True)

    # ---- what the host really has ---------------------------------------------------------
    @property
    def mount_root(self) -> Path:
        return self.state_dir / "mounts"

    def host_mounts(self) -> list[Path]:
        return mountinfo.mount_points(self.mount_root.resolve())

    def virtiofsd_pids(self) -> list[int]:
        """One per device: the sandboxed child virtiofsd forks is not counted separately."""
        out = []
        root = str(self.mount_root.resolve())
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if "virtiofsd" in cmd.split(" ")[0] and root in cmd:
                out.append(int(entry))
        return [pid for pid in out if _parent(pid) not in out]


@contextmanager
def serving(config: str = "", prefix: str = "") -> Iterator[Serve]:
    """A fresh `attachfs serve` with its own state directory, cleaned up afterwards."""
    s = Serve(TEST_STATE / f"{prefix}{uuid.uuid4().hex[:8]}", config)
    s.start()
    try:
        yield s
    finally:
        s.cleanup()


def _parent(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat.rsplit(")", 1)[1].split()[1])
