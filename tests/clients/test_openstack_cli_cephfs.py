"""The unchanged `openstack` CLI, with password auth as a project member, attaches a CEPHFS share
end to end in a small real cloud: a real Keystone (tests/keystone_fixture.py), a real Manila in
its catalog (keystone mode, Manila's real CephFS driver on a real Ceph:
tests/manila_fixture.py `manila_keystone`, `manila_cephfs`; tests/ceph_fixture.py), and a real
`attachfs serve` (api.auth_strategy = "keystone", storage.provider = "manila" through the
catalog) registered in the catalog as the compute service (harness/cloud.py).

Every step a user takes is an `openstack` command (harness/openstack_cli.py): share create
(through Manila), server create, server add share on the running server (hot attach), server
share list/show, console log show, server remove share, server delete, share delete. What the
guest reads and writes is checked against Ceph itself through a separate admin ceph-fuse mount
of the share's path (never the agent's host mount); after the detach, Manila has no rule left,
the cephx ID is gone from Ceph, and no ceph-fuse or host mount is left. One guest.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from harness.ceph import CephCluster
from harness.cloud import attachfs_in_catalog, manila_client_user, serve_config
from harness.keystone import PASSWORD, REGION, Keystone
from harness.manila import CEPHFS_TYPE, KeystoneManila, Manila
from harness.openstack_cli import Cli, password_clouds_yaml
from tests.ceph_fixture import CEPH_TEST
from tests.manila.test_cephfs_guest import GUEST_LOOP, ceph_fuse_pids
from tests.vm.harness import GUEST_TEST, Serve, serving, wait_for

pytestmark = [pytest.mark.manila, pytest.mark.keystone, *CEPH_TEST, *GUEST_TEST,
              pytest.mark.filterwarnings("ignore:The 'service_type' parameter is unnecesary")]
HOST = "clicephhost"  # the agent's host: its cephx ID is attachfs-<host>, cluster-wide
AUTH_ID = f"attachfs-{HOST}"
USER, PROJECT = "a_member", "A"
SERVER, SHARE, TAG = "clicephvm", "clicephfs", "ceph"
LOOP_NAME = "clicephvm"  # what the guest loop answers to (ping-NAME -> pong-NAME)


@dataclass
class CephCloud:
    keystone: Keystone
    manila: KeystoneManila  # as Keystone's admin: Manila's own view of rules
    ceph: CephCluster
    serve: Serve
    cli: Cli  # a_member of project A, password auth, everything from the catalog


@pytest.fixture
def cloud(keystone: Keystone, manila_keystone: KeystoneManila, manila_cephfs: Manila,
          ceph_cluster: CephCluster, openstack_exe: Path,
          tmp_path: Path) -> Iterator[CephCloud]:
    with manila_client_user(keystone), \
            serving(config=serve_config(keystone, HOST), prefix="clicephfs-") as serve:
        # Serve's client sends a noauth token; this attachfs wants a real one (used only to
        # delete a server a failed step left: every step of the test is an `openstack` command)
        serve.http.headers["X-Auth-Token"] = keystone.token(USER)
        with attachfs_in_catalog(keystone, serve.url):
            clouds = password_clouds_yaml(tmp_path, keystone.v3, USER, PASSWORD, PROJECT,
                                          REGION)
            yield CephCloud(keystone, manila_keystone, ceph_cluster, serve,
                            Cli(openstack_exe, clouds))


def report(what: str, seconds: float) -> None:
    sys.stderr.write(f"[openstack cli + cephfs] {what}: {seconds:.1f}s\n")


def console(cli: Cli) -> str:
    return cli.ok("console", "log", "show", SERVER)


def wait_console(cli: Cli, text: str, timeout: float = 120) -> str:
    def shows() -> str | None:
        out = console(cli)
        return out if text in out else None
    return wait_for(f"console line {text!r}", shows, timeout, interval=1.0)


def share_available(cli: Cli) -> dict[str, Any] | None:
    share: dict[str, Any] = cli.json("share", "show", SHARE)
    assert share["status"] in ("creating", "available"), share
    return share if share["status"] == "available" else None


def attachment_status(cli: Cli) -> list[str]:
    return [a["Status"] for a in cli.json("server", "share", "list", SERVER)]


def test_openstack_cli_attaches_a_cephfs_share_with_keystone(cloud: CephCloud,
                                                             tmp_path: Path) -> None:
    c, cli = cloud, cloud.cli
    began = time.monotonic()
    share_id = server_id = ""
    try:
        # the share, made through Manila (found in the catalog) by the member
        created = cli.json("share", "create", "CEPHFS", "1", "--share-type", CEPHFS_TYPE,
                           "--name", SHARE)
        share_id = created["id"]
        shown = wait_for("the share available", lambda: share_available(cli), 120, 1.0)
        assert (shown["share_proto"], shown["size"], shown["project_id"]) == (
            "CEPHFS", 1, c.keystone.project_ids[PROJECT])
        (location,) = cli.json("share", "export", "location", "list", SHARE)
        mons, path = location["Path"].rsplit(":", 1)
        assert mons == c.ceph.mon_host and path.startswith("/volumes/"), location

        user_data = tmp_path / "user-data.sh"
        user_data.write_text(GUEST_LOOP.replace("NAME", LOOP_NAME))
        server = cli.json("server", "create", "--flavor", "2", "--image", "debian-busybox",
                          "--nic", "none", "--user-data", str(user_data), "--wait", SERVER,
                          timeout=240)
        server_id = server["id"]
        assert server["status"] == "ACTIVE"
        wait_console(cli, "ping loop started")
        booted = time.monotonic()

        # hot attach on the running server, by name, as the CLI does it
        added = cli.json("server", "add", "share", SERVER, SHARE, "--tag", TAG)
        assert added == {"Share ID": share_id, "Status": "attaching", "Tag": TAG}
        wait_for("the attachment active", lambda: attachment_status(cli) == ["active"], 120,
                 interval=1.0)
        attached = time.monotonic()
        assert cli.json("server", "share", "show", SERVER, SHARE) == {
            "Share ID": share_id, "Status": "active", "Tag": TAG}
        (rule,) = c.manila.rules(share_id)
        assert (rule["access_type"], rule["access_to"], rule["state"]) == (
            "cephx", AUTH_ID, "active")
        assert rule["metadata"] == {"attachfs_host": HOST}
        assert c.ceph.auth_exists(AUTH_ID)
        assert len(ceph_fuse_pids(c.serve.state_dir)) == 1

        # the guest reads a file written in Ceph and writes one Ceph has: an admin mount of
        # the share's path (Ceph itself, not the agent's host mount)
        with c.ceph.fuse_mount(path, tmp_path / "admin", "admin", c.ceph.admin_key) as admin:
            (admin.mountpoint / "from-ceph.txt").write_text("written-in-ceph\n")
            token = uuid.uuid4().hex
            (admin.mountpoint / f"ping-{LOOP_NAME}").write_text(token + "\n")
            pong = admin.mountpoint / f"pong-{LOOP_NAME}"
            wait_for("the guest's pong in Ceph", lambda: pong.exists() and pong.read_text()
                     .split() == [token, "written-in-ceph"], 90)
        out = wait_console(cli, "df-ceph:")
        line = next(x for x in out.splitlines() if x.startswith("df-ceph:"))
        assert line.split()[2] == str(1024 * 1024), line  # the share's 1 GiB, in 1K blocks
        assert f"pong {token} from /mnt/{TAG}" in console(cli)
        roundtrip = time.monotonic()

        # detach: the guest lets go, the host unmounts, Manila's rule and the cephx ID go
        cli.ok("server", "remove", "share", SERVER, SHARE)
        wait_for("the attachment gone", lambda: attachment_status(cli) == [], 120, interval=1.0)
        wait_for("the rule gone in Manila", lambda: c.manila.rules(share_id) == [], 60)
        wait_for("the cephx ID gone in Ceph", lambda: not c.ceph.auth_exists(AUTH_ID), 60)
        wait_for("no host mount", lambda: c.serve.host_mounts() == [], 30)
        wait_for("ceph-fuse gone", lambda: ceph_fuse_pids(c.serve.state_dir) == [], 30)
        assert cli.json("share", "access", "list", SHARE) == []
        detached = time.monotonic()

        cli.ok("server", "delete", "--wait", SERVER, timeout=180)
        server_id = ""
        cli.ok("share", "delete", "--wait", SHARE, timeout=120)
        share_id = ""
        assert "No share with a name or ID" in cli.fails("share", "show", SHARE)
        report("share + server (boot)", booted - began)
        report("server add share -> active", attached - booted)
        report("guest read and write through Ceph", roundtrip - attached)
        report("server remove share -> rule and cephx ID gone", detached - roundtrip)
        report("whole flow", time.monotonic() - began)
    finally:
        if server_id:  # whatever state the test left it in, through the API
            c.serve.http.delete(f"/v2.1/servers/{server_id}")
            c.serve.wait_gone(server_id, timeout=120)
        if share_id:
            c.manila.request("DELETE", f"/shares/{share_id}")
