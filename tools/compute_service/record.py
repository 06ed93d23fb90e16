"""Record a real compute service's answers to tests/conformance/cases.py.

    .venv/bin/python tools/compute_service/record.py --bootstrap \
        --auth-url http://127.0.0.1:19500/v3 --compute-url http://127.0.0.1:19774/v2.1 \
        --share-url http://127.0.0.1:19786/v2 --image-url http://127.0.0.1:19292 \
        --admin-password "$COMPUTE_SERVICE_ADMIN_PASSWORD" \
        --out tests/conformance/recorded/nova-34.json

(`tools/compute_service/stack.sh env` prints those URLs and the password.)

--bootstrap creates, through Keystone's v3 API as the cloud admin (`admin` in project `admin`),
projects conf-A and conf-B and users conf-member (member of A), conf-reader (reader of A),
conf-other (member of B), conf-admin (admin of A), all with --password. Without it they must
exist. Then, once: flavor `conf-512` (512 MB), a 1 KiB raw image `conf-image`, unlimited quotas for
A and B, the Manila share type `default`, a pool of shares per kind (nfs, cifs, error = NFS reset
to error by the admin, cephfs = see --manila-db), and one stopped server of project B
({other_server}). Per case: fresh servers, `attached` shares, states; then its steps in order.
Everything created is deleted at the end (servers per case, shares and the B server last).

Each step's answer: status, content_type, version_header (OpenStack-API-Version) and body (JSON,
else text, else null) with real ids put back as placeholders and never-matching values as "{any}".
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime as dt
import importlib.util
import json
import re
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
NOVA_MV = "2.97"
MANILA_MV = "2.82"
ANY = "{any}"
# Keys whose values can never match between two services (ids minted per run, hosts, times).
ANY_KEYS = {"export_location", "uuid", "request_id", "image_id", "host", "hostId", "created",
            "updated", "created_at", "updated_at", "OS-EXT-SRV-ATTR:host",
            "OS-EXT-SRV-ATTR:hypervisor_hostname"}
REQ_ID = re.compile(r"req-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def load_cases(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location("conformance_cases", path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["conformance_cases"] = mod
    spec.loader.exec_module(mod)
    return mod


class Failed(Exception):
    pass


@dataclass
class Cloud:
    args: argparse.Namespace
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=120))
    tokens: dict[str, str] = field(default_factory=dict)
    project_ids: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    # --- identity -------------------------------------------------------------------------
    def issue(self, user: str, project: str, password: str) -> str:
        body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
            "name": user, "domain": {"id": "default"}, "password": password}}},
            "scope": {"project": {"name": project, "domain": {"id": "default"}}}}}
        r = self.http.post(f"{self.args.auth_url}/auth/tokens", json=body)
        if r.status_code != 201:
            raise Failed(f"token for {user}@{project}: {r.status_code} {r.text}")
        return r.headers["X-Subject-Token"]

    USERS = {"member": ("conf-member", "conf-A"), "reader": ("conf-reader", "conf-A"),
             "other": ("conf-other", "conf-B"), "admin": ("conf-admin", "conf-A")}

    def token(self, who: str) -> str:
        with self.lock:
            if who not in self.tokens:
                if who == "cloud-admin":
                    self.tokens[who] = self.issue("admin", "admin", self.args.admin_password)
                else:
                    user, project = self.USERS[who]
                    self.tokens[who] = self.issue(user, project, self.args.password)
            return self.tokens[who]

    def bootstrap(self) -> None:
        h = {"X-Auth-Token": self.token("cloud-admin")}
        ks = self.args.auth_url

        def ensure(path: str, key: str, name: str, body: dict[str, Any]) -> str:
            r = self.http.get(f"{ks}{path}", params={"name": name}, headers=h)
            r.raise_for_status()
            found = r.json()[key + "s"]
            if found:
                return str(found[0]["id"])
            r = self.http.post(f"{ks}{path}", json={key: body}, headers=h)
            if r.status_code >= 300:
                raise Failed(f"create {key} {name}: {r.status_code} {r.text}")
            return str(r.json()[key]["id"])

        projects = {p: ensure("/projects", "project", p, {"name": p, "domain_id": "default"})
                    for p in ("conf-A", "conf-B")}
        roles = {r: ensure("/roles", "role", r, {"name": r}) for r in ("admin", "member", "reader")}
        grants = {"conf-member": ("conf-A", "member"), "conf-reader": ("conf-A", "reader"),
                  "conf-other": ("conf-B", "member"), "conf-admin": ("conf-A", "admin")}
        for user, (project, role) in grants.items():
            uid = ensure("/users", "user", user, {"name": user, "domain_id": "default",
                                                  "password": self.args.password})
            # keep the password in step with --password on a re-run
            self.http.patch(f"{ks}/users/{uid}", headers=h,
                            json={"user": {"password": self.args.password}}).raise_for_status()
            self.http.put(f"{ks}/projects/{projects[project]}/users/{uid}/roles/{roles[role]}",
                          headers=h).raise_for_status()

    # --- plain calls ----------------------------------------------------------------------
    def call(self, who: str, method: str, url: str, *, ok: tuple[int, ...] = (200, 201, 202, 204),
             headers: dict[str, str] | None = None, **kw: Any) -> httpx.Response:
        hd = {"X-Auth-Token": self.token(who), "Accept": "application/json"}
        hd.update(headers or {})
        r = self.http.request(method, url, headers=hd, **kw)
        if r.status_code not in ok:
            raise Failed(f"{method} {url} as {who}: {r.status_code} {r.text[:500]}")
        return r

    def nova(self, who: str, method: str, path: str, **kw: Any) -> httpx.Response:
        hd = {"OpenStack-API-Version": f"compute {NOVA_MV}"}
        return self.call(who, method, f"{self.args.compute_url}{path}", headers=hd, **kw)

    def manila(self, who: str, method: str, path: str, **kw: Any) -> httpx.Response:
        hd = {"X-OpenStack-Manila-API-Version": MANILA_MV}
        return self.call(who, method, f"{self.args.share_url}{path}", headers=hd, **kw)


def poll(what: str, fn: Any, timeout: float, interval: float = 0.3) -> Any:
    t0 = time.monotonic()
    while True:
        v = fn()
        if v:
            return v
        if time.monotonic() - t0 > timeout:
            raise Failed(f"timeout: {what}")
        time.sleep(interval)


class Recorder:
    def __init__(self, cloud: Cloud, cases_mod: Any) -> None:
        self.cloud = cloud
        self.cases_mod = cases_mod
        self.image_id = ""
        self.share_pool: dict[str, list[str]] = {}
        self.other_server = ""
        self.created_servers: set[str] = set()
        self.created_images: set[str] = set()

    # --- fixtures ---------------------------------------------------------------------------
    def once(self, cases: list[Any]) -> None:
        cl = self.cloud
        for project in ("conf-A", "conf-B"):
            pid = self.project_id(project)
            cl.nova("admin", "PUT", f"/os-quota-sets/{pid}", json={"quota_set": {
                "instances": -1, "cores": -1, "ram": -1}})
        r = cl.nova("admin", "GET", "/flavors/conf-512", ok=(200, 404))
        if r.status_code == 200 and r.json()["flavor"]["disk"] != 1:
            cl.nova("admin", "DELETE", "/flavors/conf-512")
        if r.status_code == 404 or r.json()["flavor"]["disk"] != 1:
            # disk 1: Nova refuses image-backed servers on a zero-disk flavor to non-admins
            cl.nova("admin", "POST", "/flavors", json={"flavor": {
                "name": "conf-512", "id": "conf-512", "ram": 512, "vcpus": 1, "disk": 1}})
        r = cl.nova("admin", "GET", "/flavors/conf-1024", ok=(200, 404))
        if r.status_code == 404:  # the target of the resize case
            cl.nova("admin", "POST", "/flavors", json={"flavor": {
                "name": "conf-1024", "id": "conf-1024", "ram": 1024, "vcpus": 1, "disk": 1}})
        img = self.cloud.args.image_url
        r = cl.call("admin", "GET", f"{img}/v2/images", params={"name": "conf-image"})
        found = [i for i in r.json()["images"] if i["status"] == "active"]
        if found:
            self.image_id = found[0]["id"]
        else:
            r = cl.call("admin", "POST", f"{img}/v2/images", json={
                "name": "conf-image", "disk_format": "raw", "container_format": "bare",
                "visibility": "public"})
            self.image_id = r.json()["id"]
            cl.call("admin", "PUT", f"{img}/v2/images/{self.image_id}/file", content=b"\0" * 1024,
                    headers={"Content-Type": "application/octet-stream"})
        r = cl.manila("admin", "GET", "/types")
        if not any(t["name"] == "default" for t in r.json()["share_types"]):
            cl.manila("admin", "POST", "/types", json={"share_type": {
                "name": "default", "share_type_access:is_public": True,
                "extra_specs": {"driver_handles_share_servers": False}}})
        need: dict[str, int] = {}
        for case in cases:
            counts: dict[str, int] = {}
            for kind in case.shares.values():
                counts[kind] = counts.get(kind, 0) + 1
            for kind, n in counts.items():
                need[kind] = max(need.get(kind, 0), n)
        self.share_pool = {k: [self.make_share(k, i) for i in range(n)] for k, n in need.items()}
        for kind, ids in self.share_pool.items():
            for sid in ids:
                self.wait_share(sid, "error" if kind == "error" else "available")
        self.other_server = self.make_servers({"o": "stopped"}, "conf-other-b", who="other")["o"]

    def project_id(self, name: str) -> str:
        if name not in self.cloud.project_ids:
            r = self.cloud.call("cloud-admin", "GET", f"{self.cloud.args.auth_url}/projects",
                                params={"name": name})
            self.cloud.project_ids[name] = r.json()["projects"][0]["id"]
        return self.cloud.project_ids[name]

    def make_share(self, kind: str, i: int) -> str:
        proto = "CIFS" if kind == "cifs" else "NFS"
        r = self.cloud.manila("member", "POST", "/shares", json={"share": {
            "share_proto": proto, "size": 1, "name": f"conf-{kind}-{i}", "share_type": "default"}})
        sid = str(r.json()["share"]["id"])
        self.wait_share(sid, "available")
        if kind == "error":
            self.cloud.manila("admin", "POST", f"/shares/{sid}/action",
                              json={"reset_status": {"status": "error"}})
        if kind == "cephfs":
            # The dummy driver only creates NFS and CIFS shares: an available NFS share is
            # relabelled CEPHFS in Manila's database (all Nova's API reads is the protocol).
            db = self.cloud.args.manila_db
            if not db:
                raise Failed("a 'cephfs' share needs --manila-db (the dummy driver has no CEPHFS)")
            subprocess.run(["mysql", "-h127.0.0.1", "-uroot", db, "-e",
                            f"UPDATE shares SET share_proto='CEPHFS' WHERE id='{sid}'"], check=True)
        return sid

    def share_status(self, sid: str) -> str:
        r = self.cloud.manila("admin", "GET", f"/shares/{sid}", ok=(200, 404))
        return "deleted" if r.status_code == 404 else str(r.json()["share"]["status"])

    def wait_share(self, sid: str, status: str) -> None:
        def ok() -> bool:
            st = self.share_status(sid)
            if st != status and st in ("error", "deleted") and status != "error":
                raise Failed(f"share {sid} is {st}")
            return st == status
        poll(f"share {sid} {status}", ok, 120)

    def server(self, who: str, sid: str) -> dict[str, Any] | None:
        r = self.cloud.nova(who, "GET", f"/servers/{sid}", ok=(200, 404))
        return None if r.status_code == 404 else r.json()["server"]

    def wait_server(self, sid: str, status: str, who: str = "admin") -> None:
        def ok() -> bool:
            s = self.server(who, sid)
            if s is None:
                raise Failed(f"server {sid} vanished")
            if s["status"] == "ERROR" and status != "ERROR":
                raise Failed(f"server {sid} went ERROR: {s.get('fault')}")
            return bool(s["status"] == status and not s.get("OS-EXT-STS:task_state"))
        poll(f"server {sid} {status}", ok, 180)

    def make_servers(self, spec: dict[str, str], prefix: str, who: str = "member",
                     attached: tuple[tuple[str, str, str | None], ...] = (),
                     shares: dict[str, str] | None = None,
                     subst: Any = None) -> dict[str, str]:
        cl = self.cloud
        ids: dict[str, str] = {}
        for alias in spec:
            r = cl.nova(who, "POST", "/servers", json={"server": {
                "name": f"{prefix}-{alias}"[:60], "flavorRef": "conf-512",
                "imageRef": self.image_id, "networks": "none"}})
            ids[alias] = r.json()["server"]["id"]
            with cl.lock:
                self.created_servers.add(ids[alias])
        for sid in ids.values():
            self.wait_server(sid, "ACTIVE")
            cl.nova(who, "POST", f"/servers/{sid}/action", json={"os-stop": None})
        for sid in ids.values():
            self.wait_server(sid, "SHUTOFF")
        for server, share, tag in attached:
            body: dict[str, Any] = {"share_id": (shares or {})[share]}
            if tag is not None:
                body["tag"] = subst(tag)
            cl.nova(who, "POST", f"/servers/{ids[server]}/shares", json={"share": body})
        for server, share, _tag in attached:
            path = f"/servers/{ids[server]}/shares/{(shares or {})[share]}"
            poll(f"{path} inactive", lambda p=path: self._status(who, p) == "inactive", 120)
        for alias, state in spec.items():
            sid = ids[alias]
            if state == "active":
                cl.nova(who, "POST", f"/servers/{sid}/action", json={"os-start": None})
                self.wait_server(sid, "ACTIVE")
            elif state == "error":
                cl.nova("admin", "POST", f"/servers/{sid}/action",
                        json={"os-resetState": {"state": "error"}})
                self.wait_server(sid, "ERROR")
        for server, share, _tag in attached:  # let mount/umount on start settle
            path = f"/servers/{ids[server]}/shares/{(shares or {})[share]}"
            poll(f"{path} settled", lambda p=path: self._status(who, p) in (
                "inactive", "active", "error"), 60)
        return ids

    def _status(self, who: str, path: str) -> str:
        r = self.cloud.nova(who, "GET", path)
        st = str(r.json()["share"]["status"])
        if st == "error":
            raise Failed(f"{path} went to error")
        return st

    # --- one case ---------------------------------------------------------------------------
    def prepare(self, case: Any) -> dict[str, str]:
        """placeholder -> real value for this case, with its servers made."""
        values: dict[str, str] = {"missing": str(uuid.uuid4()), "other_server": self.other_server}
        counters: dict[str, int] = {}
        shares: dict[str, str] = {}
        for alias, kind in case.shares.items():
            n = counters.get(kind, 0)
            counters[kind] = n + 1
            shares[alias] = self.share_pool[kind][n]
            values[f"share:{alias}"] = shares[alias]

        def subst(s: str) -> str:
            return substitute(s, values)

        servers = self.make_servers(case.servers, f"conf-{case.name}", attached=case.attached,
                                    shares=shares, subst=subst)
        for alias, sid in servers.items():
            values[f"server:{alias}"] = sid
        return values

    def run_case(self, case: Any, values: dict[str, str]) -> list[dict[str, Any]]:
        results = []
        for step in case.steps:
            results.append(self.run_step(step, values))
        return results

    def run_step(self, step: Any, values: dict[str, str]) -> dict[str, Any]:
        cl = self.cloud
        req = request_of(step, values, cl.token(step.user))
        r = cl.http.request(req.method, cl.args.compute_url.rstrip("/") + req.target,
                            headers=req.headers, content=req.content)
        return answer_of(r, values)

    def cleanup_case(self, values: dict[str, str]) -> None:
        for k, v in values.items():
            if k.startswith("server:"):
                self.delete_server(v)

    def delete_server(self, sid: str) -> None:
        r = self.cloud.nova("admin", "DELETE", f"/servers/{sid}", ok=(204, 404, 409))
        if r.status_code == 409:  # e.g. mid-task: reset and force
            self.cloud.nova("admin", "POST", f"/servers/{sid}/action",
                            json={"os-resetState": {"state": "error"}}, ok=(202, 404))
            self.cloud.nova("admin", "DELETE", f"/servers/{sid}", ok=(204, 404))

    def final_cleanup(self) -> list[str]:
        problems: list[str] = []
        for sid in sorted(self.created_servers):
            try:
                self.delete_server(sid)
            except Failed as e:
                problems.append(str(e))
        for sid in sorted(self.created_servers):
            try:
                poll(f"server {sid} gone", lambda s=sid: self.server("admin", s) is None, 120)
            except Failed as e:
                problems.append(str(e))
        # snapshots (createImage) of project A
        img = self.cloud.args.image_url
        r = self.cloud.call("admin", "GET", f"{img}/v2/images", params={"name": "conf-snap"})
        for im in r.json()["images"]:
            self.cloud.call("admin", "DELETE", f"{img}/v2/images/{im['id']}", ok=(204, 404))
        for ids in self.share_pool.values():
            for sid in ids:
                try:
                    self.delete_share(sid)
                except Failed as e:
                    problems.append(str(e))
        return problems

    def delete_share(self, sid: str) -> None:
        cl = self.cloud
        # locks on the access rules Nova made ("Lock by nova for instance ...")
        rules = cl.manila("admin", "GET", "/share-access-rules", params={"share_id": sid},
                          ok=(200, 404))
        rule_ids = [x["id"] for x in rules.json().get("access_list", [])] if rules.status_code == 200 else []
        for rid in rule_ids:
            locks = cl.manila("admin", "GET", "/resource-locks", params={"resource_id": rid},
                              ok=(200, 404))
            if locks.status_code == 200:
                for lk in locks.json().get("resource_locks", []):
                    cl.manila("admin", "DELETE", f"/resource-locks/{lk['id']}", ok=(204, 404))
            cl.manila("admin", "POST", f"/shares/{sid}/action", ok=(202, 404),
                      json={"deny_access": {"access_id": rid, "unrestrict": True}})
        if rule_ids:
            poll(f"share {sid} rules gone", lambda: not cl.manila(
                "admin", "GET", "/share-access-rules", params={"share_id": sid}
            ).json()["access_list"], 60)
        if self.share_status(sid) != "available":
            cl.manila("admin", "POST", f"/shares/{sid}/action",
                      json={"reset_status": {"status": "available"}}, ok=(202, 404))
        cl.manila("admin", "DELETE", f"/shares/{sid}", ok=(202, 404))
        poll(f"share {sid} deleted", lambda: self.share_status(sid) in ("deleted",
                                                                         "error_deleting"), 120)


@dataclass(frozen=True)
class Request:
    """A case's step as bytes on the wire: `target` is relative to the compute endpoint."""

    method: str
    target: str
    headers: dict[str, str]
    content: bytes | None


