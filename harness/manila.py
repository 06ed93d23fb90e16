"""A real Manila (the shared-file-system service) on this host, from the separate virtualenv
scripts/setup-manila.sh builds: the tests' fixtures (tests/manila_fixture.py) and the operator's
demo (harness/demo_ceph.py) both start it with this code.

`Manila.start()`: manila-api (its WSGI app, served by a small threaded server on a free loopback
port), manila-scheduler and manila-share with the DummyDriver. Its database is a fresh MariaDB
database and its messages go to a fresh RabbitMQ vhost (and a per-run control exchange), both
removed by `stop()`, which also stops the processes and says what is left running or
listening.

Auth is Manila's noauthv2: a token "user:project" is that user in that project (as an admin).
`start_keystone_api()` adds a second manila-api to the same deployment (same database,
scheduler and share service: only the API authenticates) with auth_strategy = keystone against
a real Keystone (harness/keystone.py), registered in Keystone's catalog as `sharev2`.
`add_cephfs_backend()` adds a second manila-share with Manila's real CephFS native driver on a
real Ceph (harness/ceph.py), chosen by the share type CEPHFS_TYPE.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from harness.ceph import CephCluster
from harness.keystone import REGION, Keystone

__all__ = ["CEPHFS_TYPE", "DEFAULT_TYPE", "MANILA_PASSWORD", "MANILA_USER", "MICROVERSION",
           "NOAUTH_PROJECT", "NOAUTH_TOKEN", "NOAUTH_USER", "REGION", "SERVICE_PROJECT",
           "SERVICE_USER", "KeystoneManila", "Manila", "ManilaRest", "add_cephfs_backend",
           "ensure_venv", "prerequisites", "start_keystone_api", "stop_keystone_api"]

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(os.environ.get("ATTACHFS_MANILA_VENV", ROOT / ".venv-manila"))
MARIADB = ("127.0.0.1", 3306)
RABBIT = ("127.0.0.1", 5672)
MICROVERSION = "2.82"
# noauthv2: a token "user:project" is that user in that project (the calls of the noauth
# manila-api default to this one). Ids look like Keystone's (32 hex digits): Manila's resource
# lock views refuse user and project ids that are not UUIDs.
NOAUTH_USER, NOAUTH_PROJECT = "a11ce000000040008000000000000001", "de30000000004000800000000000000d"
NOAUTH_TOKEN = f"{NOAUTH_USER}:{NOAUTH_PROJECT}"
# keystoneauth's noauth plugin (attachfs's [manila] auth_type none) sends the token "notused";
# the server below makes that the service user SERVICE_USER in SERVICE_PROJECT.
SERVICE_USER, SERVICE_PROJECT = "5e41ce00000040008000000000000005", "5e41ce0000004000800000000000000f"
# Manila's own Keystone user (its keystonemiddleware validates tokens with it).
MANILA_USER, MANILA_PASSWORD = "manila", "manila-secret"  # noqa: S105 - a throw-away Keystone
DEFAULT_TYPE = "attachfs-test"  # the dummy backend's share type, Manila's default_share_type
CEPHFS_TYPE = "attachfs-cephfs"  # the CephFS backend's (add_cephfs_backend)

# Serves Manila's API WSGI app without eventlet (manila-api refuses to start without it).
# Token-less requests below /v2 get a 401, as keystonemiddleware would answer: openstacksdk's
# version discovery asks without a token first and only retries with one after a 401 (Manila's
# noauth middleware would answer 204 with a made-up token instead).
API_SERVER = textwrap.dedent('''
    import sys
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    conf, port_file, port, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    sys.argv = ["manila-api", "--config-file", conf]
    from manila.wsgi import api

    def app(environ, start_response):
        if mode == "keystone":  # keystonemiddleware does it all
            return api.application(environ, start_response)
        if environ.get("HTTP_X_AUTH_TOKEN") == "notused":
            environ["HTTP_X_AUTH_TOKEN"] = "SERVICE_TOKEN"
        if "HTTP_X_AUTH_TOKEN" not in environ and environ.get("PATH_INFO", "/").rstrip("/"):
            start_response("401 Unauthorized", [("Content-Type", "application/json"),
                                                ("WWW-Authenticate", "Keystone uri=none")])
            return [b'{"error": {"code": 401, "message": "token required"}}']
        return api.application(environ, start_response)

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True
        allow_reuse_address = True

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args):
            pass

    server = make_server("127.0.0.1", port, app, server_class=Server, handler_class=Quiet)
    with open(port_file + ".tmp", "w") as f:
        f.write(str(server.server_port))
    import os
    os.replace(port_file + ".tmp", port_file)
    server.serve_forever()
''').replace("SERVICE_TOKEN", f"{SERVICE_USER}:{SERVICE_PROJECT}")


def _reachable(addr: tuple[str, int]) -> bool:
    try:
        socket.create_connection(addr, timeout=2).close()
        return True
    except OSError:
        return False


def _listening(port: int) -> bool:
    return _reachable(("127.0.0.1", port))


class ShareFailed(Exception):
    def __init__(self, share_id: str, message: str) -> None:
        super().__init__(message)
        self.share_id = share_id


class ManilaRest:
    """Manila's REST API as a client sees it (one manila-api endpoint)."""

    @property
    def endpoint(self) -> str:
        raise NotImplementedError

    def default_token(self) -> str:
        raise NotImplementedError

    def request(self, method: str, path: str, token: str | None = None, json: Any = None,
                params: dict[str, str] | None = None, timeout: float = 30,
                headers: dict[str, str] | None = None) -> httpx.Response:
        return httpx.request(method, self.endpoint + path, json=json, params=params,
                             timeout=timeout, headers={
                                 "X-Auth-Token": token or self.default_token(),
                                 "X-OpenStack-Manila-API-Version": MICROVERSION,
                                 **(headers or {})})

    def create_share(self, name: str, proto: str = "NFS", token: str | None = None,
                     share_type: str = DEFAULT_TYPE, size: int = 1) -> dict[str, Any]:
        """A new share, once available. A share the backend fails to create (seen under load
        with the CephFS driver, whose Ceph commands have a fixed 10 s deadline) is deleted and
        asked for once more; the reason goes to stderr, and a second failure is an error."""
        try:
            return self._create_share(name, proto, token, share_type, size)
        except ShareFailed as first:
            sys.stderr.write(f"\n[manila] {first}; deleting it and creating {name} again\n")
            self.request("DELETE", f"/shares/{first.share_id}", token)
            try:
                return self._create_share(name, proto, token, share_type, size)
            except ShareFailed as second:
                raise AssertionError(f"{first}\nand again: {second}") from second

    def _create_share(self, name: str, proto: str, token: str | None, share_type: str,
                      size: int) -> dict[str, Any]:
        r = self.request("POST", "/shares", token, json={"share": {
            "name": name, "share_proto": proto, "size": size, "share_type": share_type}})
        assert r.status_code in (200, 202), r.text
        share_id = r.json()["share"]["id"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            share: dict[str, Any] = self.request("GET", f"/shares/{share_id}",
                                                 token).json()["share"]
            if share["status"] == "available":
                return share
            if share["status"] != "creating":
                raise ShareFailed(share_id, f"share {share_id} went to {share['status']}: "
                                            f"{self.why_failed(share_id, token)}")
            time.sleep(0.2)
        raise AssertionError(f"share {share_id} never became available")

    def why_failed(self, share_id: str, token: str | None = None) -> str:
        """Manila's user messages about a resource (the only reason its API gives for an
        `error`), and, where this client runs the services, their logs' error lines."""
        r = self.request("GET", "/messages", token, params={"resource_id": share_id})
        said = [m.get("user_message", "") for m in r.json().get("messages", [])] \
            if r.status_code == 200 else [f"GET /messages: {r.status_code}"]
        return "; ".join(said) + self.error_lines()

    def error_lines(self) -> str:
        return ""

    def rules(self, share_id: str, token: str | None = None) -> list[dict[str, Any]]:
        r = self.request("GET", "/share-access-rules", token, params={"share_id": share_id})
        assert r.status_code == 200, r.text
        rules: list[dict[str, Any]] = r.json()["access_list"]
        return rules

    def locks(self, resource_id: str, token: str | None = None) -> list[dict[str, Any]]:
        r = self.request("GET", "/resource-locks", token,
                         params={"resource_id": resource_id, "all_projects": "true"})
        assert r.status_code == 200, r.text
        locks: list[dict[str, Any]] = r.json()["resource_locks"]
        return locks


@dataclass
class Manila(ManilaRest):
    """One Manila deployment for a test session."""

    workdir: Path
    run_id: str
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    port: int = 0  # the noauth manila-api's
    ports: dict[str, int] = field(default_factory=dict)  # every manila-api's, by process name
    vhost: str | None = None
    start_seconds: float = 0.0

    @property
    def db_name(self) -> str:
        return f"manila_{self.run_id}"

    @property
    def conf(self) -> Path:
        return self.workdir / "manila.conf"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/v2"

    def default_token(self) -> str:
        return NOAUTH_TOKEN

    # ---- setup -------------------------------------------------------------------------------
    def sql(self, statement: str) -> None:
        code = ("import pymysql, sys\n"
                "c = pymysql.connect(host='127.0.0.1', port=3306, user='root', autocommit=True)\n"
                "c.cursor().execute(sys.argv[1])\n")
        subprocess.run([str(VENV / "bin/python"), "-c", code, statement], check=True,
                       capture_output=True, timeout=60)

    def make_vhost(self) -> str:
        """A RabbitMQ vhost of our own when rabbitmqctl works here; else the default vhost
        (the per-run control exchange keeps RPC calls apart; the services' fanout exchanges,
        named by topic only, are then shared with other runs)."""
        name = f"attachfs-manila-{self.run_id}"
        ctl = shutil.which("rabbitmqctl")
        if ctl:
            try:
                subprocess.run([ctl, "add_vhost", name], check=True, capture_output=True,
                               timeout=30)
                subprocess.run([ctl, "set_permissions", "-p", name, "guest", ".*", ".*", ".*"],
                               check=True, capture_output=True, timeout=30)
                self.vhost = name
                return name
            except (subprocess.SubprocessError, OSError):
                pass
        return ""

    def write_config(self, vhost: str, conf: Path | None = None, auth: str = "noauthv2",
                     extra: str = "", backends: str = "dummy") -> None:
        state = self.workdir / "state"
        (state / "locks").mkdir(parents=True, exist_ok=True)
        (conf or self.conf).write_text(textwrap.dedent(f"""
            [DEFAULT]
            auth_strategy = {auth}
            transport_url = rabbit://guest:guest@127.0.0.1:5672/{vhost}
            control_exchange = manila_{self.run_id}
            host = attachfs-test-{self.run_id}
            state_path = {state}
            api_paste_config = {VENV}/etc/manila/api-paste.ini
            enabled_share_backends = {backends}
            enabled_share_protocols = NFS,CIFS,CEPHFS
            default_share_type = {DEFAULT_TYPE}
            report_interval = 2
            periodic_interval = 2
            debug = false
            use_stderr = true

            [dummy]
            share_driver = manila.tests.share.drivers.dummy.DummyDriver
            share_backend_name = dummy
            driver_handles_share_servers = false
            dummy_driver_default_driver_method_delay = 0
            dummy_driver_driver_methods_delays = create_share:0.1

            [database]
            connection = mysql+pymysql://root@127.0.0.1:3306/{self.db_name}

            [oslo_concurrency]
            lock_path = {state}/locks

            [coordination]
            backend_url = file://{state}/coordination
        """) + textwrap.dedent(extra))

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 (owned by the child)
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir,
                                start_new_session=True)  # own process group: stop kills all
        log.close()
        self.procs[name] = proc
        return proc

    def start(self) -> None:
        began = time.monotonic()
        self.sql(f"CREATE DATABASE `{self.db_name}` CHARACTER SET utf8mb4")
        self.write_config(self.make_vhost())
        subprocess.run([str(VENV / "bin/manila-manage"), "--config-file", str(self.conf),
                        "db", "sync"], check=True, capture_output=True, timeout=300)
        for name in ("scheduler", "share"):
            self._spawn(name, [str(VENV / f"bin/manila-{name}"), "--config-file", str(self.conf)])
        self.start_api()
        self.wait_ready()
        self.start_seconds = time.monotonic() - began

    def start_api(self, name: str = "api", conf: Path | None = None,
                  mode: str = "noauth") -> int:
        """A manila-api process (`name`, its log name.log) on a free port, or on the port it
        had before when started again; mode "keystone": no noauth shims in front of it."""
        script = self.workdir / "api_server.py"
        script.write_text(API_SERVER)
        port_file = self.workdir / f"{name}.port"
        port_file.unlink(missing_ok=True)
        proc = self._spawn(name, [str(VENV / "bin/python"), str(script), str(conf or self.conf),
                                  str(port_file), str(self.ports.get(name, 0)), mode])
        deadline = time.monotonic() + 120
        while not port_file.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"manila-api ({name}) did not start:\n" + self.log_tail(name))
            time.sleep(0.1)
        port = self.ports[name] = int(port_file.read_text())
        if name == "api":
            self.port = port
        while not _listening(port):
            time.sleep(0.05)
        return port

    def stop_api(self, name: str = "api") -> None:
        self._stop(name)
        assert not _listening(self.ports[name]), f"manila-api ({name}) still listening after stop"

    def wait_ready(self, timeout: float = 120) -> None:
        """Until both services report in (their RPC servers listen: a call sent earlier would
        be lost) and the scheduler knows the share backend's pool (a share can be placed)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            services = self.request("GET", "/services").json().get("services", [])
            reported = {s["binary"] for s in services if s.get("updated_at")}
            if {"manila-scheduler", "manila-share"} <= reported:
                with contextlib.suppress(httpx.TimeoutException):
                    r = self.request("GET", "/scheduler-stats/pools", timeout=5)
                    if r.status_code == 200 and r.json().get("pools"):
                        return
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"manila-{name} exited:\n" + self.log_tail(name))
            time.sleep(0.5)
        raise RuntimeError("Manila's scheduler never saw the dummy backend:\n"
                           + self.log_tail("share"))

    def wait_backend(self, backend: str, process: str, share_type: str, proto: str,
                     timeout: float = 120) -> None:
        """Until a share of `share_type` lands on `backend`: its manila-share reported in and
        the scheduler has its capabilities. (The pool list cannot tell: manila-api asks the
        scheduler for its cached pools, refreshed only when it schedules a share.)"""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            services = self.request("GET", "/services").json().get("services", [])
            if any(sv["host"].endswith(f"@{backend}") and sv.get("updated_at")
                   and sv["state"] == "up" for sv in services):
                break
            if self.procs[process].poll() is not None:
                raise RuntimeError(f"manila-{process} exited:\n" + self.log_tail(process))
            time.sleep(0.5)
        while time.monotonic() < deadline:
            r = self.request("POST", "/shares", json={"share": {
                "name": f"probe-{backend}", "share_proto": proto, "size": 1,
                "share_type": share_type}})
            assert r.status_code in (200, 202), r.text
            probe = r.json()["share"]["id"]
            status = "creating"
            while status == "creating" and time.monotonic() < deadline:
                time.sleep(0.3)
                status = self.request("GET", f"/shares/{probe}").json()["share"]["status"]
            self.request("DELETE", f"/shares/{probe}")
            if status == "available":
                return
            time.sleep(2)  # no valid host yet: the scheduler has not heard from the backend
        raise RuntimeError(f"no share could be placed on the {backend} backend:\n"
                           + self.log_tail(process))

    # ---- teardown ----------------------------------------------------------------------------
    def _stop(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)
        # Forked workers (manila-share's launcher) are in the same group: wait for them too.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    def stop(self) -> list[str]:
        """Stop everything and remove the database and vhost; return what was left behind."""
        groups = [p.pid for p in self.procs.values()]
        for name in list(self.procs):
            self._stop(name)
        left: list[str] = []
        for pgid in groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, 0)
                left.append(f"process group {pgid}")
        for port in self.ports.values():
            if _listening(port):
                left.append(f"something still listens on 127.0.0.1:{port}")
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self.sql(f"DROP DATABASE IF EXISTS `{self.db_name}`")
        if self.vhost:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                subprocess.run([str(shutil.which("rabbitmqctl")), "delete_vhost", self.vhost],
                               check=True, capture_output=True, timeout=30)
        return left

    def create_share_type(self, name: str, backend: str | None = None) -> None:
        """A public share type without share servers; `backend`: its shares land on that
        backend (share_backend_name), else wherever the scheduler finds room."""
        specs: dict[str, Any] = {"driver_handles_share_servers": False}
        if backend:
            specs["share_backend_name"] = backend
        r = self.request("POST", "/types", json={"share_type": {
            "name": name, "share_type_access:is_public": True, "extra_specs": specs}})
        assert r.status_code == 200, r.text

    def error_lines(self) -> str:
        found = [f"{log.name}: {line}" for log in sorted(self.workdir.glob("*.log"))
                 for line in log.read_text(errors="replace").splitlines()
                 if " ERROR " in line or "Traceback" in line]
        return "\n" + "\n".join(found[-30:]) if found else ""

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.workdir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class KeystoneManila(ManilaRest):
    """A manila-api with auth_strategy = keystone on the `manila` deployment, in Keystone's
    catalog as `sharev2` (public, internal, admin in REGION). Its keystonemiddleware validates
    tokens as the Keystone user MANILA_USER (role service) and requires X-Service-Tokens to
    carry the service role. Calls default to Keystone's `admin` (admin role in project admin)."""

    manila: Manila
    keystone: Keystone
    port: int = 0
    service_id: str = ""
    user_id: str = ""
    start_seconds: float = 0.0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/v2"

    def default_token(self) -> str:
        return self.keystone.token("admin")

    def token(self, user: str) -> str:
        return self.keystone.token(user)




