"""The real compute service beside attachfs, for `bench/nova.py` (make bench-nova).

`Stack` drives tools/compute_service (install.sh, stack.sh): Nova 34 with its fake virt driver,
Placement, Keystone, Glance and Manila (DummyDriver) on 127.0.0.1. `Cloud` prepares, through
their APIs as the stack's cloud admin, what both services are then measured with: a project and
a member user in that Keystone (one token for both services), attachfs's service user, NFS shares
in that Manila, and Nova's flavor and image. `rss_kib` and friends read resident memory from
/proc. Every external program is run with an argument list; everything listens on 127.0.0.1.
"""

from __future__ import annotations

import functools
import os
import secrets
import subprocess
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from harness.cloud import toml_of

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / "tools" / "compute_service"
REGION = "RegionOne"
NOVA_MV = "compute 2.97"
MANILA_MV = "2.82"
# The daemons stack.sh starts (one pid file each, every one the leader of its own session).
DAEMONS = ("keystone", "netstub", "placement", "glance", "manila-api", "manila-scheduler",
           "manila-share", "nova-api", "nova-conductor", "nova-scheduler", "nova-compute")
NOVA_DAEMONS = ("nova-api", "nova-conductor", "nova-scheduler", "nova-compute")
PROJECT, MEMBER = "bench-nova", "bench-nova-member"
ATTACHFS_USER = "attachfs"  # attachfs's service user in the stack's Keystone
FLAVOR, IMAGE = "bench-nova-512", "bench-nova-image"
SHARE_PREFIX = "bench-nova-"


