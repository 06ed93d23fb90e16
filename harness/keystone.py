"""A real, throw-away Keystone (from .venv-keystone, see scripts/setup-keystone.sh) on a free
loopback port: the session's `keystone` fixture (tests/keystone_fixture.py) and the operator's
demo (harness/demo_ceph.py) both start it with this code.

Keystone: sqlite in a directory of its own, fernet tokens, `keystone-manage bootstrap` (admin in
project `admin`, `[resource] admin_project_name = admin`), served by gunicorn. `populate()` then
makes, through its API: projects A and B, users with reader / member roles there, and the
service user attachfs validates tokens with (role `service` in project `service`). `stop()`
kills the process group and checks that nothing of it is left and the port is free.
`register()` puts a service's endpoints in the catalog (attachfs's compute endpoint, Manila's
sharev2), so that clients with password auth find them.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
KEYSTONE_VENV = ROOT / ".venv-keystone"
ADMIN_PASSWORD = "admin-secret"  # noqa: S105 - a throw-away Keystone
PASSWORD = "secret"  # noqa: S105
SERVICE_USER, SERVICE_PASSWORD = "attachfs", "attachfs-secret"
REGION = "RegionOne"  # bootstrap's region: the catalog entries of Manila and attachfs are there

# user name -> (project, role); `admin` is bootstrap's admin in project `admin`.
USERS = {
    "a_reader": ("A", "reader"),
    "a_member": ("A", "member"),
    "b_reader": ("B", "reader"),
    "b_member": ("B", "member"),
}

WSGI_WRAPPER = """\
import sys
sys.argv = sys.argv[:1]  # keystone's oslo.config would parse gunicorn's arguments
from keystone.wsgi.api import application  # noqa: E402,F401
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def authtoken_overrides(url: str) -> dict[str, object]:
    """attachfs config overrides: Keystone auth for its API, as the attachfs service user."""
    return {
        "api.auth_strategy": "keystone",
        "keystone_authtoken.www_authenticate_uri": url,
        "keystone_authtoken.auth_url": url,
        "keystone_authtoken.auth_type": "password",
        "keystone_authtoken.username": SERVICE_USER,
        "keystone_authtoken.password": SERVICE_PASSWORD,
        "keystone_authtoken.project_name": "service",
        "keystone_authtoken.service_token_roles": ["service"],
        "keystone_authtoken.service_token_roles_required": True,
    }


