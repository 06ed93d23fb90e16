"""A real `attachfs serve` (API + agent + metadata) in its own process, with the API calls the
vm tests and the benchmark make, and its cleanup."""

from __future__ import annotations

import json
import os
import sys
import tomllib
from pathlib import Path
from typing import Any

import httpx

from attachfs.storage import mountinfo
from harness import host
from harness.process import Proc, free_port, wait_for

IMAGES_DIR = Path(os.environ.get("ATTACHFS_IMAGES", "/var/lib/attachfs/images"))


class Serve(Proc):
    """`attachfs serve --state-dir STATE` on a free port; `http` is a keep-alive client that
    sends `token` (noauth user:project) at compute 2.97. `config`: TOML text for settings that
    have no flag."""

    def __init__(self, state_dir: Path, config: str = "", *, token: str = "alice:p1",
                 images_dir: Path = IMAGES_DIR, http_timeout: float = 30) -> None:
        port = free_port()
        exe = Path(sys.executable).with_name("attachfs")
        super().__init__([str(exe), "serve", "--state-dir", str(state_dir),
                          "--listen", f"127.0.0.1:{port}", "--images-dir", str(images_dir)],
                         state_dir / "serve.log", port)
        self.state_dir = state_dir
        self.config = config
        self.http = httpx.Client(base_url=self.url, timeout=http_timeout, headers={
            "X-Auth-Token": token, "OpenStack-API-Version": "compute 2.97"})

    def start(self, probe: str = "/v2.1/", timeout: float = 60) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if self.config:
            (self.state_dir / "attachfs.toml").write_text(self.config)
            if "--config" not in self.argv:  # started again (after kill9 or stop)
                self.argv += ["--config", str(self.state_dir / "attachfs.toml")]
        super().start(probe, timeout)

    @property
    def owner(self) -> str:
        """The owner tag of its guests: [agent] host (default this host's name) and state dir."""
        agent_host = tomllib.loads(self.config).get("agent", {}).get("host")
        return f"{agent_host}:{self.state_dir.resolve()}" if agent_host else host.owner_of(
            self.state_dir)

    def cleanup(self) -> None:
        """Stop the service and remove what it left: only ITS guests (several test runs and
        benches may share this libvirtd), its host mounts, its state directory."""
        self.stop()
        host.destroy_guests(self.owner)
        host.remove_state(self.state_dir)

    # ---- API helpers ---------------------------------------------------------------------
    def new_share(self, name: str) -> tuple[str, Path]:
        """A built-in share: its id and its directory on the host."""
        r = self.http.put(f"/v2.1/os-filesystem/{name}", json={"fs_entry": {"size": 1}})
        assert r.status_code == 201, r.text
        share_id = str(r.json()["fs_entry"]["id"])
        return share_id, self.state_dir / "shares" / share_id

    def server(self, sid: str) -> dict[str, Any] | None:
        """The server body with attachfs's extension (its attachments and their faults)."""
        r = self.http.get(f"/v2.1/servers/{sid}",
                          headers={"OpenStack-API-Version": "compute 2.97, attachfs 1.0"})
        if r.status_code == 404:
            return None
        r.raise_for_status()
        server: dict[str, Any] = r.json()["server"]
        return server

    def reached(self, sid: str, status: str) -> dict[str, Any] | None:
        """The server when it shows `status` with no task in flight; an error when it is in
        ERROR or gone."""
        s = self.server(sid)
        if s is None:
            raise RuntimeError(f"server {sid} vanished")
        if s["status"] == "ERROR":
            raise RuntimeError(f"server {sid} went to ERROR: {s.get('fault')}")
        return s if s["status"] == status and s["OS-EXT-STS:task_state"] is None else None

    def wait_status(self, sid: str, status: str, timeout: float = 180,
                    interval: float = 0.3) -> dict[str, Any]:
        return wait_for(f"server {sid} {status}", lambda: self.reached(sid, status), timeout,
                        interval)

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
        def shows() -> str | None:
            out = self.console(sid)
            return out if text in out else None
        return wait_for(f"console line {text!r}", shows, timeout)

    def notifications(self) -> list[dict[str, Any]]:
        """What the file notifier wrote (the serve must run with notifications.driver file)."""
        path = self.state_dir / "notifications.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    # ---- what the host really has ---------------------------------------------------------
    @property
    def mount_root(self) -> Path:
        return self.state_dir / "mounts"

    def host_mounts(self) -> list[Path]:
        return mountinfo.mount_points(self.mount_root.resolve())

    def virtiofsd_pids(self) -> list[int]:
        """One per device: the sandboxed child virtiofsd forks is not counted separately."""
        return host.virtiofsd_pids(self.mount_root)
