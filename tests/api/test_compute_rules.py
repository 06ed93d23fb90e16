"""The compute service's answers for share attachments, one test per behaviour: the order of
its checks, its status codes and the messages its own tests pin (issue 9). Runs on SQLite and
PostgreSQL. The shares come from a share service's catalogue (any protocol and status), as
Manila's would; tests/conformance replays a real compute service's recorded answers."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from attachfs.service import Parts
from tests.conftest import IMAGE, create_server, settle_server
from tests.fakes.storage import ShareCatalog

READER = {"X-Auth-Token": "rita:p1:reader"}
OTHER = {"X-Auth-Token": "bob:p2"}
ADMIN = {"X-Auth-Token": "admin:admin"}
MANAGER = {"X-Auth-Token": "mona:p1:manager,member,reader"}


@pytest.fixture
def catalog(parts: Parts) -> Iterator[ShareCatalog]:
    shares = ShareCatalog()
    external = parts.provider.external
    parts.provider.external = shares
    yield shares
    parts.provider.external = external


def server_in(client: TestClient, parts: Parts, vm_state: str = "stopped") -> str:
    sid = create_server(client, f"vm-{uuid.uuid4().hex[:6]}")
    settle_server(parts, sid, vm_state)
    return sid


def attach(client: TestClient, sid: str, share_id: Any, headers: dict[str, str] | None = None,
           **extra: Any) -> Any:
    return client.post(f"/v2.1/servers/{sid}/shares", headers=headers,
                       json={"share": {"share_id": share_id, **extra}})


def fault(r: Any, code: int) -> str:
    assert r.status_code == code, r.text
    assert r.headers["content-type"] == "application/json; charset=UTF-8"  # as its faults
    (name, body), = r.json().items()
    assert body["code"] == code
    message: str = body["message"]
    return message


# ---- order of checks: the body's schema first ------------------------------------------------
def test_a_bad_body_is_400_before_anything_else(client: TestClient, parts: Parts,
                                                 catalog: ShareCatalog) -> None:
    sid, share = server_in(client, parts), catalog.add()
    missing = str(uuid.uuid4())
    bad = {"share": {"share_id": share, "tag": "bad tag!"}}
    expected = ("Invalid input for field/attribute tag. Value: bad tag!. 'bad tag!' does not "
                "match '^[a-zA-Z0-9-]*$'")
    for target, headers in ((missing, None), (sid, OTHER), (sid, READER), (sid, None)):
        r = client.post(f"/v2.1/servers/{target}/shares", json=bad, headers=headers)
        assert fault(r, 400) == expected
    # ...but the microversion comes first: below 2.97 the resource does not exist
    r = client.post(f"/v2.1/servers/{missing}/shares", json=bad,
                    headers={"OpenStack-API-Version": "compute 2.96"})
    assert fault(r, 404) == "The resource could not be found."


@pytest.mark.parametrize(("body", "message"), [
    (None, "None is not of type 'object'"),
    ([], "[] is not of type 'object'"),
    ({}, "'share' is a required property"),
    ({"share": {}}, "Invalid input for field/attribute share. Value: {}. 'share_id' is a "
                    "required property"),
    ({"share": {"share_id": "nope"}}, "Invalid input for field/attribute share_id. Value: "
                                      "nope. 'nope' is not a 'uuid'"),
    ({"share": {"share_id": "{id}", "tag": None}}, "Invalid input for field/attribute tag. "
                                                   "Value: None. None is not of type 'string'"),
    ({"share": {"share_id": "{id}", "tag": ""}}, "Invalid input for field/attribute tag. "
                                                 "Value: . '' should be non-empty"),
    ({"share": {"share_id": "{id}", "tag": 5}}, "Invalid input for field/attribute tag. "
                                                "Value: 5. 5 is not of type 'string'"),
    ({"share": {"share_id": "{id}"}, "x": 1}, "Additional properties are not allowed ('x' was "
                                              "unexpected)"),
])
def test_schema_messages(client: TestClient, parts: Parts, catalog: ShareCatalog, body: Any,
                         message: str) -> None:
    sid, share = server_in(client, parts), catalog.add()
    if isinstance(body, dict) and "share" in body and body["share"].get("share_id") == "{id}":
        body["share"]["share_id"] = share
    r = client.post(f"/v2.1/servers/{sid}/shares", json=body)
    assert fault(r, 400) == message
    assert client.get(f"/v2.1/servers/{sid}/shares").json()["shares"] == []


def test_malformed_and_foreign_bodies(client: TestClient, parts: Parts) -> None:
    sid = server_in(client, parts)
    url = f"/v2.1/servers/{sid}/shares"
    r = client.post(url, content=b"{", headers={"Content-Type": "application/json"})
    assert fault(r, 400) == "Malformed request body"
    r = client.post(url, content=b"<share/>", headers={"Content-Type": "application/xml"})
    assert fault(r, 415) == "Unsupported Content-Type"
    assert r.json() == {"badMediaType": {"code": 415, "message": "Unsupported Content-Type"}}
    # text/plain (and none) are read as JSON, as the compute service does
    r = client.post(url, content=b'{"share": {"share_id": "x"}}',
                    headers={"Content-Type": "text/plain"})
    assert fault(r, 400).startswith("Invalid input for field/attribute share_id")


def test_unknown_query_parameters_are_400(client: TestClient, parts: Parts,
                                          catalog: ShareCatalog) -> None:
    sid, share = server_in(client, parts), catalog.add()
    assert attach(client, sid, share).status_code == 201
    for url in (f"/v2.1/servers/{sid}/shares?foo=1", f"/v2.1/servers/{sid}/shares/{share}?foo=1"):
        assert fault(client.get(url), 400) == ("Additional properties are not allowed ('foo' "
                                                "was unexpected)")


# ---- order of checks: server, policy, server state, then the share ----------------------------
def test_server_state_is_checked_before_the_share(client: TestClient, parts: Parts) -> None:
    missing = str(uuid.uuid4())
    sid = server_in(client, parts, "error")
    assert fault(attach(client, sid, missing), 409) == (
        f"Cannot 'create share' instance {sid} while it is in vm_state error")
    stopped = server_in(client, parts)
    assert fault(attach(client, stopped, missing), 404) == f"Share {missing} could not be found."


def test_unknown_server(client: TestClient, catalog: ShareCatalog) -> None:
    missing, share = str(uuid.uuid4()), catalog.add()
    expected = f"Instance {missing} has no mapping to a cell."
    base = f"/v2.1/servers/{missing}/shares"
    assert fault(client.get(base), 404) == expected
    assert fault(client.get(f"{base}/{share}"), 404) == expected
    assert fault(attach(client, missing, share), 404) == expected
    assert fault(client.delete(f"{base}/{share}"), 404) == expected
    # and a server id that is not a UUID is simply not found
    assert fault(client.get("/v2.1/servers/abc/shares"), 404) == (
        "Instance abc has no mapping to a cell.")


def test_reader_may_look_but_not_change(client: TestClient, parts: Parts,
                                        catalog: ShareCatalog) -> None:
    sid, share = server_in(client, parts), catalog.add()
    assert attach(client, sid, share).status_code == 201
    assert client.get(f"/v2.1/servers/{sid}/shares", headers=READER).status_code == 200
    assert client.get(f"/v2.1/servers/{sid}/shares/{share}", headers=READER).status_code == 200
    assert fault(attach(client, sid, catalog.add(), READER), 403) == (
        "Policy doesn't allow os_compute_api:os-server-shares:create to be performed.")
    r = client.delete(f"/v2.1/servers/{sid}/shares/{share}", headers=READER)
    assert fault(r, 403) == (
        "Policy doesn't allow os_compute_api:os-server-shares:delete to be performed.")


# ---- the share's checks and the duplicate rule -------------------------------------------------
def test_share_checks_in_the_compute_services_words(client: TestClient, parts: Parts,
                                                    catalog: ShareCatalog) -> None:
    sid = server_in(client, parts)
    broken = catalog.add(status="error")
    assert fault(attach(client, sid, broken), 409) == (
        f"Share {broken} is in 'error' instead of 'available' status.")
    unexported = catalog.add(exported=False)
    assert fault(attach(client, sid, unexported), 409) == (
        f"Share {unexported} export location is missing.")
    assert fault(attach(client, sid, catalog.add("CIFS")), 409) == (
        "Share protocol CIFS is not supported.")
    cephfs = catalog.add("CEPHFS")  # attachable, as the docs say
    r = attach(client, sid, cephfs)
    assert r.status_code == 201 and r.json()["share"] == {
        "share_id": cephfs, "status": "attaching", "tag": cephfs}


def test_duplicates_are_one_message(client: TestClient, parts: Parts,
                                    catalog: ShareCatalog) -> None:
    sid = server_in(client, parts)
    first, second, third = catalog.add(), catalog.add(), catalog.add()
    assert attach(client, sid, first).status_code == 201  # tag: the share's id
    assert attach(client, sid, second, tag="data").status_code == 201
    for share, tag in ((first, None), (first, "other"), (third, "data"), (third, first)):
        extra = {} if tag is None else {"tag": tag}
        expected = f"Share '{share}' or tag '{tag or share}' already associated to this server."
        assert fault(attach(client, sid, share, **extra), 409) == expected


def test_show_and_detach_of_what_is_not_attached(client: TestClient, parts: Parts,
                                                 catalog: ShareCatalog) -> None:
    sid, share = server_in(client, parts), catalog.add()
    for ident in (share, "not-a-uuid"):
        expected = f"Share {ident} could not be found."
        assert fault(client.get(f"/v2.1/servers/{sid}/shares/{ident}"), 404) == expected
        assert fault(client.delete(f"/v2.1/servers/{sid}/shares/{ident}"), 404) == expected


# ---- state rules -----------------------------------------------------------------------------
def test_detach_from_a_server_in_error_and_while_attaching(client: TestClient, parts: Parts,
                                                            catalog: ShareCatalog) -> None:
    sid, share = server_in(client, parts), catalog.add()
    assert attach(client, sid, share).status_code == 201
    settle_server(parts, sid, "error")
    r = client.delete(f"/v2.1/servers/{sid}/shares/{share}")  # still `attaching`: honoured
    assert r.status_code == 200 and r.content == b""
    assert r.headers["content-type"] == "application/json"
    assert client.get(f"/v2.1/servers/{sid}/shares").json()["shares"][0]["status"] == "detaching"
    assert client.delete(f"/v2.1/servers/{sid}/shares/{share}").status_code == 200  # again


def test_hot_plug_lets_a_running_server_change(client: TestClient, parts: Parts,
                                               catalog: ShareCatalog) -> None:
    """attachfs's hot plug (default) widens 2.97's "stopped only"; an unknown share on a
    running server is then the share's 404 (strict mode: tests/api/test_hot_plug_api.py)."""
    sid, share, missing = server_in(client, parts, "active"), catalog.add(), str(uuid.uuid4())
    assert fault(attach(client, sid, missing), 404) == f"Share {missing} could not be found."
    assert attach(client, sid, share).status_code == 201