def prerequisites() -> str | None:
    """What Manila needs on this host and does not start itself, if missing: MariaDB and
    RabbitMQ on their loopback ports."""
    if not _reachable(MARIADB):
        return "MariaDB is not running on 127.0.0.1:3306"
    if not _reachable(RABBIT):
        return "RabbitMQ is not running on 127.0.0.1:5672"
    return None


def ensure_venv() -> None:
    """.venv-manila, made if missing; once the Ceph packages are in, it also links their Python
    bindings, which the CephFS driver needs (~0.1 s when done)."""
    subprocess.run(["bash", str(ROOT / "scripts/setup-manila.sh")], check=True, timeout=1200)


def start_keystone_api(manila: Manila, keystone: Keystone) -> KeystoneManila:
    """The keystone-mode manila-api on `manila`'s deployment, its Keystone user MANILA_USER
    (role service in project service) and its `sharev2` catalog entry; answering once its
    keystonemiddleware has validated a first token. A start that fails undoes itself."""
    began = time.monotonic()
    ks = keystone
    user_id = ks.create_user(MANILA_USER, MANILA_PASSWORD, "service", ["service"])
    service = KeystoneManila(manila, ks, user_id=user_id)
    conf = manila.workdir / "manila-keystone.conf"
    manila.write_config(manila.vhost or "", conf, auth="keystone", extra=f"""
        [keystone_authtoken]
        www_authenticate_uri = {ks.url}
        auth_url = {ks.url}
        auth_type = password
        username = {MANILA_USER}
        password = {MANILA_PASSWORD}
        project_name = service
        user_domain_name = Default
        project_domain_name = Default
        region_name = {REGION}
        service_token_roles = service
        service_token_roles_required = true
    """)
    try:
        service.port = manila.start_api("api-keystone", conf, mode="keystone")
        service.service_id = ks.register("sharev2", "manilav2", service.endpoint)
        r = service.request("GET", "/shares")  # keystonemiddleware's first validation
        assert r.status_code == 200, (r.status_code, r.text, manila.log_tail("api-keystone"))
    except BaseException:
        stop_keystone_api(service)
        raise
    service.start_seconds = time.monotonic() - began
    return service