@dataclass
class Keystone:
    url: str  # public identity endpoint, e.g. http://127.0.0.1:PORT
    port: int
    process: subprocess.Popen[bytes]
    log: Path
    started_in: float  # seconds, from nothing to the first answered /v3
    project_ids: dict[str, str] = field(default_factory=dict)
    user_ids: dict[str, str] = field(default_factory=dict)
    _tokens: dict[str, str] = field(default_factory=dict)

    @property
    def v3(self) -> str:
        return f"{self.url}/v3"

    def issue(self, user: str, project: str, password: str = PASSWORD) -> str:
        """A fresh project-scoped token for `user`."""
        body = {"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": user, "domain": {"id": "default"}, "password": password}}},
            "scope": {"project": {"name": project, "domain": {"id": "default"}}}}}
        r = httpx.post(f"{self.v3}/auth/tokens", json=body, timeout=30)
        assert r.status_code == 201, r.text
        return r.headers["X-Subject-Token"]

    def token(self, user: str) -> str:
        """A cached token for one of USERS, `admin` or the service user."""
        if user not in self._tokens:
            if user == "admin":
                self._tokens[user] = self.issue("admin", "admin", ADMIN_PASSWORD)
            elif user == SERVICE_USER:
                self._tokens[user] = self.issue(SERVICE_USER, "service", SERVICE_PASSWORD)
            else:
                self._tokens[user] = self.issue(user, USERS[user][0])
        return self._tokens[user]

    def admin_call(self, method: str, path: str, **kwargs: object) -> httpx.Response:
        headers = {"X-Auth-Token": self.token("admin")}
        r = httpx.request(method, f"{self.v3}{path}", headers=headers, timeout=30, **kwargs)  # type: ignore[arg-type]
        assert r.status_code < 300, (method, path, r.status_code, r.text)
        return r

    def revoke(self, token: str) -> None:
        r = httpx.delete(f"{self.v3}/auth/tokens",
                         headers={"X-Auth-Token": self.token("admin"), "X-Subject-Token": token},
                         timeout=30)
        assert r.status_code == 204, r.text

    def short_lived_token(self, user: str, seconds: float) -> tuple[str, dt.datetime]:
        """A token that really expires `seconds` from now: Keystone caps a token issued for an
        application credential at the credential's expiry (one Keystone for all, the global
        [token] expiration left alone)."""
        project = USERS[user][0]
        user_id = self.user_ids[user]
        own = self.issue(user, project)
        expires = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)).replace(tzinfo=None)
        r = httpx.post(f"{self.v3}/users/{user_id}/application_credentials",
                       headers={"X-Auth-Token": own}, timeout=30,
                       json={"application_credential": {
                           "name": f"short-{time.monotonic_ns()}",
                           "expires_at": expires.isoformat(timespec="milliseconds")}})
        assert r.status_code == 201, r.text
        cred = r.json()["application_credential"]
        body = {"auth": {"identity": {"methods": ["application_credential"],
                                      "application_credential": {"id": cred["id"],
                                                                 "secret": cred["secret"]}}}}
        r = httpx.post(f"{self.v3}/auth/tokens", json=body, timeout=30)
        assert r.status_code == 201, r.text
        expires_at = dt.datetime.fromisoformat(r.json()["token"]["expires_at"].replace("Z", "+00:00"))
        return r.headers["X-Subject-Token"], expires_at

    # ---- users and the catalog ---------------------------------------------------------------
    def role_ids(self) -> dict[str, str]:
        return {r["name"]: r["id"] for r in self.admin_call("GET", "/roles").json()["roles"]}

    def create_user(self, name: str, password: str, project: str, roles: list[str]) -> str:
        """A user with `roles` in `project` (a name populate() made, or `admin`); its id."""
        ids = self.role_ids()
        user_id = str(self.admin_call("POST", "/users", json={"user": {
            "name": name, "domain_id": "default", "password": password}}).json()["user"]["id"])
        for role in roles:
            self.admin_call("PUT", f"/projects/{self.project_ids[project]}/users/{user_id}"
                                   f"/roles/{ids[role]}")
        return user_id

    def delete_user(self, user_id: str) -> None:
        self.admin_call("DELETE", f"/users/{user_id}")

    def register(self, service_type: str, name: str, url: str, region: str = REGION) -> str:
        """A catalog service of `service_type` with its public, internal and admin endpoints at
        `url` in `region` (clients look an endpoint up by type, interface and region); its id.
        unregister() removes it, endpoints included."""
        service_id = str(self.admin_call("POST", "/services", json={"service": {
            "type": service_type, "name": name, "enabled": True}}).json()["service"]["id"])
        for interface in ("public", "internal", "admin"):
            self.admin_call("POST", "/endpoints", json={"endpoint": {
                "service_id": service_id, "interface": interface, "region_id": region,
                "url": url, "enabled": True}})
        return service_id

    def unregister(self, service_id: str) -> None:
        self.admin_call("DELETE", f"/services/{service_id}")  # its endpoints go with it


def _run(args: list[str], log: Path) -> None:
    with log.open("ab") as out:
        subprocess.run(args, check=True, stdout=out, stderr=subprocess.STDOUT, timeout=300)


def _write_config(base: Path) -> Path:
    conf = base / "keystone.conf"
    conf.write_text(f"""\
[DEFAULT]
log_file = {base / 'keystone.log'}
use_stderr = false

[database]
connection = sqlite:///{base / 'keystone.db'}

[token]
provider = fernet

[fernet_tokens]
key_repository = {base / 'fernet-keys'}

[fernet_receipts]
key_repository = {base / 'fernet-keys'}

[credential]
key_repository = {base / 'credential-keys'}

[resource]
admin_project_name = admin
admin_project_domain_name = Default

[cache]
enabled = true
backend = dogpile.cache.memory

[identity]
password_hash_rounds = 4
""")
    return conf


def _bootstrap(conf: Path, url: str, log: Path) -> None:
    manage = [str(KEYSTONE_VENV / "bin" / "keystone-manage"), "--config-file", str(conf)]
    user = ["--keystone-user", "root", "--keystone-group", "root"]
    with ThreadPoolExecutor(3) as pool:  # independent of each other: ~2 s saved
        for done in [pool.submit(_run, [*manage, "db_sync"], log),
                     pool.submit(_run, [*manage, "fernet_setup", *user], log),
                     pool.submit(_run, [*manage, "credential_setup", *user], log)]:
            done.result()
    _run([*manage, "bootstrap", "--bootstrap-password", ADMIN_PASSWORD,
          "--bootstrap-admin-url", f"{url}/v3", "--bootstrap-public-url", f"{url}/v3",
          "--bootstrap-internal-url", f"{url}/v3", "--bootstrap-region-id", REGION], log)