# ---- microversions and HTTP ---------------------------------------------------------------------
def test_microversions_up_to_2_104(client: TestClient, parts: Parts,
                                   catalog: ShareCatalog) -> None:
    sid, share = server_in(client, parts), catalog.add()
    for version in ("2.98", "2.100", "2.102", "2.104", "latest"):
        headers = {"OpenStack-API-Version": f"compute {version}"}
        r = client.get(f"/v2.1/servers/{sid}/shares", headers=headers)
        assert r.status_code == 200, (version, r.text)
    r = client.get(f"/v2.1/servers/{sid}/shares", headers={"OpenStack-API-Version": "compute 2.105"})
    assert fault(r, 406) == ("Version 2.105 is not supported by the API. Minimum is 2.1 and "
                             "maximum is 2.104.")
    server = client.get(f"/v2.1/servers/{sid}", headers={"OpenStack-API-Version": "compute 2.100"})
    body = server.json()["server"]
    assert body["image"]["properties"] == {} and body["scheduler_hints"] == {}
    assert "scheduler_hints" not in client.get(f"/v2.1/servers/{sid}").json()["server"]
    flavor = client.get("/v2.1/flavors/1", headers={"OpenStack-API-Version": "compute 2.102"})
    assert "rxtx_factor" not in flavor.json()["flavor"]
    assert "rxtx_factor" in client.get("/v2.1/flavors/1").json()["flavor"]
    named = client.get("/v2.1/flavors?name=^m1", headers={"OpenStack-API-Version": "compute 2.102"})
    assert named.status_code == 200
    r = client.get("/v2.1/flavors?name=x", headers={"OpenStack-API-Version": "compute 2.101"})
    assert fault(r, 400) == "Additional properties are not allowed ('name' was unexpected)"
    r = client.get(f"/v2.1/servers/{sid}?foo=1", headers={"OpenStack-API-Version": "compute 2.102"})
    assert fault(r, 400) == "Additional properties are not allowed ('foo' was unexpected)"
    assert client.get(f"/v2.1/servers/{sid}?foo=1").status_code == 200  # before 2.102: ignored
    assert share  # attached nowhere: the versions change no share attachment body


