"""Several API processes behind one port on PostgreSQL (issue 12, item 4): `attachfs api
--workers 4`; 20 duplicate attaches at once, spread over the workers, give exactly one 201."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from attachfs.config import load_config
from attachfs.service import open_parts
from harness.process import children
from tests.conftest import make_image_dir, settle_server
from tests.vm.harness import free_port, wait_for

pytestmark = [pytest.mark.postgres,
              pytest.mark.skipif(os.geteuid() != 0, reason="built-in shares mount images")]
WORKERS = 4




def test_duplicate_attaches_over_four_workers_one_winner(pg_url: str, tmp_path: Path) -> None:
    state, images = tmp_path / "state", make_image_dir(tmp_path)
    port = free_port()
    exe = Path(sys.executable).with_name("attachfs")
    proc = subprocess.Popen([str(exe), "api", "--state-dir", str(state), "--listen",
                             f"127.0.0.1:{port}", "--database-url", pg_url, "--images-dir",
                             str(images), "--workers", str(WORKERS)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = open_parts(load_config(None, {"state_dir": str(state), "database_url": pg_url,
                                          "images.dir": str(images)}), prepare=False)
    headers = {"X-Auth-Token": "alice:p1", "OpenStack-API-Version": "compute 2.97"}
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers,
                          timeout=30) as http:
            def answers() -> bool:
                try:
                    return http.get("/v2.1/").status_code == 200
                except httpx.TransportError:
                    return False
            wait_for("the API workers", answers, 60)
            wait_for(f"{WORKERS} workers", lambda: len(children(proc.pid)) >= WORKERS, 30)
            r = http.post("/v2.1/servers", json={"server": {
                "name": "w", "flavorRef": "1", "imageRef": "debian-busybox"}})
            assert r.status_code == 202, r.text
            sid = r.json()["server"]["id"]
            settle_server(parts, sid)
            r = http.put("/v2.1/os-filesystem/workers", json={"fs_entry": {"size": 1}})
            assert r.status_code == 201, r.text
            share = r.json()["fs_entry"]["id"]

        def attach(i: int) -> int:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers,
                              timeout=30) as c:  # a connection each: spread over workers
                return c.post(f"/v2.1/servers/{sid}/shares",
                              json={"share": {"share_id": share, "tag": f"t{i}"}}).status_code

        t0 = time.monotonic()
        with ThreadPoolExecutor(20) as pool:
            codes = sorted(pool.map(attach, range(20)))
        print(f"\n20 duplicate attaches over {WORKERS} workers: {codes.count(201)} x 201, "
              f"{codes.count(409)} x 409 in {time.monotonic() - t0:.2f} s")
        assert codes == [201] + [409] * 19, codes
    finally:
        proc.terminate()
        proc.wait(30)
        parts.db.dispose()