def request_of(step: Any, values: dict[str, str], token: str,
               flavors: dict[str, str] | None = None) -> Request:
    """How a Step becomes a request (tests/conformance/cases.py says it in words): the same for
    the recorder and for the replay against attachfs. `flavors` renames the recorder's flavors
    for a service that has others."""
    target = substitute(step.path, values)
    if step.query:
        target += "?" + substitute(step.query, values)
    headers = {"X-Auth-Token": token, "Accept": "application/json"}
    if step.version is not None:
        headers["OpenStack-API-Version"] = f"compute {step.version}"
    content: bytes | None = None
    if step.raw is not None:
        content = substitute(step.raw, values).encode()
    elif step.body is not None:
        body = substitute_json(step.body, values)
        resize = body.get("resize") if isinstance(body, dict) else None
        if flavors and isinstance(resize, dict) and resize.get("flavorRef") in flavors:
            resize["flavorRef"] = flavors[resize["flavorRef"]]
        content = json.dumps(body).encode()
    if content is not None and step.content_type is not None:
        headers["Content-Type"] = step.content_type
    return Request(step.method, target, headers, content)


def answer_of(r: httpx.Response, values: dict[str, str]) -> dict[str, Any]:
    """What is recorded (and compared) of an answer, real ids put back as placeholders."""
    body: Any
    if not r.content:
        body = None
    else:
        try:
            body = r.json()
        except ValueError:
            body = r.text
    reverse = {v: "{" + k + "}" for k, v in values.items() if v}
    return {"status": r.status_code, "content_type": r.headers.get("Content-Type"),
            "version_header": r.headers.get("OpenStack-API-Version"),
            "body": scrub(body, reverse)}


