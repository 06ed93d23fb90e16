"""Issue 7 findings 4 and 5: share names are per namespace (another project's names are never
revealed), and the server list's `name` regular expression cannot stall the process."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

from attachfs.core.validation import NAME_FILTER_MAX
from attachfs.db.tables import Server
from attachfs.service import Parts, build_api
from tests.conftest import create_server, create_share
from tests.vm.harness import free_port, wait_for

FS = "/v2.1/os-filesystem"
SHARES = "/share/v2/shares"
MANILA = {"X-OpenStack-Manila-API-Version": "2.98"}
BOB = {"X-Auth-Token": "bob:p2"}
CAROL = {"X-Auth-Token": "carol:p3"}
ADMIN = {"X-Auth-Token": "admin:admin"}


# ---- names: one namespace per project, one for the global shares ----------------------------
def test_a_name_another_project_uses_is_simply_created(client: TestClient) -> None:
    mine = create_share(client, "data")
    r = client.put(f"{FS}/data", json={"fs_entry": {"size": 1}}, headers=BOB)
    assert r.status_code == 201, r.text  # not a 409 that would reveal p1's name
    theirs = r.json()["fs_entry"]
    assert theirs["id"] != mine["id"] and theirs["project"] == "p2"
    r = client.post(SHARES, json={"share": {"share_proto": "LOCAL", "size": 1, "name": "data"}},
                    headers={**MANILA, **CAROL})
    assert r.status_code == 200, r.text
    # each project resolves the name to its own share
    assert client.get(f"{FS}/data").json()["fs_entry"]["id"] == mine["id"]
    assert client.get(f"{FS}/data", headers=BOB).json()["fs_entry"]["id"] == theirs["id"]
    # a conflict is only ever inside the caller's own namespace, and says so
    r = client.put(f"{FS}/data", json={"fs_entry": {"size": 1}}, headers=BOB)
    assert r.status_code == 409
    assert r.json()["conflictingRequest"]["message"] == "Filesystem data already exists"
    r = client.post(SHARES, json={"share": {"share_proto": "LOCAL", "size": 1, "name": "data"}},
                    headers=MANILA)
    assert r.status_code == 409 and "in this project" in r.json()["conflictingRequest"]["message"]
    # deleting one project's share leaves the other's
    assert client.delete(f"{FS}/data", headers=BOB).status_code == 202
    assert client.get(f"{FS}/data").json()["fs_entry"]["id"] == mine["id"]
    assert client.get(f"{FS}/data", headers=BOB).status_code == 404


def test_global_namespace(client: TestClient) -> None:
    mine = create_share(client, "common")
    glob = create_share(client, "common", scope="global", token="admin:admin")
    r = client.put(f"{FS}/common", json={"fs_entry": {"size": 1, "scope": "global"}},
                   headers=ADMIN)
    assert r.status_code == 409 and "global" in r.json()["conflictingRequest"]["message"]
    r = client.post(SHARES, json={"share": {"share_proto": "LOCAL", "size": 1, "name": "common",
                                            "is_public": True}}, headers={**MANILA, **ADMIN})
    assert r.status_code == 409 and "public" in r.json()["conflictingRequest"]["message"]
    # the caller's own project first, then the global namespace
    assert client.get(f"{FS}/common").json()["fs_entry"]["id"] == mine["id"]
    assert client.get(f"{FS}/common", headers=BOB).json()["fs_entry"]["id"] == glob["id"]
    # admins name another project's share explicitly; others cannot
    assert client.get(f"{FS}/common?project=p1", headers=ADMIN).json()["fs_entry"]["id"] \
        == mine["id"]
    assert client.get(f"{FS}/common?project=p1", headers=BOB).json()["fs_entry"]["id"] \
        == glob["id"]
    # a project name under a global one stays the project's
    r = client.put(f"{FS}/common", json={"fs_entry": {"size": 1}}, headers=BOB)
    assert r.status_code == 201
    assert client.get(f"{FS}/common", headers=BOB).json()["fs_entry"]["project"] == "p2"


def test_errors_never_name_another_projects_share(client: TestClient, parts: Parts) -> None:
    """Another project's share answers exactly as one that never existed (what the caller
    typed is echoed, nothing more)."""
    secret = create_share(client, "secret-name")
    never = "00000000-0000-4000-8000-000000000000"
    for method, path in (("GET", f"{FS}/secret-name"), ("DELETE", f"{FS}/secret-name"),
                         ("GET", f"{FS}/secret-name/instances"),
                         ("GET", f"{SHARES}/{secret['id']}"),
                         ("DELETE", f"{SHARES}/{secret['id']}")):
        r = client.request(method, path, headers={**BOB, **MANILA})
        missing = client.request(method, path.replace("secret-name", "never-was")
                                 .replace(str(secret["id"]), never), headers={**BOB, **MANILA})
        assert (r.status_code, missing.status_code) == (404, 404), (method, path, r.text)
        assert r.text.replace("secret-name", "X").replace(str(secret["id"]), "X") == \
            missing.text.replace("never-was", "X").replace(never, "X")


def _parallel(fn: Any, n: int = 20) -> list[int]:
    with ThreadPoolExecutor(n) as pool:
        return sorted(pool.map(fn, range(n)))


def test_parallel_creates_of_one_name_have_exactly_one_winner(client: TestClient) -> None:
    codes = _parallel(lambda _: client.put(f"{FS}/race", json={"fs_entry": {"size": 1}})
                      .status_code)
    assert codes == [201] + [409] * 19, codes
    # across projects, every namespace has its own single winner
    tokens = ["alice:p1", "bob:p2", "carol:p3", "dave:p4"]
    codes = _parallel(lambda i: client.put(f"{FS}/race2", json={"fs_entry": {"size": 1}},
                                           headers={"X-Auth-Token": tokens[i % 4]})
                      .status_code)
    assert codes == [201] * 4 + [409] * 16, codes
    body = {"share": {"share_proto": "LOCAL", "size": 1, "name": "race3", "is_public": True}}
    codes = _parallel(lambda _: client.post(SHARES, json=body, headers={**MANILA, **ADMIN})
                      .status_code)
    assert codes == [200] + [409] * 19, codes


def test_failed_create_leaves_no_directory(client: TestClient, parts: Parts) -> None:
    create_share(client, "once")
    before = sorted(p.name for p in parts.config.storage_root.iterdir())
    assert client.put(f"{FS}/once", json={"fs_entry": {"size": 1}}).status_code == 409
    r = client.put(f"{FS}/twice", json={"fs_entry": {"size": 1, "mount_point": "/proc/x"}})
    assert r.status_code == 400
    assert sorted(p.name for p in parts.config.storage_root.iterdir()) == before


# ---- the name filter -------------------------------------------------------------------------
def _names(client: TestClient, query: str, path: str = "/v2.1/servers") -> list[str]:
    r = client.get(path, params={"name": query})
    assert r.status_code == 200, r.text
    return sorted(s["name"] for s in r.json()["servers"])


def test_name_filter_does_what_clients_use_it_for(client: TestClient) -> None:
    for name in ("web-1", "web-2", "db-1", "myweb"):
        create_server(client, name)
    assert _names(client, "^web") == ["web-1", "web-2"]
    assert _names(client, "web-1$") == ["web-1"]
    assert _names(client, "web") == ["myweb", "web-1", "web-2"]
    assert _names(client, ".*") == ["db-1", "myweb", "web-1", "web-2"]
    assert _names(client, "-[12]$", "/v2.1/servers/detail") == ["db-1", "web-1", "web-2"]
    assert _names(client, "(?i)^WEB") == ["web-1", "web-2"]
    assert _names(client, "nothing") == []


@pytest.mark.parametrize("pattern, words", [
    (r"(a)\1", "backreferences"), ("(?=a)", "lookaround"), ("[", "missing ]"),
    ("a{1000}{1000}", "repetition"), ("x" * (NAME_FILTER_MAX + 1), f"at most {NAME_FILTER_MAX}"),
])
def test_patterns_re2_cannot_run_are_400(client: TestClient, pattern: str, words: str) -> None:
    for path in ("/v2.1/servers", "/v2.1/servers/detail"):
        r = client.get(path, params={"name": pattern})
        assert r.status_code == 400, r.text
        fault = r.json()["badRequest"]
        assert fault["code"] == 400 and words in fault["message"], fault


CATASTROPHIC = ["(a+)+$", "(a|a)+$", "(a|aa)+$", "(.*a){12}$", "^(a+)+b", "(x+x+)+y"]


@pytest.fixture
def live_api(parts: Parts) -> Iterator[str]:
    """The real app behind a real HTTP server in this process (as `attachfs serve` runs it:
    one event loop, a thread pool for the handlers)."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(build_api(parts, lambda: None), host="127.0.0.1",
                                           port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for("the API to listen", lambda: server.started, timeout=20, interval=0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _timed(http: httpx.Client, path: str, params: dict[str, str]) -> tuple[int, float]:
    t0 = time.perf_counter()
    r = http.get(path, params=params)
    return r.status_code, time.perf_counter() - t0


def test_catastrophic_filters_answer_fast_and_delay_nobody(live_api: str, parts: Parts) -> None:
    headers = {"X-Auth-Token": "alice:p1", "OpenStack-API-Version": "compute 2.97"}
    with parts.db.session() as s:  # names that make a backtracking engine explode
        for i in range(40):
            s.add(Server(uuid=f"00000000-0000-4000-8000-{i:012d}", name="a" * 200 + "!",
                         project_id="p1", user_id="alice", host="test-host", flavor_id="1",
                         image_id="x", vcpus=1, memory_mib=256, vm_state="stopped",
                         power_intent="off", meta={}))
    with httpx.Client(base_url=live_api, headers=headers, timeout=30) as http:
        baseline = [_timed(http, "/v2.1/servers", {"name": "^zzz"})[1] for _ in range(10)]
        bad: list[float] = []
        normal: list[float] = []
        done = threading.Event()

        def normal_traffic() -> None:
            while not done.is_set():
                code, took = _timed(http, "/v2.1/servers", {"limit": "5"})
                assert code == 200
                normal.append(took)

        with ThreadPoolExecutor(4) as pool:
            background = [pool.submit(normal_traffic) for _ in range(2)]
            for _ in range(5):
                for pattern in CATASTROPHIC:
                    for path in ("/v2.1/servers", "/v2.1/servers/detail"):
                        code, took = _timed(http, path, {"name": pattern})
                        assert code == 200
                        bad.append(took)
            done.set()
            for f in background:
                f.result()
    figures = {"baseline median": statistics.median(baseline),
               "catastrophic median": statistics.median(bad), "catastrophic max": max(bad),
               "concurrent normal median": statistics.median(normal),
               "concurrent normal max": max(normal)}
    print("name filter latency (ms):", {k: round(v * 1000, 1) for k, v in figures.items()},
          f"({len(bad)} catastrophic, {len(normal)} normal requests)")
    # A backtracking engine needs 2**200 steps here; RE2 needs microseconds per name. The
    # bounds are generous for a loaded 2-core machine, the figures above are what it took.
    assert figures["catastrophic median"] < 0.1, figures
    assert figures["catastrophic max"] < 1.0, figures
    assert figures["concurrent normal max"] < 1.0, figures
