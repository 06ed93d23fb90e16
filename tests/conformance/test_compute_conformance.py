"""attachfs against a real compute service's recorded answers (issue 9).

tools/compute_service/record.py sent every case of cases.py to a real Nova (34, fake virt
driver, real Keystone and Manila) and wrote what it answered to recorded/nova-34.json. Here the
same requests go to attachfs, set up the same way (fresh servers in the case's states, shares of
the case's kinds from a share catalogue, attachments made while stopped), in strict 2.97 mode
(`api.hot_plug = false`: the compute service attaches to stopped servers only), and each answer
must be the recorded one: status, Content-Type, the echoed microversion and the body, with ids
put back as placeholders exactly as the recorder does (its `scrub`).

The few deliberate differences are listed in DIFFERENCES with the reason (docs/api.md,
"Differences from the compute service"); for those the test checks attachfs's own answer.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from attachfs.config import load_config
from attachfs.db.tables import ShareMapping
from attachfs.service import Parts, build_api, open_parts
from tests.conformance.cases import CASES, Case, Step
from tests.conftest import make_image_dir, settle_server
from tests.fakes.storage import ShareCatalog
from tools.compute_service.record import answer_of, request_of, substitute

RECORDED = Path(__file__).with_name("recorded") / "nova-34.json"
# who each case's `user` is, as attachfs's noauth tokens (user:project[:roles])
TOKENS = {"member": "conf-member:A", "reader": "conf-reader:A:reader",
          "other": "conf-other:B", "admin": "admin:A"}
KINDS = {"nfs": ("NFS", "available"), "cephfs": ("CEPHFS", "available"),
         "error": ("NFS", "error"), "cifs": ("CIFS", "available")}


# The recorder's flavors (conf-512, conf-1024) are attachfs's flavors of the same memory.
FLAVORS = {"conf-512": "3", "conf-1024": "4"}


@dataclass(frozen=True)
class Difference:
    status: int
    message: str  # attachfs's fault message, with the case's placeholders
    why: str


# Deliberate differences (docs/api.md, "Differences from the compute service"): the reasons,
# then the cases that show each, with attachfs's own answer to the case's last step.
NOT_LEAKED = ("another project's server answers as a server that does not exist: the compute "
              "service's 403 tells the caller it exists")
TAG_36 = ("a tag longer than virtio-fs's 36 bytes is refused up front; the compute service "
          "accepts it and fails at boot (and answers 500 past its 48-character column)")
NOT_CARRIED_OUT = ("server actions: attachfs evacuates servers with shares (the compute "
                   "service refuses it) and cold-migrates them, and refuses live migration "
                   "with its reason; an action it does not carry out, or cannot carry out with "
                   "one host, is a 4xx saying why, where the compute service acts (202)")
_NO_CELL = "Instance {%s} has no mapping to a cell."
_TAG = "is %d characters; virtio-fs carries at most 36"
_NOT_DONE = "attachfs does not carry out the '%s' server action (see docs/api.md)."
DIFFERENCES: dict[str, Difference] = {
    "other_list": Difference(404, _NO_CELL % "server:s", NOT_LEAKED),
    "other_show": Difference(404, _NO_CELL % "server:s", NOT_LEAKED),
    "other_attach": Difference(404, _NO_CELL % "server:s", NOT_LEAKED),
    "other_detach": Difference(404, _NO_CELL % "server:s", NOT_LEAKED),
    "member_on_other_server_list": Difference(404, _NO_CELL % "other_server", NOT_LEAKED),
    "order_other_server_unknown_share": Difference(404, _NO_CELL % "other_server", NOT_LEAKED),
    "attach_tag_37": Difference(400, _TAG % 37, TAG_36),
    "attach_tag_48": Difference(400, _TAG % 48, TAG_36),
    "attach_tag_49": Difference(400, _TAG % 49, TAG_36),
    "attach_tag_255": Difference(400, _TAG % 255, TAG_36),
    "action_migrate_admin": Difference(400, "No valid host was found.", NOT_CARRIED_OUT),
    "action_live_migrate_admin": Difference(409, "QEMU 8.2", NOT_CARRIED_OUT),
    "action_evacuate_admin": Difference(409, "Compute service of test-host is still in use.",
                                        NOT_CARRIED_OUT),
    "action_resize": Difference(409, _NOT_DONE % "resize", NOT_CARRIED_OUT),
    "action_lock": Difference(409, _NOT_DONE % "lock", NOT_CARRIED_OUT),
    "attach_locked_server": Difference(409, _NOT_DONE % "lock", NOT_CARRIED_OUT),
    "action_pause": Difference(409, _NOT_DONE % "pause", NOT_CARRIED_OUT),
    "action_create_image": Difference(409, _NOT_DONE % "createImage", NOT_CARRIED_OUT),
}


def _recorded() -> dict[str, list[dict[str, Any]]]:
    cases: dict[str, list[dict[str, Any]]] = json.loads(RECORDED.read_text())["cases"]
    return cases


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres",
                                                                marks=pytest.mark.postgres)])
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[tuple[TestClient, Parts, ShareCatalog]]:
    root = tmp_path_factory.mktemp("conformance")
    url = request.getfixturevalue("pg_url") if request.param == "postgres" else ""
    config = load_config(None, {"state_dir": str(root / "state"), "database_url": url,
                                "images.dir": str(make_image_dir(root)),
                                "agent.host": "test-host", "api.hot_plug": False})
    parts = open_parts(config)
    catalog = ShareCatalog()
    parts.provider.external = catalog
    with TestClient(build_api(parts)) as client:
        yield client, parts, catalog
    parts.db.dispose()


def _server(client: TestClient, parts: Parts, token: str) -> str:
    r = client.post("/v2.1/servers", headers={"X-Auth-Token": token},
                    json={"server": {"name": f"conf-{uuid.uuid4().hex[:6]}", "flavorRef": "1",
                                     "imageRef": "debian-busybox", "networks": "none"}})
    assert r.status_code == 202, r.text
    sid = str(r.json()["server"]["id"])
    _settle(parts, sid, "stopped")
    return sid


def _settle(parts: Parts, sid: str, vm_state: str) -> None:
    """Where the agent (the compute service: its compute manager) would leave the server:
    started servers have their attachments `active`, stopped and errored ones `inactive`."""
    settle_server(parts, sid, vm_state)
    with parts.db.session() as s:
        for m in s.query(ShareMapping).filter_by(instance_uuid=sid):
            m.status = "active" if vm_state == "active" else "inactive"


def prepare(case: Case, client: TestClient, parts: Parts, catalog: ShareCatalog
            ) -> dict[str, str]:
    values = {"missing": str(uuid.uuid4()),
              "other_server": _server(client, parts, TOKENS["other"])}
    for alias, kind in case.shares.items():
        protocol, status = KINDS[kind]
        values[f"share:{alias}"] = catalog.add(protocol, status, project_id="A")
    for alias in case.servers:
        values[f"server:{alias}"] = _server(client, parts, TOKENS["member"])
    for server, share, tag in case.attached:
        body: dict[str, Any] = {"share_id": values[f"share:{share}"]}
        if tag is not None:
            body["tag"] = substitute(tag, values)
        r = client.post(f"/v2.1/servers/{values[f'server:{server}']}/shares",
                        headers=_headers("member", "2.97"), json={"share": body})
        assert r.status_code == 201, r.text
    for alias, state in case.servers.items():
        _settle(parts, values[f"server:{alias}"], state)
    return values


def _headers(user: str, version: str | None) -> dict[str, str]:
    headers = {"X-Auth-Token": TOKENS[user], "Accept": "application/json"}
    if version is not None:
        headers["OpenStack-API-Version"] = f"compute {version}"
    return headers


def send(client: TestClient, step: Step, values: dict[str, str]) -> dict[str, Any]:
    """The step exactly as the recorder sent it, and its answer as the recorder keeps it."""
    req = request_of(step, values, TOKENS[step.user], FLAVORS)
    client.headers.clear()  # nothing but what the recorder sent
    r = client.request(req.method, "/v2.1" + req.target, headers=req.headers,
                       content=req.content)
    answer = answer_of(r, values)
    return {**answer, "body": unordered(answer["body"])}


def unordered(body: Any) -> Any:
    """A server's attachments come in no promised order (the compute service lists them in
    whatever order its database returns): compare them sorted."""
    if isinstance(body, dict) and isinstance(body.get("shares"), list):
        return {**body, "shares": sorted(body["shares"], key=lambda m: json.dumps(m))}
    return body


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_same_answers_as_the_compute_service(
        case: Case, world: tuple[TestClient, Parts, ShareCatalog]) -> None:
    client, parts, catalog = world
    recorded = _recorded()
    assert case.name in recorded, f"{case.name}: not recorded (re-run the recorder)"
    values = prepare(case, client, parts, catalog)
    diff = DIFFERENCES.get(case.name)
    for i, (step, want) in enumerate(zip(case.steps, recorded[case.name], strict=True)):
        got = send(client, step, values)
        where = f"{case.name} step {i} ({step.method} {step.path}): {case.why}"
        if diff is not None and i == 0:  # every difference shows in the case's first step
            assert got["status"] == diff.status, (where, got)
            (fault,) = got["body"].values()
            assert diff.message in fault["message"], (where, got)
            assert got["status"] != want["status"] or got["body"] != want["body"]
            continue
        assert got == {**want, "body": unordered(want["body"])}, where


def test_every_case_recorded_and_differences_short() -> None:
    recorded = _recorded()
    names = {c.name for c in CASES}
    assert names == set(recorded), sorted(names ^ set(recorded))
    assert set(DIFFERENCES) <= names
    reasons = {d.why for d in DIFFERENCES.values()}
    assert len(reasons) <= 4, "each deliberate difference needs a reason in docs/api.md"
