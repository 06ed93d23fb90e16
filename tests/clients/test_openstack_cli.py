"""The real `openstack` command (python-openstackclient 10 + python-manilaclient, installed in
.venv-clients by scripts/setup-clients.sh) against attachfs, with the clouds.yaml that
docs/openstack-cli.md gives: auth_type none and endpoint overrides, no Keystone.

Two tests: one against the API alone (no guest: the server is put in SHUTOFF as the API tests
do, so attachments stay `attaching`), and one against a real `attachfs serve` that boots a guest
(marked vm), where the agent carries every step through.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from attachfs.config import load_config
from attachfs.service import build_api, open_parts
from harness.openstack_cli import Cli, noauth_clouds_yaml
from tests.conftest import make_image_dir, settle_server
from tests.vm.harness import IMAGES_DIR, Serve, free_port, serving, wait_for


def _check_share_commands(cli: Cli, storage_root: Path) -> dict[str, Any]:
    """share create / list / show, and the protocol refusal (built-in shares are LOCAL or NFS):
    the same with or without a guest."""
    share = cli.json("share", "create", "LOCAL", "1", "--name", "clishare")
    assert (share["name"], share["status"], share["share_proto"], share["size"]) == (
        "clishare", "available", "LOCAL", 1)
    assert (storage_root / share["id"]).is_dir()
    err = cli.fails("share", "create", "CEPHFS", "1", "--name", "cephshare")
    assert "protocol LOCAL" in err and "HTTP 400" in err
    listed = cli.json("share", "list")
    assert [(s["ID"], s["Name"], s["Share Proto"], s["Status"]) for s in listed] == [
        (share["id"], "clishare", "LOCAL", "available")]
    shown = cli.json("share", "show", "clishare")
    assert shown["id"] == share["id"] and shown["project_id"] == "demo"
    assert f"path = local:{storage_root / share['id']}" in shown["export_locations"]
    assert cli.json("share", "list", "--name~", "clish")[0]["ID"] == share["id"]
    return share


# ---- without a guest: the API alone, in this process ------------------------------------------
@pytest.fixture
def api_only(tmp_path: Path) -> Iterator[tuple[str, Any]]:
    config = load_config(None, {"state_dir": str(tmp_path / "state"),
                                "images.dir": str(make_image_dir(tmp_path)),
                                "agent.host": "test-host"})
    parts = open_parts(config)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(build_api(parts), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for("the API to listen", lambda: server.started, timeout=20, interval=0.05)
    try:
        yield f"http://127.0.0.1:{port}", parts
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        parts.db.dispose()


def test_cli_against_the_api(openstack_exe: Path, api_only: tuple[str, Any],
                             tmp_path: Path) -> None:
    url, parts = api_only
    cli = Cli(openstack_exe, noauth_clouds_yaml(tmp_path, url))
    share = _check_share_commands(cli, parts.config.storage_root)

    created = cli.json("server", "create", "--flavor", "1", "--image", "debian-busybox",
                       "--nic", "none", "clivm")
    sid = created["id"]
    assert created["status"] == "BUILD"
    settle_server(parts, sid)  # no agent here: where it would leave a stopped server
    assert [(s["ID"], s["Name"], s["Status"], s["Image"]) for s in cli.json("server", "list")] \
        == [(sid, "clivm", "SHUTOFF", "debian-busybox")]
    shown = cli.json("server", "show", "clivm")
    assert (shown["id"], shown["status"], shown["project_id"]) == (sid, "SHUTOFF", "demo")

    added = cli.json("server", "add", "share", "clivm", "clishare", "--tag", "clitag")
    assert added == {"Share ID": share["id"], "Status": "attaching", "Tag": "clitag"}
    assert cli.json("server", "share", "list", "clivm") == [added]
    assert cli.json("server", "share", "show", "clivm", "clishare") == added
    err = cli.fails("share", "delete", "clishare")
    assert "HTTP 409" in err and sid in err
    # the compute service's rules show through the CLI: detach is honoured even while the
    # attachment is still in flight (no agent here to finish it); a second attach is a 409
    err = cli.fails("server", "add", "share", "clivm", "clishare")
    assert "409" in err and f"Share '{share['id']}' or tag" in err
    cli.ok("server", "remove", "share", "clivm", "clishare")
    assert cli.json("server", "share", "list", "clivm")[0]["Status"] == "detaching"


# ---- with a guest: a real `attachfs serve` -------------------------------------------------
@pytest.fixture
def serve() -> Iterator[Serve]:
    with serving(prefix="cli-") as s:
        s.http.headers["X-Auth-Token"] = "demo:demo"  # the project auth_type none lands in
        yield s


@pytest.mark.vm
@pytest.mark.timeout(300)
@pytest.mark.skipif(os.geteuid() != 0, reason="libvirt guests and host mounts need root")
@pytest.mark.skipif(not (IMAGES_DIR / "debian-busybox" / "image.json").exists(),
                    reason="guest image missing: run `make setup`")
def test_cli_end_to_end(openstack_exe: Path, serve: Serve, tmp_path: Path) -> None:
    cli = Cli(openstack_exe, noauth_clouds_yaml(tmp_path, serve.url))
    storage_root = serve.state_dir / "shares"
    sid = ""
    try:
        share = _check_share_commands(cli, storage_root)
        created = cli.json("server", "create", "--flavor", "1", "--image", "debian-busybox",
                           "--nic", "none", "--wait", "clivm")
        sid = created["id"]
        assert created["status"] == "ACTIVE"
        listed = cli.json("server", "list")
        assert [(s["ID"], s["Name"], s["Status"]) for s in listed] == [(sid, "clivm", "ACTIVE")]
        cli.ok("server", "stop", "clivm")
        serve.wait_status(sid, "SHUTOFF", timeout=60)
        shown = cli.json("server", "show", "clivm")
        assert (shown["id"], shown["status"], shown["OS-EXT-STS:vm_state"]) == (
            sid, "SHUTOFF", "stopped")

        added = cli.json("server", "add", "share", "clivm", "clishare", "--tag", "clitag")
        assert added == {"Share ID": share["id"], "Status": "attaching", "Tag": "clitag"}
        # the agent grants access and records the attachment: inactive on a stopped server
        wait_for("the attachment to be inactive",
                 lambda: cli.json("server", "share", "list", "clivm")[0]["Status"] == "inactive",
                 timeout=60, interval=0.5)
        assert cli.json("server", "share", "show", "clivm", "clishare") == {
            "Share ID": share["id"], "Status": "inactive", "Tag": "clitag"}
        err = cli.fails("share", "delete", "clishare")
        assert "HTTP 409" in err and "detach it first" in err

        cli.ok("server", "remove", "share", "clivm", "clishare")
        wait_for("the attachment to go",
                 lambda: cli.json("server", "share", "list", "clivm") == [], timeout=60,
                 interval=0.5)
        cli.ok("share", "delete", "clishare")
        assert cli.json("share", "list") == []
        assert not (storage_root / share["id"]).exists()
        assert "No share with a name or ID" in cli.fails("share", "show", "clishare")
    finally:
        if sid:  # through the API, whatever state the test left it in
            serve.http.delete(f"/v2.1/servers/{sid}")
            serve.wait_gone(sid, timeout=60)