def _spawn(base: Path, conf: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    (base / "keystone_wsgi.py").write_text(WSGI_WRAPPER)
    env = {**os.environ, "OS_KEYSTONE_CONFIG_FILES": str(conf)}
    env.pop("PYTHONPATH", None)
    with log.open("ab") as out:  # the child keeps its own descriptor
        return subprocess.Popen(
            [str(KEYSTONE_VENV / "bin" / "gunicorn"), "--bind", f"127.0.0.1:{port}",
             "--workers", "1", "--threads", "4", "--timeout", "120", "--no-control-socket",
             "--chdir", str(base), "--pythonpath", str(base), "keystone_wsgi:application"],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_ready(ks: Keystone, deadline: float) -> None:
    while time.monotonic() < deadline:
        if ks.process.poll() is not None:
            raise RuntimeError(f"keystone exited ({ks.process.returncode}): "
                               f"{ks.log.read_text()[-3000:]}")
        try:
            if httpx.get(ks.v3, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"keystone did not answer in time: {ks.log.read_text()[-3000:]}")


def start(base: Path, timeout: float = 120) -> Keystone:
    """Keystone bootstrapped under `base` (an empty directory) and answering; not populated.
    A start that fails stops what it started."""
    log = base / "keystone-run.log"
    started = time.monotonic()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    conf = _write_config(base)
    _bootstrap(conf, url, log)
    ks = Keystone(url=url, port=port, process=_spawn(base, conf, port, log), log=log,
                  started_in=0.0)
    try:
        _wait_ready(ks, time.monotonic() + timeout)
    except BaseException:
        stop(ks)
        raise
    ks.started_in = time.monotonic() - started
    return ks


def populate(ks: Keystone) -> None:
    """Projects A, B and service; USERS with their roles; the attachfs service user."""
    roles = ks.role_ids()
    for project in ("A", "B", "service"):
        r = ks.admin_call("POST", "/projects", json={"project": {"name": project,
                                                                  "domain_id": "default"}})
        ks.project_ids[project] = r.json()["project"]["id"]
    ks.project_ids["admin"] = ks.admin_call(
        "GET", "/projects", params={"name": "admin"}).json()["projects"][0]["id"]
    accounts = {**USERS, SERVICE_USER: ("service", "service")}
    for name, (project, role) in accounts.items():
        password = SERVICE_PASSWORD if name == SERVICE_USER else PASSWORD
        r = ks.admin_call("POST", "/users", json={"user": {
            "name": name, "domain_id": "default", "password": password}})
        user_id = r.json()["user"]["id"]
        ks.user_ids[name] = user_id
        ks.admin_call("PUT", f"/projects/{ks.project_ids[project]}/users/{user_id}"
                             f"/roles/{roles[role]}")
    ks.user_ids["admin"] = ks.admin_call(
        "GET", "/users", params={"name": "admin"}).json()["users"][0]["id"]


def stop(ks: Keystone) -> None:
    """Stop gunicorn and its worker; AssertionError if a process of it is left or the port
    still answers."""
    if ks.process.poll() is None:
        os.killpg(ks.process.pid, signal.SIGTERM)  # gunicorn's arbiter and its worker
        try:
            ks.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(ks.process.pid, signal.SIGKILL)
            ks.process.wait(timeout=15)
    deadline = time.monotonic() + 10
    while ((_group_members(ks.process.pid) or port_listening(ks.port))
           and time.monotonic() < deadline):
        time.sleep(0.1)
    if _group_members(ks.process.pid):  # a worker that ignored SIGTERM
        os.killpg(ks.process.pid, signal.SIGKILL)
        time.sleep(0.5)
    left = _group_members(ks.process.pid)
    assert not left, f"keystone processes left behind: {left}"
    assert not port_listening(ks.port), f"something still listens on {ks.port}"


def _group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


@contextmanager
def running_keystone(base: Path) -> Iterator[Keystone]:
    """A started and populated Keystone under `base`, stopped on the way out."""
    ks = start(base)
    try:
        populate(ks)
        yield ks
    finally:
        stop(ks)