def stop_keystone_api(service: KeystoneManila) -> None:
    """Stop the keystone-mode manila-api, remove its catalog entry and its Keystone user;
    AssertionError if its port still answers."""
    manila, ks = service.manila, service.keystone
    if "api-keystone" in manila.procs:
        manila.stop_api("api-keystone")
    if service.service_id:
        ks.unregister(service.service_id)
    ks.delete_user(service.user_id)
    assert not (service.port and _listening(service.port)), \
        f"something still listens on {service.port}"


def add_cephfs_backend(manila: Manila, ceph: CephCluster) -> None:
    """A second backend on `manila`: its real CephFS native driver (protocol CEPHFS, cephx
    rules) on `ceph`, in its own manila-share process (`share-cephfs`), chosen by the share
    type CEPHFS_TYPE (the dummy backend stays the default type's). Returns once a share of
    that type can be placed on it."""
    keyring = manila.workdir / "ceph.client.manila.keyring"
    keyring.write_text(ceph.ceph("auth", "get-or-create", "client.manila",
                                 "mon", "allow r", "mgr", "allow rw"))
    keyring.chmod(0o600)
    ceph_conf = manila.workdir / "ceph.conf"
    ceph_conf.write_text(f"[global]\nmon host = {ceph.mon_addrs}\n"
                         f"[client.manila]\nkeyring = {keyring}\n")
    conf = manila.workdir / "manila-cephfs.conf"
    manila.write_config(manila.vhost or "", conf, backends="cephfs", extra=f"""
        [cephfs]
        share_driver = manila.share.drivers.cephfs.driver.CephFSDriver
        share_backend_name = cephfs
        driver_handles_share_servers = false
        cephfs_protocol_helper_type = CEPHFS
        cephfs_conf_path = {ceph_conf}
        cephfs_cluster_name = ceph
        cephfs_auth_id = manila
        cephfs_filesystem_name = cephfs
    """)
    manila._spawn("share-cephfs", [str(VENV / "bin/manila-share"), "--config-file", str(conf)])
    manila.create_share_type(CEPHFS_TYPE, backend="cephfs")
    manila.wait_backend("cephfs", "share-cephfs", CEPHFS_TYPE, "CEPHFS")