def test_unknown_routes_are_404(client: TestClient, parts: Parts, catalog: ShareCatalog) -> None:
    sid, share = server_in(client, parts), catalog.add()
    for method, url in (("PUT", f"/v2.1/servers/{sid}/shares/{share}"),
                        ("GET", f"/v2.1/servers/{sid}/sharez"),
                        ("PATCH", f"/v2.1/servers/{sid}/shares")):
        r = client.request(method, url, json={})
        # the compute service's router's own answer (webob's body), with no microversion
        assert (r.status_code, r.headers["content-type"]) == (404, "application/json")
        assert r.json() == {"code": "404 Not Found", "title": "Not Found",
                            "message": "The resource could not be found.<br /><br />\n\n\n"}
        assert "openstack-api-version" not in r.headers
        assert "x-compute-request-id" in r.headers


# ---- server actions on a server with shares -----------------------------------------------------
def action(client: TestClient, sid: str, body: dict[str, Any],
           headers: dict[str, str] | None = None) -> Any:
    return client.post(f"/v2.1/servers/{sid}/action", json=body, headers=headers)


def test_actions_refused_with_shares(client: TestClient, parts: Parts,
                                     catalog: ShareCatalog) -> None:
    sid = server_in(client, parts, "active")
    assert attach(client, sid, catalog.add()).status_code == 201
    with_shares = "Feature not supported with instances that have shares."
    for body in ({"shelve": None}, {"suspend": None}):
        assert fault(action(client, sid, body), 409) == with_shares
    # rebuild is the same refusal as a 400 (measured on Nova 34.0.0)
    assert fault(action(client, sid, {"rebuild": {"imageRef": IMAGE}}), 400) == with_shares
    # Nova 34.0.0 does not refuse resize with shares: its flavor check comes next
    r = action(client, sid, {"resize": {"flavorRef": "nope"}})
    assert fault(r, 400) == "Flavor nope could not be found."
    rules = {"migrate": "os_compute_api:os-migrate-server:migrate",
             "os-migrateLive": "os_compute_api:os-migrate-server:migrate_live",
             "evacuate": "os_compute_api:os-evacuate"}
    for name, args in {"os-migrateLive": {"host": None, "block_migration": "auto"},
                       "evacuate": {}}.items():
        r = action(client, sid, {name: args})
        assert fault(r, 403) == f"Policy doesn't allow {rules[name]} to be performed."
    # attachfs moves servers with shares (docs/hosts.md): live migration is a 409 that says
    # why; evacuate needs a failed host (this one is up); migrate needs another host
    live = fault(action(client, sid, {"os-migrateLive": {"host": None,
                                                         "block_migration": "auto"}}, ADMIN), 409)
    assert "QEMU 8.2" in live and "migrate" in live
    assert fault(action(client, sid, {"evacuate": {}}, ADMIN), 409) == (
        "Compute service of test-host is still in use.")
    r = action(client, sid, {"migrate": None})
    assert fault(r, 403) == f"Policy doesn't allow {rules['migrate']} to be performed."
    assert fault(action(client, sid, {"migrate": None}, MANAGER), 400).startswith(
        "No valid host was found.")
    assert action(client, sid, {"evacuate": {}}, MANAGER).status_code == 403
    # the body is checked first, as everywhere
    r = action(client, sid, {"os-migrateLive": {"block_migration": "auto"}}, ADMIN)
    assert fault(r, 400).endswith("'host' is a required property")