def log(msg: str) -> None:
    print(f"[bench-nova {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Failed(RuntimeError):
    pass


def poll(what: str, fn: Callable[[], Any], timeout: float, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise Failed(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


# ---- memory, from /proc -----------------------------------------------------------------------
def _stat_fields(pid: int) -> list[str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()  # state, ppid, pgrp, session, ...


def _all_pids() -> list[int]:
    return [int(e) for e in os.listdir("/proc") if e.isdigit()]


def session_members(sid: int) -> list[int]:
    """Every live process of session `sid` (stack.sh starts each daemon with setsid)."""
    out = []
    for pid in _all_pids():
        f = _stat_fields(pid)
        if f is not None and f[0] not in ("Z", "X") and int(f[3]) == sid:
            out.append(pid)
    return out


def descendants(pid: int) -> list[int]:
    """`pid` and every live process below it."""
    parent = {}
    for p in _all_pids():
        f = _stat_fields(p)
        if f is not None and f[0] not in ("Z", "X"):
            parent[p] = int(f[1])
    found, frontier = [pid], [pid]
    while frontier:
        frontier = [p for p, pp in parent.items() if pp in frontier]
        found += frontier
    return [p for p in found if p in parent]


def _kib(path: str, key: str) -> int:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_kib(pids: Iterable[int]) -> int:
    """Sum of VmRSS (shared pages counted once per process, as `ps` does)."""
    return sum(_kib(f"/proc/{p}/status", "VmRSS") for p in pids)


def pss_kib(pids: Iterable[int]) -> int:
    """Sum of the proportional set sizes (shared pages split between their users)."""
    return sum(_kib(f"/proc/{p}/smaps_rollup", "Pss") for p in pids)


# ---- the stack ----------------------------------------------------------------------------------
@dataclass
class Stack:
    """tools/compute_service's stack in `state` (stack.sh's --state), from `venv`."""

    state: Path
    venv: Path
    base: int = int(os.environ.get("COMPUTE_SERVICE_PORT_BASE", "19000"))

    def _script(self, name: str, *args: str, log_file: Path | None = None) -> None:
        argv = ["bash", str(TOOLS / name), *args]
        if log_file is None:
            subprocess.run(argv, check=True)
            return
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(log_file, "ab") as out:
            r = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, check=False)
        if r.returncode != 0:
            tail = log_file.read_text(errors="replace")[-3000:]
            raise Failed(f"{name} {' '.join(args)} exited {r.returncode}:\n{tail}")

    def install(self, log_file: Path) -> None:
        self._script("install.sh", "--venv", str(self.venv), log_file=log_file)

    def start(self, log_file: Path) -> None:
        self._script("stack.sh", "start", "--state", str(self.state), "--venv", str(self.venv),
                     log_file=log_file)

    def stop(self, log_file: Path) -> None:
        self._script("stack.sh", "stop", "--state", str(self.state), log_file=log_file)

    def pid(self, daemon: str) -> int | None:
        """The daemon's pid (its session id) when it is running."""
        try:
            pid = int((self.state / "run" / f"{daemon}.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        f = _stat_fields(pid)
        return pid if f is not None and f[0] not in ("Z", "X") else None

    def running(self) -> list[str]:
        return [d for d in DAEMONS if self.pid(d) is not None]

    def secret(self, key: str) -> str:
        for line in (self.state / "secrets.env").read_text().splitlines():
            k, _, v = line.partition("=")
            if k == key:
                return v.strip()
        raise Failed(f"no {key} in {self.state / 'secrets.env'}")

    def url(self, offset: int) -> str:
        return f"http://127.0.0.1:{self.base + offset}"

    @property
    def keystone(self) -> str:
        return self.url(500) + "/v3"

    @property
    def nova(self) -> str:
        return self.url(774)

    @property
    def manila(self) -> str:
        return self.url(786) + "/v2"

    @property
    def glance(self) -> str:
        return self.url(292)

    def memory(self, daemons: Iterable[str]) -> dict[str, tuple[int, int, int]]:
        """daemon -> (RSS KiB, PSS KiB, processes) of its session."""
        out = {}
        for d in daemons:
            pid = self.pid(d)
            pids = session_members(pid) if pid is not None else []
            out[d] = (rss_kib(pids), pss_kib(pids), len(pids))
        return out


# ---- the cloud: Keystone, Manila, Nova as the stack's admin ---------------------------------------
def issue_token(http: httpx.Client, auth_url: str, user: str, project: str, password: str) -> str:
    r = http.post(f"{auth_url}/auth/tokens", json={"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "name": user, "domain": {"id": "default"}, "password": password}}},
        "scope": {"project": {"name": project, "domain": {"id": "default"}}}}})
    if r.status_code != 201:
        raise Failed(f"token for {user}@{project}: HTTP {r.status_code} {r.text[:300]}")
    return r.headers["X-Subject-Token"]


@dataclass
class Cloud:
    stack: Stack
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=120))
    admin: str = ""
    member_password: str = field(default_factory=lambda: secrets.token_hex(12))
    project_id: str = ""
    image_id: str = ""

    def __post_init__(self) -> None:
        self.admin = issue_token(self.http, self.stack.keystone, "admin", "admin",
                                 self.stack.secret("ADMIN_PASSWORD"))

    def close(self) -> None:
        self.http.close()

    def call(self, method: str, url: str, *, token: str | None = None,
             ok: tuple[int, ...] = (200, 201, 202, 204), headers: dict[str, str] | None = None,
             **kw: Any) -> httpx.Response:
        hd = {"X-Auth-Token": token or self.admin, "Accept": "application/json", **(headers or {})}
        r = self.http.request(method, url, headers=hd, **kw)
        if r.status_code not in ok:
            raise Failed(f"{method} {url}: HTTP {r.status_code} {r.text[:400]}")
        return r

    def manila(self, method: str, path: str, **kw: Any) -> httpx.Response:
        kw["headers"] = {"X-OpenStack-Manila-API-Version": MANILA_MV, **kw.get("headers", {})}
        return self.call(method, self.stack.manila + path, **kw)

    def nova(self, method: str, path: str, **kw: Any) -> httpx.Response:
        kw["headers"] = {"OpenStack-API-Version": NOVA_MV, **kw.get("headers", {})}
        return self.call(method, self.stack.nova + "/v2.1" + path, **kw)

    # ---- Keystone ---------------------------------------------------------------------------
    def _ensure(self, path: str, key: str, name: str, body: dict[str, Any]) -> str:
        ks = self.stack.keystone
        found = self.call("GET", f"{ks}{path}", params={"name": name}).json()[key + "s"]
        if found:
            return str(found[0]["id"])
        return str(self.call("POST", f"{ks}{path}", json={key: body}).json()[key]["id"])

    def _user(self, name: str, password: str, project_id: str, roles: Iterable[str]) -> None:
        ks = self.stack.keystone
        uid = self._ensure("/users", "user", name, {"name": name, "domain_id": "default",
                                                     "password": password})
        self.call("PATCH", f"{ks}/users/{uid}", json={"user": {"password": password}})
        for role in roles:
            rid = self._ensure("/roles", "role", role, {"name": role})
            self.call("PUT", f"{ks}/projects/{project_id}/users/{uid}/roles/{rid}")

    def prepare_identity(self) -> None:
        """Project `bench-nova` with member `bench-nova-member` (a fresh password each run), and
        attachfs's service user with the roles the stack gives Nova's (service and admin in
        project `service`), so neither service is allowed more than the other."""
        self.project_id = self._ensure("/projects", "project", PROJECT,
                                       {"name": PROJECT, "domain_id": "default"})
        self._user(MEMBER, self.member_password, self.project_id, ("member", "reader"))
        service = self._ensure("/projects", "project", "service",
                               {"name": "service", "domain_id": "default"})
        self._user(ATTACHFS_USER, self.stack.secret("SERVICE_PASSWORD"), service,
                   ("service", "admin"))

    def member_token(self) -> str:
        return issue_token(self.http, self.stack.keystone, MEMBER, PROJECT, self.member_password)

    def attachfs_config(self, agent_host: str) -> str:
        """attachfs.toml: Keystone auth against the stack's Keystone, shares from the stack's
        Manila through its catalog (sharev2 in RegionOne), both as attachfs's service user."""
        ks, password = self.stack.keystone, self.stack.secret("SERVICE_PASSWORD")
        creds = {"auth_url": ks, "auth_type": "password", "username": ATTACHFS_USER,
                 "password": password, "project_name": "service"}
        settings: dict[str, object] = {
            "api.auth_strategy": "keystone",
            "keystone_authtoken.www_authenticate_uri": ks,
            **{f"keystone_authtoken.{k}": v for k, v in creds.items()},
            "keystone_authtoken.region_name": REGION,
            "keystone_authtoken.service_token_roles": ["service"],
            "keystone_authtoken.service_token_roles_required": True,
            "storage.provider": "manila",
            **{f"manila.{k}": v for k, v in creds.items()},
            "manila.region_name": REGION,
            "manila.host_address": "127.0.0.1",
            "agent.host": agent_host,
            # The bench's guest is stopped before anything is measured and needs no clean
            # shutdown: destroy it at once instead of waiting 10 s for an ACPI power-off that a
            # TCG guest still booting ignores.
            "agent.stop_timeout": 0.0,
        }
        return toml_of(settings)

    # ---- Nova: flavor, image, quota, leftovers ------------------------------------------------
    def prepare_nova(self) -> None:
        r = self.nova("GET", f"/flavors/{FLAVOR}", ok=(200, 404))
        if r.status_code == 404:  # disk 1: Nova refuses image-backed servers on disk 0
            self.nova("POST", "/flavors", json={"flavor": {
                "name": FLAVOR, "id": FLAVOR, "ram": 512, "vcpus": 1, "disk": 1}})
        img = self.stack.glance
        found = [i for i in self.call("GET", f"{img}/v2/images", params={"name": IMAGE})
                 .json()["images"] if i["status"] == "active"]
        if found:
            self.image_id = str(found[0]["id"])
            return
        r = self.call("POST", f"{img}/v2/images", json={
            "name": IMAGE, "disk_format": "raw", "container_format": "bare",
            "visibility": "public"})
        self.image_id = str(r.json()["id"])
        self.call("PUT", f"{img}/v2/images/{self.image_id}/file", content=b"\0" * 1024,
                  headers={"Content-Type": "application/octet-stream"})

    def nova_leftovers(self) -> list[str]:
        """Servers of the bench's project (a run that was killed left them)."""
        r = self.nova("GET", "/servers", params={"all_tenants": "1", "project_id": self.project_id})
        return [str(s["id"]) for s in r.json()["servers"]]

    def delete_nova_server(self, sid: str, wait: bool = True) -> None:
        r = self.nova("DELETE", f"/servers/{sid}", ok=(204, 404, 409))
        if r.status_code == 409:  # mid-task: reset, then delete
            self.nova("POST", f"/servers/{sid}/action", ok=(202, 404),
                      json={"os-resetState": {"state": "error"}})
            self.nova("DELETE", f"/servers/{sid}", ok=(204, 404))
        if wait:
            poll(f"Nova server {sid} deleted", lambda: self.nova(
                "GET", f"/servers/{sid}", ok=(200, 404)).status_code == 404, 120, 0.3)

    # ---- Manila: share type, quota, shares ----------------------------------------------------
    def prepare_manila(self) -> None:
        types = self.manila("GET", "/types").json()["share_types"]
        if not any(t["name"] == "default" for t in types):
            self.manila("POST", "/types", json={"share_type": {
                "name": "default", "share_type_access:is_public": True,
                "extra_specs": {"driver_handles_share_servers": False}}})
        self.manila("PUT", f"/quota-sets/{self.project_id}",
                    json={"quota_set": {"shares": 500, "gigabytes": 5000}})

    def share_status(self, sid: str) -> str:
        r = self.manila("GET", f"/shares/{sid}", ok=(200, 404))
        return "deleted" if r.status_code == 404 else str(r.json()["share"]["status"])

    def rules(self, sid: str) -> list[dict[str, Any]]:
        r = self.manila("GET", "/share-access-rules", params={"share_id": sid}, ok=(200, 404))
        return list(r.json().get("access_list", [])) if r.status_code == 200 else []

    def shares(self, names: list[str], token: str) -> dict[str, str]:
        """name -> id of an available NFS share of the bench's project with no access rule:
        kept from an earlier run when it is clean, else (re)made with the member's token.
        A share that is not clean (a run was killed while it was attached, or it went to
        error) is deleted. After a restart manila-share first "ensures" every share (status
        `ensuring`, 0.4 to 1.3 s per share with the DummyDriver's delay): that is waited for."""
        def listed() -> list[dict[str, Any]]:
            return [s for s in self.manila("GET", "/shares/detail", token=token).json()["shares"]
                    if str(s.get("name") or "").startswith(SHARE_PREFIX)]

        poll("manila-share to ensure the bench's shares",
             lambda: not any(s["status"] == "ensuring" for s in listed()), 600, 1.0)
        have: dict[str, str] = {}
        for s in listed():
            name, sid = str(s["name"]), str(s["id"])
            if name in names and name not in have and s["status"] == "available" and \
                    not self.rules(sid):
                have[name] = sid
            elif s["status"] not in ("deleting", "deleted"):
                self.discard_share(sid)
        return {**have, **self._new_shares([n for n in names if n not in have], token)}

    def _new_shares(self, names: list[str], token: str, attempts: int = 4) -> dict[str, str]:
        """New available shares, asked for all at once. One that goes to error (the scheduler
        knows no pool yet: manila-share reports it only once its driver has started) is deleted
        and asked for again."""
        made: dict[str, str] = {}
        for attempt in range(1, attempts + 1):
            asked = {name: str(self.manila("POST", "/shares", token=token, json={"share": {
                "share_proto": "NFS", "size": 1, "name": name,
                "share_type": "default"}}).json()["share"]["id"]) for name in names}
            failed = []
            for name, sid in asked.items():
                status = str(poll(f"Manila share {name} created", functools.partial(
                    self._settled, sid), 300, 0.3))
                if status == "available":
                    made[name] = sid
                else:
                    failed.append(name)
                    self.discard_share(sid)
            if not failed:
                return made
            if attempt < attempts:
                log(f"{len(failed)} Manila share(s) went to error; asking again in 20 s")
                time.sleep(20)
            names = failed
        raise Failed(f"Manila shares {names} went to error {attempts} times")

    def _settled(self, sid: str) -> str | None:
        status = self.share_status(sid)
        return None if status == "creating" else status

    def discard_share(self, sid: str) -> None:
        """Remove a share of an earlier run with whatever locks and rules it still has."""
        for rule in self.rules(sid):
            self._unlock(str(rule["id"]))
            self.manila("POST", f"/shares/{sid}/action", ok=(202, 400, 404),
                        json={"deny_access": {"access_id": rule["id"], "unrestrict": True}})
        if self.rules(sid):
            poll(f"share {sid} rules gone", lambda: not self.rules(sid), 60, 0.5)
        self._unlock(sid)
        if self.share_status(sid) not in ("available", "deleted"):
            self.manila("POST", f"/shares/{sid}/action", ok=(202, 404),
                        json={"reset_status": {"status": "available"}})
        self.manila("DELETE", f"/shares/{sid}", ok=(202, 404))

    def _unlock(self, resource_id: str) -> None:
        r = self.manila("GET", "/resource-locks", params={"resource_id": resource_id},
                        ok=(200, 404))
        if r.status_code == 200:
            for lock in r.json().get("resource_locks", []):
                self.manila("DELETE", f"/resource-locks/{lock['id']}", ok=(204, 404))


def in_parallel(jobs: dict[str, Callable[[], Any]]) -> dict[str, Any]:
    """Run the jobs on threads; their results by name (the first error is raised)."""
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        futures = {name: pool.submit(job) for name, job in jobs.items()}
        return {name: f.result() for name, f in futures.items()}
