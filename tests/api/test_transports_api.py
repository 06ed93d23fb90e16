"""Issue 11 at the API: the transport of an attachment (attachfs 1.3), checked before anything
changes; mount_info; the metadata devices' extension keys; the config drive's extended file."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from attachfs.config import load_config
from attachfs.db.tables import Server, ShareMapping
from attachfs.metadata.app import config_drive_files, make_app
from attachfs.service import Parts, build_api, open_parts
from tests.conftest import create_server, create_share, make_image_dir, settle_server

EXT = {"OpenStack-API-Version": "compute 2.97, attachfs 1.3"}


def _attach(client: TestClient, sid: str, share_id: object, **fields: Any) -> Any:
    return client.post(f"/v2.1/servers/{sid}/shares", headers=EXT,
                       json={"share": {"share_id": share_id, **fields}})


def _stopped(client: TestClient, parts: Parts, **extra: object) -> str:
    sid = create_server(client, **extra)
    settle_server(parts, sid, "stopped")
    return sid


def _rows(parts: Parts) -> list[tuple[str, str]]:
    with parts.db.session() as s:
        return [(m.tag, m.transport) for m in s.query(ShareMapping).order_by(ShareMapping.id)]


def test_transport_in_body_and_view(client: TestClient, parts: Parts) -> None:
    sid = _stopped(client, parts)
    share = create_share(client)
    r = _attach(client, sid, share["id"], tag="nine", transport="9p", read_only=True)
    assert r.status_code == 201, r.text
    assert r.json()["share"]["transport"] == "9p"
    shown = client.get(f"/v2.1/servers/{sid}/shares/{share['id']}", headers=EXT).json()
    assert shown["share"]["transport"] == "9p"
    # a 2.97 client sees the compute service's keys only
    plain = client.get(f"/v2.1/servers/{sid}/shares/{share['id']}").json()["share"]
    assert "transport" not in plain
    assert _rows(parts) == [("nine", "9p")]


def test_transport_needs_the_extension_and_a_known_value(client: TestClient,
                                                         parts: Parts) -> None:
    sid = _stopped(client, parts)
    share = create_share(client)
    r = client.post(f"/v2.1/servers/{sid}/shares",
                    json={"share": {"share_id": share["id"], "transport": "9p"}})
    assert r.status_code == 400, r.text  # 2.97's schema has no such field
    for bad in ("nfs3", "", "VIRTIOFS", 9, None):
        r = _attach(client, sid, share["id"], transport=bad)
        assert r.status_code == 400, (bad, r.text)
        assert "transport" in r.json()["badRequest"]["message"]
    assert _rows(parts) == []


@contextmanager
def _configured(tmp_path: Path, **settings: object) -> Iterator[tuple[TestClient, Parts]]:
    """An app on its own config (SQLite) with `settings` (dotted keys) over the defaults."""
    config = load_config(None, {"state_dir": str(tmp_path / "state"),
                                "images.dir": str(make_image_dir(tmp_path)), **settings})
    parts = open_parts(config)
    try:
        with TestClient(build_api(parts)) as client:
            client.headers.update({"X-Auth-Token": "alice:p1", **EXT})
            yield client, parts
    finally:
        parts.db.dispose()
        parts.builtin.volumes.unmount_all()


def test_a_transport_the_host_does_not_offer_is_409(tmp_path: Path) -> None:
    with _configured(tmp_path, **{"agent.share_transports": ["virtiofs", "nfs"]}) as (
            client, parts):
        sid = _stopped(client, parts)
        share = create_share(client)
        r = _attach(client, sid, share["id"], transport="9p")
        assert r.status_code == 409, r.text
        assert r.json()["conflictingRequest"]["message"] == (
            "Transport 9p is not available on this host (it offers: nfs, virtiofs).")
        assert _rows(parts) == []


def test_9p_on_a_running_server_is_409_both_ways(client: TestClient, parts: Parts) -> None:
    sid = create_server(client)
    settle_server(parts, sid, "active")
    share = create_share(client)
    r = _attach(client, sid, share["id"], transport="9p")
    assert r.status_code == 409, r.text
    assert "cannot be hot-plugged" in r.json()["conflictingRequest"]["message"]
    assert _rows(parts) == []
    # attached while stopped, running now: detach is refused too, the row stays as it was
    settle_server(parts, sid, "stopped")
    assert _attach(client, sid, share["id"], transport="9p").status_code == 201
    settle_server(parts, sid, "active")
    with parts.db.session() as s:
        s.query(ShareMapping).update({"status": "active"})
    r = client.delete(f"/v2.1/servers/{sid}/shares/{share['id']}")
    assert r.status_code == 409, r.text
    with parts.db.session() as s:
        assert [m.status for m in s.query(ShareMapping)] == ["active"]
    # virtio-fs on the same running server is fine
    other = create_share(client)
    assert _attach(client, sid, other["id"]).status_code == 201


def test_the_flavor_then_the_operator_choose(client: TestClient, parts: Parts) -> None:
    sid = _stopped(client, parts, flavorRef="a1.small.9p")
    a, b = create_share(client), create_share(client)
    assert _attach(client, sid, a["id"], tag="a").json()["share"]["transport"] == "9p"
    assert _attach(client, sid, b["id"], tag="b",
                   transport="virtiofs").json()["share"]["transport"] == "virtiofs"
    flavor = client.get("/v2.1/flavors/5").json()["flavor"]
    assert flavor["extra_specs"] == {"attachfs:share_transport": "9p"}


def test_containers_take_bind_and_vms_never(client: TestClient, parts: Parts) -> None:
    box = _stopped(client, parts, flavorRef="c1.small")
    vm = _stopped(client, parts)
    a, b = create_share(client), create_share(client)
    r = _attach(client, box, a["id"], transport="9p")
    assert r.status_code == 409 and "bind mounts" in r.text, r.text
    assert _attach(client, box, a["id"]).json()["share"]["transport"] == "bind"
    r = _attach(client, vm, b["id"], transport="bind")
    assert r.status_code == 409 and "containers only" in r.text, r.text
    info = client.get(f"/v2.1/servers/{box}/shares/{a['id']}/mount_info").json()["mount_info"]
    assert info["target"] == f"/mnt/{a['id']}" and info["options"] == "rw,nosuid,nodev"


def test_the_operator_default(tmp_path: Path) -> None:
    with _configured(tmp_path, **{"agent.share_transport": "9p"}) as (client, parts):
        sid = _stopped(client, parts)
        share = create_share(client)
        assert _attach(client, sid, share["id"]).json()["share"]["transport"] == "9p"


def test_mount_info(client: TestClient, parts: Parts) -> None:
    sid = _stopped(client, parts)
    a, b = create_share(client), create_share(client)
    assert _attach(client, sid, a["id"], tag="data").status_code == 201
    assert _attach(client, sid, b["id"], tag="nine", transport="9p", read_only=True).status_code \
        == 201
    info = client.get(f"/v2.1/servers/{sid}/shares/{a['id']}/mount_info").json()["mount_info"]
    assert info == {"transport": "virtiofs", "fstype": "virtiofs", "source": "data",
                    "options": "rw", "target": "/mnt/data",
                    "command": "mount -t virtiofs -o rw data /mnt/data"}
    info = client.get(f"/v2.1/servers/{sid}/shares/{b['id']}/mount_info").json()["mount_info"]
    assert info["command"] == ("mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,ro "
                               "nine /mnt/nine")
    # not attached, not a uuid, another project's server: 404s; unknown query: 400
    other = create_share(client)
    assert client.get(f"/v2.1/servers/{sid}/shares/{other['id']}/mount_info").status_code == 404
    assert client.get(f"/v2.1/servers/{sid}/shares/x/mount_info").status_code == 404
    assert client.get(f"/v2.1/servers/{sid}/shares/{a['id']}/mount_info",
                      headers={"X-Auth-Token": "bob:p2"}).status_code == 404
    assert client.get(f"/v2.1/servers/{sid}/shares/{a['id']}/mount_info?x=1").status_code == 400


def test_metadata_devices_say_how_only_when_asked(client: TestClient, parts: Parts) -> None:
    sid = _stopped(client, parts)
    share = create_share(client)
    assert _attach(client, sid, share["id"], tag="nine", transport="9p").status_code == 201
    with parts.db.session() as s:
        s.query(ShareMapping).update({"status": "inactive"})
    guest = TestClient(make_app(parts.db, sid))
    plain = guest.get("/openstack/latest/meta_data.json").json()["devices"]
    assert plain == [{"type": "share", "share_id": share["id"], "tag": "nine", "bus": "none",
                      "address": "none"}]
    (device,) = guest.get("/openstack/latest/meta_data.json?attachfs=1").json()["devices"]
    assert {k: v for k, v in device.items() if k.startswith("attachfs:")} == {
        "attachfs:transport": "9p", "attachfs:fstype": "9p", "attachfs:source": "nine",
        "attachfs:options": "trans=virtio,version=9p2000.L,msize=512000",
        "attachfs:target": "/mnt/nine"}
    with parts.db.session() as s:
        server = s.get(Server, sid)
        mappings = list(s.query(ShareMapping))
        files = config_drive_files(server, mappings)  # type: ignore[arg-type]
    assert "attachfs:fstype" not in files["openstack/latest/meta_data.json"].decode()
    extended = json.loads(files["attachfs/meta_data.json"])
    assert extended["devices"][0]["attachfs:fstype"] == "9p"


def test_direct_needs_a_builtin_nfs_share(client: TestClient, parts: Parts) -> None:
    sid = _stopped(client, parts)
    local = create_share(client)
    r = _attach(client, sid, local["id"], transport="direct")
    assert r.status_code == 409, r.text
    assert r.json()["conflictingRequest"]["message"] == (
        f"Transport direct needs a share served over NFS by this host (a built-in share of "
        f"protocol NFS); share {local['id']} is not one.")
    r = client.post("/share/v2/shares", headers={"X-OpenStack-Manila-API-Version": "2.98"},
                    json={"share": {"share_proto": "NFS", "size": 1}})
    nfs = r.json()["share"]["id"]
    assert _attach(client, sid, nfs, transport="direct").status_code == 201
    info = client.get(f"/v2.1/servers/{sid}/shares/{nfs}/mount_info").json()["mount_info"]
    assert (info["fstype"], info["source"]) == ("nfs4", f"169.254.169.254:/share-{nfs}")
    assert _rows(parts) == [(nfs, "direct")]


def test_the_transport_is_checked_against_the_servers_own_host(tmp_path: Path) -> None:
    """Many hosts: what the server's host registered decides, not the API's configuration."""
    from attachfs.agent import hosts

    with _configured(tmp_path, **{"agent.share_transports": ["virtiofs", "9p"]}) as (
            client, parts):
        only_virtiofs = parts.config.model_copy(update={"agent": parts.config.agent.model_copy(
            update={"share_transports": ["virtiofs"]})})
        hosts.register(parts.db, only_virtiofs)
        sid = _stopped(client, parts)
        share = create_share(client)
        r = _attach(client, sid, share["id"], transport="9p")
        assert r.status_code == 409, r.text
        message = r.json()["conflictingRequest"]["message"]
        assert message.startswith("Transport 9p is not available on this host (it offers: ")
        assert "virtiofs" in message and "9p" not in message.split("offers:")[1], message
        assert _attach(client, sid, share["id"], transport="virtiofs").status_code == 201