def test_actions_attachfs_does_not_carry_out(client: TestClient, parts: Parts) -> None:
    sid = server_in(client, parts, "active")
    for name in ("shelve", "pause", "lock", "createImage"):
        message = fault(action(client, sid, {name: None}), 409)
        assert message == f"attachfs does not carry out the '{name}' server action (see docs/api.md)."
    assert fault(action(client, sid, {"frobnicate": None}), 400) == (
        "There is no such action: frobnicate")


# ---- deliberate differences (docs/api.md) -------------------------------------------------------
def test_another_projects_server_is_not_found(client: TestClient, parts: Parts,
                                              catalog: ShareCatalog) -> None:
    """The compute service answers 403 (its policy targets the server's project), which tells
    the caller the server exists; attachfs answers as for a server that does not."""
    sid, share = server_in(client, parts), catalog.add()
    expected = f"Instance {sid} has no mapping to a cell."
    assert fault(client.get(f"/v2.1/servers/{sid}/shares", headers=OTHER), 404) == expected
    assert fault(attach(client, sid, share, OTHER), 404) == expected


def test_a_tag_longer_than_virtio_fs_carries_is_refused_up_front(
        client: TestClient, parts: Parts, catalog: ShareCatalog) -> None:
    sid = server_in(client, parts)
    message = fault(attach(client, sid, catalog.add(), tag="x" * 37), 400)
    assert "virtio-fs carries at most 36" in message
    assert attach(client, sid, catalog.add(), tag="x" * 36).status_code == 201
