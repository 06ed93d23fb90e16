"""Tenant isolation over every endpoint, enumerated from the app's routes (a new endpoint is in
the matrix by itself; one with a path parameter the matrix does not know fails here until it
is taught), for three callers: a member of the owning project, a reader of it, a member of
another project. Plus path escapes (`..`, symlinks) under the host roots (paths.under_root).
"""

from __future__ import annotations

import copy
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from attachfs.db.tables import ShareMapping
from attachfs.errors import PermanentError
from attachfs.paths import check_under, under_root
from attachfs.service import Parts
from tests.conftest import IMAGE, create_server, create_share, settle_server

MEMBER = {"X-Auth-Token": "alice:p1"}
READER = {"X-Auth-Token": "rita:p1:reader"}
OTHER = {"X-Auth-Token": "bob:p2"}
HEADERS = {"OpenStack-API-Version": "compute 2.97", "X-OpenStack-Manila-API-Version": "2.98"}
WRITES = {"POST", "PUT", "DELETE", "PATCH"}

# Path parameters naming something the owning project owns, and catalog ones (everyone's).
OWNED = {"server_id", "share_id", "name", "request_id", "export_id"}
CATALOG = {"flavor_id": "1", "image_id": IMAGE, "type_id": "default", "service_id": "1",
           "hypervisor_id": "1"}
# The cloud's own resources (its compute hosts): administrators only, a 403 for everyone else.
ADMIN_ONLY = ("/v2.1/os-services", "/v2.1/os-hypervisors", "/v2.1/os-migrations")


def admin_only(template: str) -> bool:
    return template.startswith(ADMIN_ONLY)
# A create keyed by a name in the path: another project using that name simply creates its own.
CREATE_BY_NAME = {("PUT", "/v2.1/os-filesystem/{name}")}
BODIES: dict[tuple[str, str], list[Any]] = {
    ("POST", "/v2.1/servers"): [{"server": {"name": "made", "flavorRef": "1",
                                            "imageRef": IMAGE}}],
    ("POST", "/v2.1/servers/{server_id}/action"): [
        {"os-start": None}, {"os-stop": None}, {"reboot": {"type": "HARD"}},
        {"os-getConsoleOutput": {}}, {"share_attach": {"share_id": "{second_share}"}},
        {"share_detach": {"share_id": "{share_id}"}}],
    ("POST", "/v2.1/servers/{server_id}/shares"): [{"share": {"share_id": "{second_share}",
                                                              "tag": "t2"}}],
    ("PUT", "/v2.1/os-filesystem/{name}"): [{"fs_entry": {"size": 1}}],
    ("POST", "/share/v2/shares"): [{"share": {"share_proto": "LOCAL", "size": 1,
                                              "name": "made"}}],
    ("PUT", "/v2.1/os-services/{service_id}"): [{"status": "disabled"}],
}


# An answer that never ends (server-sent events): its isolation, each caller hearing of its own
# project's servers only, is tested in tests/unit/test_event_hub.py.
STREAMS = {"/v2.1/os-attachfs-events"}
# The web console's login and pages: no token, no project's data (tests/api/test_console_api.py).
CONSOLE = "/ui"


def _routes(client: TestClient) -> list[tuple[str, str]]:
    """Every (method, path) the app serves, from its OpenAPI document (FastAPI's public
    listing of the routes of every included router)."""
    app: Any = client.app
    out = [(method.upper(), path) for path, operations in app.openapi()["paths"].items()
           for method in operations
           if path not in STREAMS and not path.startswith(CONSOLE)]
    assert len(out) > 40, out  # the whole API, not a router that failed to load
    return sorted(out)


