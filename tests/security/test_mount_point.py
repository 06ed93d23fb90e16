"""Issue 7 finding 6: `mount_point` is checked at the API, in one place (core/validation.py),
by every API that takes one; a refusal is a 400 in the compute API's fault body that names the
rule, and leaves nothing behind."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from attachfs.core.validation import RESERVED_TOP, mount_point_problem, validate_mount_point
from attachfs.db.tables import Share, ShareMapping
from attachfs.errors import BadRequest
from attachfs.service import Parts
from tests.conftest import create_server, create_share, settle_server

VALID = ["/mnt/data", "/mnt/my-share_1", "/srv/a.b+c@d-e_f", "/data", "/home", "/home/alice",
         "/net/mymount", "/mnt/--", "/srv/" + "x" * 250, "/opt/app/.cache", "/mnt/..x",
         "/media/usb0", "/library", "/var0", "/procfs-data"]

# (mount point, words the 400 must contain)
INVALID = [
    ("", "non-empty"), ("relative/path", "absolute"), ("/", "root"), ("/mnt/x/", "end with /"),
    ("/mnt//x", "//"), ("/mnt/./x", "normalized"), ("/mnt/../etc", "normalized"),
    ("/..", "normalized"), ("/mnt/a b", "letters, digits"), ("/mnt/a\tb", "letters, digits"),
    ("/mnt/a\nb", "letters, digits"), ("/mnt/a\x00b", "letters, digits"),
    ("/mnt/a\x7fb", "letters, digits"), ("/mnt/a\\b", "letters, digits"),
    ("/mnt/é", "letters, digits"), ("/mnt/$(id)", "letters, digits"), ("/mnt/*", "letters"),
    ("/mnt/" + "x" * 251, "at most 255 bytes"),
    *[(f"/{top}", f"under /{top}") for top in sorted(RESERVED_TOP)],
    ("/proc/sys/kernel", "under /proc"), ("/run/attachfs", "under /run"),
    ("/usr/local/share", "under /usr"), ("/lib64/x", "under /lib64"), ("/tmp/x", "under /tmp"),
]


@pytest.mark.parametrize("path", VALID)
def test_valid_mount_points(path: str) -> None:
    assert mount_point_problem(path) is None
    assert validate_mount_point(path) == path


@pytest.mark.parametrize("path, words", INVALID)
def test_invalid_mount_points_name_the_rule(path: str, words: str) -> None:
    problem = mount_point_problem(path)
    assert problem is not None and words in problem, problem
    with pytest.raises(BadRequest, match="mount_point"):
        validate_mount_point(path)


def test_not_a_string_is_refused() -> None:
    assert mount_point_problem(7) is not None  # type: ignore[arg-type]
    assert validate_mount_point(None) is None  # not given: the guest uses /mnt/<tag>


def _counts(parts: Parts) -> tuple[int, int, int]:
    with parts.db.read() as s:
        shares, mappings = s.query(Share).count(), s.query(ShareMapping).count()
    return shares, mappings, len(list(parts.config.storage_root.iterdir()))


@pytest.mark.parametrize("path, words", INVALID[:20:3] + [("/run/attachfs", "under /run")])
def test_every_api_refuses_with_a_fault_and_nothing_half_done(client: TestClient, parts: Parts,
                                                              path: str, words: str) -> None:
    sid = create_server(client)
    settle_server(parts, sid)
    share = create_share(client)
    before = _counts(parts)
    attempts = [
        client.post(f"/v2.1/servers/{sid}/action",
                    json={"share_attach": {"share_id": share["id"], "mount_point": path}}),
        client.put("/v2.1/os-filesystem/new-fs",
                   json={"fs_entry": {"size": 1, "mount_point": path}}),
        client.put("/v2.1/os-filesystem/new-fs2",
                   json={"fs_entry": {"size": 1, "scope": "project", "mount_point": path}}),
    ]
    for r in attempts:
        assert r.status_code == 400, (path, r.text)
        fault = r.json()["badRequest"]
        assert fault["code"] == 400 and "mount_point" in fault["message"], fault
        assert words in fault["message"], fault
    assert _counts(parts) == before
    assert client.get(f"/v2.1/servers/{sid}/shares").json()["shares"] == []


def test_accepted_mount_points_reach_the_metadata(client: TestClient, parts: Parts) -> None:
    from attachfs.db.tables import Server
    from attachfs.metadata.app import meta_data

    sid = create_server(client)
    settle_server(parts, sid)
    legacy = create_share(client)
    home = create_share(client, "homes", mount_point="/home/alice")
    r = client.post(f"/v2.1/servers/{sid}/action", json={"share_attach": {
        "share_id": legacy["id"], "mount_point": "/srv/a.b+c@d-e_f", "tag": "-o"}})
    assert r.status_code == 202, r.text
    r = client.put(f"/v2.1/os-filesystem/homes/instances/{sid}")
    assert r.status_code == 202, r.text
    with parts.db.session() as s:
        s.query(ShareMapping).update({"status": "inactive"})
    with parts.db.read() as s:
        server = s.get(Server, sid)
        assert server is not None
        devices = meta_data(server, list(s.query(ShareMapping).order_by(ShareMapping.id)))[
            "devices"]
    assert [(d["tag"], d.get("mount_point")) for d in devices] == [
        ("-o", "/srv/a.b+c@d-e_f"), (home["id"], "/home/alice")]


def test_query_and_other_bodies_do_not_take_a_mount_point(client: TestClient,
                                                          parts: Parts) -> None:
    """2.97's POST /shares has no mount_point (strict schema), with or without extensions."""
    sid = create_server(client)
    settle_server(parts, sid)
    share = create_share(client)
    for headers in ({}, {"OpenStack-API-Version": "compute 2.97, attachfs 1.1"}):
        r = client.post(f"/v2.1/servers/{sid}/shares", headers=headers, json={
            "share": {"share_id": share["id"], "mount_point": "/mnt/x"}})
        assert r.status_code == 400 and "mount_point" in r.json()["badRequest"]["message"]


def test_overlapping_mount_points_on_one_server_are_409(client: TestClient, parts: Parts) -> None:
    """The guest can hold only one of two overlapping mount points: refused up front."""
    sid = create_server(client)
    settle_server(parts, sid)
    act = f"/v2.1/servers/{sid}/action"
    first, nested, same, tagged, fine = (create_share(client) for _ in range(5))
    assert client.post(act, json={"share_attach": {"share_id": first["id"],
                                                   "mount_point": "/srv/data"}}).status_code == 202
    for share, mount_point in ((nested, "/srv/data/sub"), (same, "/srv/data"), (tagged, "/srv")):
        r = client.post(act, json={"share_attach": {"share_id": share["id"],
                                                    "mount_point": mount_point}})
        assert r.status_code == 409, r.text
        assert "overlaps /srv/data" in r.json()["conflictingRequest"]["message"]
    # the default /mnt/<tag> counts too
    assert client.post(f"/v2.1/servers/{sid}/shares", json={
        "share": {"share_id": tagged["id"], "tag": "t1"}}).status_code == 201
    r = client.post(act, json={"share_attach": {"share_id": fine["id"], "mount_point": "/mnt/t1"}})
    assert r.status_code == 409 and "/mnt/t1" in r.json()["conflictingRequest"]["message"]
    r = client.post(act, json={"share_attach": {"share_id": fine["id"],
                                                "mount_point": "/srv/data2"}})
    assert r.status_code == 202, r.text
