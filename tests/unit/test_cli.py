"""The `attachfs` client commands against the real app on a real SQLite database.

The CLI's HTTP client factory is replaced by one returning starlette's TestClient (an
httpx.Client) on the app, so requests go through the whole API without a listening server.
No agent runs: tests move servers and attachments where the agent would (settle_server, rows).
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import inspect
from sqlalchemy.orm import Session
from typer.testing import CliRunner, Result

from attachfs.cli import apiclient as cli_client
from attachfs.cli.main import app
from attachfs.config import Config, load_config
from attachfs.db.tables import Server, ShareMapping
from attachfs.service import Parts, build_api
from tests.conftest import IMAGE, make_image_dir, settle_server

IMAGE_ID = "7d0e2b4e-35a5-5b43-9d9c-2a5d1a0c9e11"


@pytest.fixture
def config(tmp_path: Path) -> Config:
    """SQLite only (overrides the conftest fixture that also runs on PostgreSQL)."""
    return load_config(None, {"state_dir": str(tmp_path / "state"),
                              "images.dir": str(make_image_dir(tmp_path)),
                              "agent.host": "test-host"})


Run = Callable[..., Result]


@pytest.fixture
def cli(parts: Parts, monkeypatch: pytest.MonkeyPatch) -> Iterator[Run]:
    api = build_api(parts)
    seen: list[httpx.Request] = []

    def factory(url: str, timeout: float = 30.0) -> httpx.Client:
        assert url == "http://127.0.0.1:8774"  # the default --url
        http = TestClient(api)
        http.event_hooks = {"request": [seen.append], "response": []}
        return http

    monkeypatch.setattr(cli_client, "make_http_client", factory)
    monkeypatch.setattr(cli_client, "POLL_INTERVAL", 0.02)
    monkeypatch.delenv("ATTACHFS_URL", raising=False)
    runner = CliRunner()

    def run(*args: str, token: str = "alice:p1") -> Result:
        return runner.invoke(app, list(args), env={"ATTACHFS_TOKEN": token})

    yield run
    assert seen, "the CLI made no request"
    for request in seen:
        assert request.headers["OpenStack-API-Version"] == "compute 2.97, attachfs 1.3"
        assert request.headers["X-OpenStack-Nova-API-Version"] == "2.97"


def ok(result: Result) -> Result:
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return result


def as_json(result: Result) -> Any:
    return json.loads(ok(result).stdout)


def make_server(cli: Run, name: str = "vm1", token: str = "alice:p1") -> str:
    shown = as_json(cli("server", "create", name, "--image", IMAGE, "--flavor", "a1.tiny",
                        "-f", "json", token=token))
    return str(shown["id"])


def make_share(cli: Run, name: str = "data", *extra: str) -> str:
    return str(as_json(cli("share", "create", name, "--size", "1", "-f", "json", *extra))["id"])


def agent_once(parts: Parts, when: Callable[[Session], Any],
               act: Callable[[Any], None]) -> threading.Thread:
    """The agent's part, played once the API has accepted the request (`when` finds the row it
    changed): not on a timer, which a loaded machine may beat to the request."""

    def play() -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with parts.db.session() as s:
                row = when(s)
                if row is not None:
                    act(row)
                    return
            time.sleep(0.05)

    thread = threading.Thread(target=play)
    thread.start()
    return thread


def server_in_task(sid: str, task_state: str) -> Callable[[Session], Server | None]:
    def find(s: Session) -> Server | None:
        row = s.get(Server, sid)
        return row if row is not None and row.task_state == task_state else None
    return find


def mapping_in(share_id: str, status: str) -> Callable[[Session], ShareMapping | None]:
    def find(s: Session) -> ShareMapping | None:
        return s.query(ShareMapping).filter_by(share_id=share_id, status=status).first()
    return find


def set_mapping_status(parts: Parts, share_id: str, status: str) -> None:
    with parts.db.session() as s:
        for m in s.query(ShareMapping).filter_by(share_id=share_id):
            m.status = status


# ---- shares --------------------------------------------------------------------------------

def test_share_create_list_show_delete(cli: Run) -> None:
    created = ok(cli("share", "create", "data", "--size", "2", "--mount-point", "/mnt/data"))
    assert "│ name " in created.stdout and "│ data " in created.stdout
    assert "2Gb" in created.stdout and "/mnt/data" in created.stdout
    listed = as_json(cli("share", "list", "-f", "json"))
    assert len(listed) == 1
    share_id = listed[0]["ID"]
    assert listed[0] == {"ID": share_id, "Name": "data", "Size": "2Gb", "Scope": "instance",
                         "Project": "p1", "Status": "available", "Mount Point": "/mnt/data"}
    table = ok(cli("share", "list")).stdout
    assert "Mount Point" in table and share_id in table
    shown = as_json(cli("share", "show", "data", "-f", "json"))
    # an empty share filesystem: df counts its root directory's block
    assert shown["id"] == share_id and shown["used_bytes"] < 64 * 1024 and shown["instances"] == []
    assert as_json(cli("share", "show", share_id, "--format", "json")) == shown  # by id
    assert "used_percent" in ok(cli("share", "show", "data")).stdout
    assert ok(cli("share", "delete", share_id)).stdout == ""
    assert as_json(cli("share", "list", "-f", "json")) == []
    gone = cli("share", "show", "data")
    assert gone.exit_code == 1
    assert gone.stderr.strip() == "Error (HTTP 404): Filesystem data could not be found."
    assert gone.stdout == "" and "Traceback" not in gone.output


def test_share_create_errors(cli: Run) -> None:
    make_share(cli, "data")
    dup = cli("share", "create", "data", "--size", "1")
    assert dup.exit_code == 1
    assert dup.stderr.strip() == "Error (HTTP 409): Filesystem data already exists"
    denied = cli("share", "create", "everyone", "--size", "1", "--scope", "global")
    assert denied.exit_code == 1 and denied.stderr.startswith("Error (HTTP 403): ")
    admin = as_json(cli("share", "create", "everyone", "--size", "1", "--scope", "global",
                        "-f", "json", token="admin:admin"))
    assert admin["scope"] == "global"
    bad = cli("share", "create", "bad name", "--size", "1")
    assert bad.exit_code == 1
    assert bad.stderr.strip() == "Error (HTTP 400): name must be 1-255 characters of [A-Za-z0-9._-]"
    usage = cli("share", "create", "x", "--size", "0")
    assert usage.exit_code == 2 and "--size" in usage.stderr


# ---- servers -------------------------------------------------------------------------------

def test_server_create_list_show(cli: Run, parts: Parts, tmp_path: Path) -> None:
    user_data = tmp_path / "cloud-init"
    user_data.write_bytes(b"#!/bin/sh\necho hello\n")
    created = ok(cli("server", "create", "vm1", "--image", IMAGE, "--flavor", "a1.small",
                     "--property", "role=db", "--property", "tier=a=b",
                     "--user-data", str(user_data)))
    assert "│ name " in created.stdout and " vm1 " in created.stdout
    assert f"{IMAGE} ({IMAGE_ID})" in created.stdout
    assert "a1.small (vcpus=1, ram=256 MiB)" in created.stdout
    assert "BUILD" in created.stdout and "links" not in created.stdout
    rows = as_json(cli("server", "list", "-f", "json"))
    assert len(rows) == 1
    sid = rows[0]["ID"]
    assert rows[0] == {"ID": sid, "Name": "vm1", "Status": "BUILD", "Task State": "spawning",
                       "Image": IMAGE, "Flavor": "a1.small", "Shares": []}
    assert "Task State" in ok(cli("server", "list")).stdout
    shown = as_json(cli("server", "show", "vm1", "-f", "json"))
    assert shown["id"] == sid and shown["metadata"] == {"role": "db", "tier": "a=b"}
    assert shown["OS-EXT-STS:vm_state"] == "building"
    assert as_json(cli("server", "show", sid, "-f", "json"))["name"] == "vm1"
    with parts.db.session() as s:
        row = s.get(Server, sid)
        assert row is not None and row.user_data is not None
        assert base64.b64decode(row.user_data) == b"#!/bin/sh\necho hello\n"


def test_server_create_errors(cli: Run, tmp_path: Path) -> None:
    image = cli("server", "create", "vm1", "--image", "nope", "--flavor", "1")
    assert image.exit_code == 1
    assert image.stderr.strip() == "Error (HTTP 404): Image nope could not be found."
    flavor = cli("server", "create", "vm1", "--image", IMAGE, "--flavor", "huge")
    assert flavor.stderr.strip() == "Error (HTTP 404): Flavor huge could not be found."
    prop = cli("server", "create", "vm1", "--image", IMAGE, "--flavor", "1", "--property", "x")
    assert prop.exit_code == 1
    assert prop.stderr.strip() == "Error: --property expects KEY=VALUE, got 'x'"
    missing = cli("server", "create", "vm1", "--image", IMAGE, "--flavor", "1",
                  "--user-data", str(tmp_path / "absent"))
    assert missing.exit_code == 1 and missing.stderr.startswith("Error: cannot read --user-data")
    assert as_json(cli("server", "list", "-f", "json")) == []


def test_name_resolution(cli: Run) -> None:
    a, b = make_server(cli, "twin"), make_server(cli, "twin")
    make_server(cli, "other")
    ambiguous = cli("server", "show", "twin")
    assert ambiguous.exit_code == 1
    assert ambiguous.stderr.startswith("Error: More than one server exists with the name 'twin'")
    assert a in ambiguous.stderr and b in ambiguous.stderr
    assert as_json(cli("server", "show", b, "-f", "json"))["id"] == b
    assert as_json(cli("server", "show", "other", "-f", "json"))["name"] == "other"
    unknown = cli("server", "show", "ghost")
    assert unknown.exit_code == 1
    assert unknown.stderr.strip() == "Error: No server with a name or ID of 'ghost' exists."
    missing = str(uuid.uuid4())
    absent = cli("server", "show", missing)
    assert absent.exit_code == 1
    assert absent.stderr.strip() == f"Error (HTTP 404): Instance {missing} could not be found."
    # another project sees neither the name nor the id
    assert cli("server", "show", "other", token="bob:p2").exit_code == 1
    hidden = cli("server", "show", a, token="bob:p2")
    assert hidden.stderr.strip() == f"Error (HTTP 404): Instance {a} could not be found."
    # shares: by name or id; unknown name is a clear error
    share_id = make_share(cli, "data")
    assert as_json(cli("share", "show", share_id, "-f", "json"))["name"] == "data"
    nope = cli("server", "add", "share", "other", "nope")
    assert nope.exit_code == 1
    assert nope.stderr.strip() == "Error: No share with a name or ID of 'nope' exists."


def test_power_actions(cli: Run, parts: Parts) -> None:
    sid = make_server(cli)
    settle_server(parts, sid, "active")
    ok(cli("server", "reboot", "vm1", "--hard"))
    shown = as_json(cli("server", "show", "vm1", "-f", "json"))
    assert shown["status"] == "HARD_REBOOT"
    assert shown["OS-EXT-STS:task_state"] == "rebooting_hard"
    busy = cli("server", "stop", "vm1")
    assert busy.exit_code == 1 and busy.stderr.startswith("Error (HTTP 409): Cannot 'stop'")
    settle_server(parts, sid, "active")
    # --wait follows the server until the agent (here: a timer) has stopped it
    def stopped(row: Server) -> None:
        row.vm_state, row.task_state, row.power_intent = "stopped", None, "off"
        row.observed_generation = row.generation

    timer = agent_once(parts, server_in_task(sid, "powering-off"), stopped)
    stopped = ok(cli("server", "stop", "vm1", "--wait", "--timeout", "10"))
    timer.join()
    assert stopped.stderr.strip() == "Server vm1 is SHUTOFF."
    ok(cli("server", "start", sid))
    assert as_json(cli("server", "show", sid, "-f", "json"))["OS-EXT-STS:task_state"] == \
        "powering-on"


def test_wait_reports_error_and_timeout(cli: Run, parts: Parts) -> None:
    sid = make_server(cli)

    def fail(row: Server) -> None:
        row.vm_state, row.task_state, row.fault_message = "error", None, "no kernel"

    settle_server(parts, sid, "stopped")
    timer = agent_once(parts, server_in_task(sid, "powering-on"), fail)
    result = cli("server", "start", "vm1", "--wait", "--timeout", "10")
    timer.join()
    assert result.exit_code == 1
    assert result.stderr.strip() == "Error: server vm1 is in ERROR: no kernel"
    settle_server(parts, sid, "stopped")
    ok(cli("server", "start", "vm1"))
    slow = cli("server", "start", "vm1", "--wait", "--timeout", "0.2")
    assert slow.exit_code == 1
    assert slow.stderr.startswith("Error (HTTP 409): Cannot 'start'")
    settle_server(parts, sid, "stopped")
    timeout = cli("server", "start", "vm1", "--wait", "--timeout", "0.2")
    assert timeout.exit_code == 1
    assert timeout.stderr.strip() == ("Error: timed out after 0.2 s waiting for server vm1 to "
                                      "be ACTIVE (last status: SHUTOFF (powering-on))")


def test_server_delete_wait(cli: Run, parts: Parts) -> None:
    sid = make_server(cli)

    def deleted(row: Server) -> None:
        row.vm_state, row.task_state = "deleted", None

    timer = agent_once(parts, server_in_task(sid, "deleting"), deleted)
    result = ok(cli("server", "delete", "vm1", "--wait", "--timeout", "10"))
    timer.join()
    assert result.stderr.strip() == "Server vm1 is deleted."
    assert as_json(cli("server", "list", "-f", "json")) == []


def test_console(cli: Run, config: Config) -> None:
    sid = make_server(cli)
    assert ok(cli("server", "console", "vm1")).stdout == ""
    (config.console_dir / f"{sid}.log").write_text("boot\nlogin:\nhello\n")
    assert ok(cli("server", "console", "vm1", "--lines", "2")).stdout == "login:\nhello\n"
    assert as_json(cli("server", "console", sid, "-f", "json")) == {
        "output": "boot\nlogin:\nhello\n"}


# ---- attachments ---------------------------------------------------------------------------

def test_add_list_show_remove_share(cli: Run, parts: Parts) -> None:
    sid = make_server(cli)
    share_id = make_share(cli, "data")
    running = cli("server", "add", "share", "vm1", "data")
    assert running.exit_code == 1
    assert running.stderr.strip() == (f"Error (HTTP 409): Cannot 'create share' instance {sid} "
                                      "while it is in vm_state building")
    settle_server(parts, sid, "stopped")
    added = ok(cli("server", "add", "share", "vm1", "data", "--tag", "data"))
    assert "attaching" in added.stdout and share_id in added.stdout
    listed = as_json(cli("server", "share", "list", "vm1", "-f", "json"))
    assert listed == [{"Share ID": share_id, "Name": "data", "Status": "attaching",
                       "Tag": "data"}]
    table = ok(cli("server", "share", "list", sid)).stdout
    assert "Share ID" in table and "attaching" in table
    admin = as_json(cli("server", "share", "show", sid, "data", "-f", "json", token="admin:admin"))
    assert set(admin) == {"share_id", "status", "tag", "uuid", "export_location", "read_only",
                          "transport", "mount"}
    shown = as_json(cli("server", "share", "show", "vm1", share_id, "-f", "json"))
    assert shown == {"share_id": share_id, "status": "attaching", "tag": "data",
                     "read_only": False, "transport": "virtiofs",
                     "mount": "mount -t virtiofs -o rw data /mnt/data"}
    assert as_json(cli("server", "list", "-f", "json"))[0]["Shares"] == ["data"]
    assert as_json(cli("share", "show", "data", "-f", "json"))["instances"] == [
        {"id": sid, "status": "attaching"}]
    again = cli("server", "add", "share", "vm1", "data")
    assert again.exit_code == 1 and again.stderr.strip() == (
        f"Error (HTTP 409): Share '{share_id}' or tag '{share_id}' already associated to this "
        "server.")
    in_use = cli("share", "delete", "data")
    assert in_use.stderr.strip() == (f"Error (HTTP 409): Filesystem data is attached to server "
                                     f"{sid}; detach it first")
    set_mapping_status(parts, share_id, "inactive")  # what the agent does
    ok(cli("server", "remove", "share", "vm1", "data"))
    assert as_json(cli("server", "share", "show", "vm1", "data", "-f", "json"))["status"] == \
        "detaching"
    other = make_share(cli, "other")
    absent = cli("server", "share", "show", "vm1", "other")
    assert absent.exit_code == 1
    assert absent.stderr.strip() == f"Error (HTTP 404): Share {other} could not be found."


def test_add_share_with_transport_and_read_only(cli: Run, parts: Parts) -> None:
    sid = make_server(cli)
    settle_server(parts, sid, "stopped")
    ninep = make_share(cli, "ninep")
    nine = as_json(cli("server", "add", "share", "vm1", "ninep", "--transport", "9p",
                       "--read-only", "-f", "json"))
    assert (nine["transport"], nine["read_only"]) == ("9p", True)
    assert as_json(cli("server", "share", "show", "vm1", ninep, "-f", "json"))["mount"] == (
        f"mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,ro {ninep} /mnt/{ninep}")
    bad = cli("server", "add", "share", "vm1", "ninep", "--transport", "nfs")
    assert bad.exit_code == 1 and "HTTP 409" in bad.stderr


def test_add_and_remove_share_wait(cli: Run, parts: Parts) -> None:
    sid = make_server(cli)
    settle_server(parts, sid, "stopped")
    share_id = make_share(cli, "data")
    def attached(row: ShareMapping) -> None:
        row.status = "inactive"

    timer = agent_once(parts, mapping_in(share_id, "attaching"), attached)
    added = cli("server", "add", "share", "vm1", share_id, "--wait", "--timeout", "10",
                "-f", "json")
    timer.join()
    assert json.loads(ok(added).stdout) == {"share_id": share_id, "status": "inactive",
                                            "tag": share_id, "read_only": False,
                                            "transport": "virtiofs"}
    assert added.stderr.strip() == f"Share {share_id} on server vm1 is attached (inactive)."

    def detached(row: ShareMapping) -> None:
        inspect(row).session.delete(row)

    timer = agent_once(parts, mapping_in(share_id, "detaching"), detached)
    removed = ok(cli("server", "remove", "share", "vm1", "data", "--wait", "--timeout", "10"))
    timer.join()
    assert removed.stderr.strip() == "Share data on server vm1 is detached."
    assert as_json(cli("server", "share", "list", "vm1", "-f", "json")) == []
    # nothing moves it: --wait gives up, the attachment failing is reported
    make_share(cli, "slow")
    slow = cli("server", "add", "share", "vm1", "slow", "--wait", "--timeout", "0.2")
    assert slow.exit_code == 1
    assert slow.stderr.strip() == ("Error: timed out after 0.2 s waiting for slow on server "
                                   "vm1 to be attached (last status: attaching)")
    failing = make_share(cli, "failing")
    def failed_attach(row: ShareMapping) -> None:
        row.status = "error"

    timer = agent_once(parts, mapping_in(failing, "attaching"), failed_attach)
    failed = cli("server", "add", "share", "vm1", "failing", "--wait", "--timeout", "10")
    timer.join()
    assert failed.exit_code == 1
    assert failed.stderr.startswith("Error: the attachment of failing on server vm1 is in error")


# ---- connection and local commands ----------------------------------------------------------

def test_connection_refused() -> None:
    result = CliRunner().invoke(app, ["--url", "http://127.0.0.1:1", "server", "list"])
    assert result.exit_code == 1
    assert result.stderr.startswith(
        "Error: cannot connect to the attachfs API at http://127.0.0.1:1")
    assert "Traceback" not in result.output and result.stdout == ""


def test_image_list(tmp_path: Path) -> None:
    dest = make_image_dir(tmp_path)
    result = CliRunner().invoke(app, ["image", "list", "--dest", str(dest), "-f", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [{"ID": IMAGE_ID, "Name": IMAGE,
                                          "Directory": str(dest / IMAGE),
                                          "Cmdline": "console=ttyS0"}]


def test_serve_bad_configuration(tmp_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(app, ["serve", "--config", str(tmp_path / "absent.toml")])
    assert missing.exit_code == 1
    assert missing.stderr.startswith(f"Error: cannot read config file {tmp_path}/absent.toml")
    listen = runner.invoke(app, ["serve", "--state-dir", str(tmp_path), "--listen", "nowhere"])
    assert listen.exit_code == 1
    assert listen.stderr.strip() == "Error: --listen must be HOST:PORT, got 'nowhere'"
    (tmp_path / "bad.toml").write_text("[api]\nnope = 1\n")
    bad = runner.invoke(app, ["agent", "--config", str(tmp_path / "bad.toml")])
    assert bad.exit_code == 1 and bad.stderr.startswith("Error: invalid configuration")