def _params(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{")]


def world(client: TestClient, parts: Parts) -> dict[str, str]:
    """What project p1 owns: a stopped server with one share attached (inactive), a second
    share, an audit trail entry, an export location."""
    sid = create_server(client, f"p1-secret-server-{uuid.uuid4().hex[:6]}", token="alice:p1")
    settle_server(parts, sid)
    first = create_share(client, f"p1-secret-share-{uuid.uuid4().hex[:6]}", token="alice:p1")
    second = create_share(client, token="alice:p1")
    r = client.post(f"/v2.1/servers/{sid}/shares", headers={**HEADERS, **MEMBER},
                    json={"share": {"share_id": first["id"], "tag": "p1tag"}})
    assert r.status_code == 201, r.text
    with parts.db.session() as s:
        s.query(ShareMapping).filter_by(instance_uuid=sid).update({"status": "inactive"})
    actions = client.get(f"/v2.1/servers/{sid}/os-instance-actions",
                         headers={**HEADERS, **MEMBER}).json()["instanceActions"]
    exports = client.get(f"/share/v2/shares/{first['id']}/export_locations",
                         headers={**HEADERS, **MEMBER}).json()["export_locations"]
    return {"server_id": sid, "share_id": str(first["id"]), "name": str(first["name"]),
            "request_id": actions[0]["request_id"], "export_id": exports[0]["id"],
            "second_share": str(second["id"]), "server_name": f"p1-secret-server-{sid}"}


def never_existed() -> dict[str, str]:
    return {"server_id": str(uuid.uuid4()), "share_id": str(uuid.uuid4()),
            "name": f"never-{uuid.uuid4().hex[:8]}", "request_id": f"req-{uuid.uuid4()}",
            "export_id": str(uuid.uuid4()), "second_share": str(uuid.uuid4())}


def _fill(value: Any, values: dict[str, str]) -> Any:
    if isinstance(value, str):
        return value.format(**values) if "{" in value else value
    if isinstance(value, dict):
        return {k: _fill(v, values) for k, v in value.items()}
    return value


def _request(client: TestClient, method: str, template: str, values: dict[str, str],
             body: Any, who: dict[str, str]) -> Any:
    unknown = set(_params(template)) - OWNED - set(CATALOG)
    assert not unknown, f"{method} {template}: teach the isolation matrix {sorted(unknown)}"
    path = template.format(**{**CATALOG, **values})
    return client.request(method, path, headers={**HEADERS, **who},
                          json=_fill(copy.deepcopy(body), values) if body is not None else None)


def _masked(text: str, values: dict[str, str]) -> str:
    for key in sorted(values, key=lambda k: -len(values[k])):
        text = text.replace(values[key], f"<{key}>")
    return text


def _cases(client: TestClient) -> list[tuple[str, str, Any]]:
    return [(method, path, body) for method, path in _routes(client)
            for body in BODIES.get((method, path), [None])]


def test_another_project_sees_nothing_and_changes_nothing(client: TestClient,
                                                          parts: Parts) -> None:
    owned = world(client, parts)
    secrets = [v for k, v in owned.items() if k != "second_share"] + [owned["second_share"]]
    checked = 0
    for method, template, body in _cases(client):
        r = _request(client, method, template, owned, body, OTHER)
        where = f"{method} {template} {body}: {r.status_code} {r.text[:300]}"
        assert r.status_code < 500, where
        if admin_only(template):
            assert r.status_code == 403 and "forbidden" in r.json(), where
        elif (method, template) in CREATE_BY_NAME:
            assert r.status_code == 201 and r.json()["fs_entry"]["project"] == "p2", where
            assert owned["share_id"] not in r.text, where
            # gone again, so the name stays p1's alone for the routes that follow
            assert client.delete(f"/v2.1/os-filesystem/{owned['name']}",
                                 headers={**HEADERS, **OTHER}).status_code == 202
        elif set(_params(template)) & OWNED:
            # exactly what a never-existing resource answers (echoing only what was asked)
            never = never_existed()
            missing = _request(client, method, template, never, body, OTHER)
            assert r.status_code == 404, where
            assert (r.status_code, _masked(r.text, owned)) == \
                (missing.status_code, _masked(missing.text, never)), where
        else:
            assert not any(secret in r.text for secret in secrets), where
        checked += 1
    # nothing of p1's changed: its server, attachment and shares are as they were
    r = client.get(f"/v2.1/servers/{owned['server_id']}/shares", headers={**HEADERS, **MEMBER})
    assert [(s["share_id"], s["status"], s["tag"]) for s in r.json()["shares"]] == \
        [(owned["share_id"], "inactive", "p1tag")]
    server = client.get(f"/v2.1/servers/{owned['server_id']}", headers={**HEADERS, **MEMBER})
    assert server.json()["server"]["status"] == "SHUTOFF"
    assert client.get(f"/v2.1/os-filesystem/{owned['name']}",
                      headers={**HEADERS, **MEMBER}).json()["fs_entry"]["id"] == owned["share_id"]
    assert checked >= 45


def test_reader_reads_and_never_writes(client: TestClient, parts: Parts) -> None:
    owned = world(client, parts)
    for method, template, body in _cases(client):
        r = _request(client, method, template, owned, body, READER)
        where = f"{method} {template} {body}: {r.status_code} {r.text[:300]}"
        if method in WRITES or admin_only(template):
            assert r.status_code == 403 and "forbidden" in r.json(), where
        else:
            assert 200 <= r.status_code < 300, where
    r = client.get(f"/v2.1/servers/{owned['server_id']}/shares", headers={**HEADERS, **MEMBER})
    assert [s["status"] for s in r.json()["shares"]] == ["inactive"]


def test_member_of_the_owning_project_may(client: TestClient, parts: Parts) -> None:
    """The positive side, so the matrix is known to reach real handlers: every read answers,
    every write is authorized (done, or a state conflict), each on a fresh world."""
    owned = world(client, parts)
    for method, template, body in _cases(client):
        if method in WRITES:
            continue
        r = _request(client, method, template, owned, body, MEMBER)
        if admin_only(template):
            assert r.status_code == 403, f"{method} {template}: {r.status_code} {r.text}"
            continue
        assert 200 <= r.status_code < 300, f"{method} {template}: {r.status_code} {r.text}"
    for method, template, body in _cases(client):
        if method not in WRITES or admin_only(template):
            continue
        r = _request(client, method, template, world(client, parts), body, MEMBER)
        where = f"{method} {template} {body}: {r.status_code} {r.text[:300]}"
        assert 200 <= r.status_code < 300 or r.status_code == 409, where


def test_garbage_in_every_path_parameter_is_never_a_500(client: TestClient,
                                                        parts: Parts) -> None:
    owned = world(client, parts)
    for garbage in ("%00", "..", "%2e%2e%2f..%2fetc", "x" * 2000, "'; DROP TABLE shares; --",
                    "%ff%fe", "{}"):
        values = {k: garbage for k in owned}
        for method, template, body in _cases(client):
            if not set(_params(template)) & OWNED:
                continue
            for who in (MEMBER, OTHER):
                r = _request(client, method, template, values, body, who)
                assert r.status_code < 500, (method, template, garbage, r.text[:300])


# ---- path escapes under the host roots --------------------------------------------------------
def test_under_root_refuses_dotdot_and_symlinks(tmp_path: Path) -> None:
    root = tmp_path / "shares"
    root.mkdir()
    (tmp_path / "outside").mkdir()
    (root / "ok").mkdir()
    os.symlink(tmp_path / "outside", root / "link-out")
    os.symlink("/etc", root / "link-etc")
    os.symlink(root / "ok", root / "link-in")
    assert under_root(root, "ok") == (root / "ok").resolve()
    assert under_root(root, "link-in") == (root / "ok").resolve()  # stays inside: fine
    for parts in (("..",), ("../outside",), ("ok", "..", ".."), ("link-out",),
                  ("link-etc", "passwd"), ("/etc",), ("ok/../../outside",)):
        with pytest.raises(PermanentError, match="escapes"):
            under_root(root, *parts)
    with pytest.raises(PermanentError):
        check_under(root, Path("/etc/passwd"))


def test_share_names_and_ids_cannot_escape_the_storage_root(client: TestClient,
                                                            parts: Parts) -> None:
    for name in ("..", ".", "../x", "a/b", "%2e%2e", "..%2f..%2fetc", ".hidden", "-rf"):
        r = client.put(f"/v2.1/os-filesystem/{name}", json={"fs_entry": {"size": 1}})
        assert r.status_code in (400, 404, 405), (name, r.status_code, r.text)
    # percent-encoded: a client would resolve a literal ".." before sending
    for share_id in ("%2e%2e", "..%2f..%2fetc", str(uuid.uuid4()) + "%2f.."):
        r = client.get(f"/share/v2/shares/{share_id}", headers=HEADERS)
        assert r.status_code == 404, (share_id, r.text)
    root = parts.config.storage_root.resolve()
    assert all(p.resolve().parent == root for p in root.iterdir())
    with pytest.raises(PermanentError):
        parts.builtin.share_dir("../escape")