def substitute(s: str, values: dict[str, str]) -> str:
    def rep(m: re.Match[str]) -> str:
        key = m.group(1)
        if key not in values:
            raise Failed(f"unknown placeholder {{{key}}}")
        return values[key]
    return re.sub(r"\{((?:server|share):\w+|missing|other_server)\}", rep, s)


def substitute_json(obj: Any, values: dict[str, str]) -> Any:
    if isinstance(obj, str):
        return substitute(obj, values)
    if isinstance(obj, list):
        return [substitute_json(x, values) for x in obj]
    if isinstance(obj, dict):
        return {substitute(k, values): substitute_json(v, values) for k, v in obj.items()}
    return obj


def scrub(obj: Any, reverse: dict[str, str]) -> Any:
    if isinstance(obj, str):
        out = REQ_ID.sub(ANY, obj)
        for real in sorted(reverse, key=len, reverse=True):
            out = out.replace(real, reverse[real])
        return out
    if isinstance(obj, list):
        return [scrub(x, reverse) for x in obj]
    if isinstance(obj, dict):
        return {k: (ANY if k in ANY_KEYS and v is not None else scrub(v, reverse))
                for k, v in obj.items()}
    return obj


def versions(cloud: Cloud) -> dict[str, str]:
    out = {}
    r = cloud.http.get(cloud.args.compute_url.rstrip("/") + "/")
    v = r.json().get("version", {})
    out["compute_api_max"] = v.get("version", "?")
    venv = Path(cloud.args.venv)
    for pkg in ("nova", "manila", "openstack-placement", "keystone", "glance"):
        try:
            res = subprocess.run([str(venv / "bin/python"), "-c",
                                  "import importlib.metadata as m, sys; "
                                  "print(m.version(sys.argv[1]))", pkg],
                                 capture_output=True, text=True, check=True)
            out[pkg] = res.stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            out[pkg] = "unknown"
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--auth-url", required=True, help="Keystone v3, e.g. http://127.0.0.1:19500/v3")
    ap.add_argument("--compute-url", required=True, help="e.g. http://127.0.0.1:19774/v2.1")
    ap.add_argument("--share-url", required=True, help="Manila v2, e.g. http://127.0.0.1:19786/v2")
    ap.add_argument("--image-url", required=True, help="Glance, e.g. http://127.0.0.1:19292")
    ap.add_argument("--admin-password", required=True, help="Keystone's bootstrap admin")
    ap.add_argument("--password", default="conformance-secret", help="the four test users'")
    ap.add_argument("--bootstrap", action="store_true", help="create projects/users/roles")
    ap.add_argument("--manila-db", default="cs_manila",
                    help="Manila's MariaDB database (for the CEPHFS relabel); '' = no cephfs")
    ap.add_argument("--venv", default=str(ROOT / ".venv-nova"), help="for the version record")
    ap.add_argument("--cases", default=str(ROOT / "tests/conformance/cases.py"))
    ap.add_argument("--only", action="append", default=[], help="case name (repeatable)")
    ap.add_argument("--workers", type=int, default=3, help="cases prepared in parallel")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    for k in ("auth_url", "compute_url", "share_url", "image_url"):
        setattr(args, k, getattr(args, k).rstrip("/"))

    mod = load_cases(Path(args.cases))
    cases = [c for c in mod.CASES if not args.only or c.name in args.only]
    cloud = Cloud(args)
    t0 = time.monotonic()
    if args.bootstrap:
        cloud.bootstrap()
    rec = Recorder(cloud, mod)
    results: dict[str, list[dict[str, Any]]] = {}
    failures: dict[str, str] = {}
    try:
        rec.once(cases)
        print(f"record: fixtures ready in {time.monotonic() - t0:.1f} s; shares "
              f"{ {k: len(v) for k, v in rec.share_pool.items()} }", flush=True)
        with cf.ThreadPoolExecutor(max_workers=args.workers) as pool:
            futures = [(case, pool.submit(rec.prepare, case)) for case in cases]
            for case, fut in futures:
                t1 = time.monotonic()
                try:
                    values = fut.result()
                except Exception as e:  # noqa: BLE001 - report and go on
                    failures[case.name] = f"fixture: {e}"
                    print(f"record: {case.name}: FIXTURE FAILED: {e}", flush=True)
                    continue
                try:
                    results[case.name] = rec.run_case(case, values)
                    summary = " ".join(str(x["status"]) for x in results[case.name])
                    print(f"record: {case.name}: {summary} ({time.monotonic() - t1:.1f} s)",
                          flush=True)
                except Exception as e:  # noqa: BLE001
                    failures[case.name] = f"steps: {e}"
                    print(f"record: {case.name}: STEPS FAILED: {e}", flush=True)
                finally:
                    try:
                        rec.cleanup_case(values)
                    except Exception as e:  # noqa: BLE001
                        print(f"record: {case.name}: cleanup: {e}", flush=True)
    finally:
        problems = rec.final_cleanup()
        for p in problems:
            print(f"record: cleanup problem: {p}", flush=True)

    recorded_with: dict[str, Any] = {**versions(cloud), "date": dt.date.today().isoformat(),
                                     "cases_recorded": len(results), "cases_failed": failures}
    out: dict[str, Any] = {"recorded_with": recorded_with, "cases": results}
    if args.only and Path(args.out).exists():  # merge a partial re-run
        old = json.loads(Path(args.out).read_text())
        old["cases"].update(results)
        failed = {k: v for k, v in old["recorded_with"].get("cases_failed", {}).items()
                  if k not in results}
        failed.update(failures)
        old["recorded_with"] = {**recorded_with, "cases_failed": failed,
                                "cases_recorded": len(old["cases"])}
        out = old
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2, sort_keys=True) + "\n")
    print(f"record: {len(results)} cases, {len(failures)} failed, "
          f"{time.monotonic() - t0:.0f} s -> {args.out}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
