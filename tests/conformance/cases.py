"""Conformance cases for share attachments (compute API 2.97, /v2.1/servers/{id}/shares).

The same requests are sent to a real Nova (tools/compute_service/record.py writes the answers to
tests/conformance/recorded/nova-34.json) and to attachfs, and the answers are compared.
Standard library only: imported by the recorder and by pytest.

How a Step becomes a request (the recorder does exactly this; a replayer must do the same):
- URL: the compute endpoint's `/v2.1` + `path` (placeholders substituted) + `?` + `query` if any.
- Headers: `X-Auth-Token` of `user`; `Accept: application/json`;
  `OpenStack-API-Version: compute <version>` unless `version` is None;
  `Content-Type: <content_type>` only when a body is sent and `content_type` is not None.
- Body: `raw` verbatim (UTF-8) if not None (`raw=""` sends an empty body), else `body` as JSON
  (placeholders substituted inside every string) if not None, else no body at all.

Placeholders: `{server:<alias>}`, `{share:<alias>}`, `{missing}` (a random UUID that exists
nowhere, the same within one case), `{other_server}` (a stopped server of project B).
Fixtures per case: FRESH servers of project A (flavor 512 MB RAM, `"networks": "none"`) put into
their state AFTER the `attached` shares were attached on the stopped server and reached
`inactive`: stopped = os-stop → SHUTOFF; active = os-start → ACTIVE; error = admin os-resetState.
Shares are reused across cases by kind (see `Case.shares`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Step:
    method: str  # GET POST DELETE PUT
    path: str  # relative to /v2.1, e.g. "/servers/{server:s}/shares/{share:a}"
    user: str = "member"  # member | reader (project A) | other (member of B) | admin (admin of A)
    version: str | None = "2.97"  # "OpenStack-API-Version: compute <version>"; None = no header
    body: Any = None  # JSON-able, placeholders substituted inside strings; None = no body
    raw: str | None = None  # sent verbatim instead of `body` ("" = an empty body)
    content_type: str | None = "application/json"  # None = no Content-Type header
    query: str = ""  # appended after "?" (placeholders substituted)


@dataclass(frozen=True)
class Case:
    name: str
    steps: tuple[Step, ...]
    # alias -> "stopped" | "active" | "error"; owned by project A
    servers: dict[str, str] = field(default_factory=dict)
    # alias -> "nfs" | "cephfs" | "error" | "cifs" (available NFS with an export location,
    # available CEPHFS, NFS share in status error, available CIFS)
    shares: dict[str, str] = field(default_factory=dict)
    # (server alias, share alias, tag or None), attached on the stopped server before its state
    attached: tuple[tuple[str, str, str | None], ...] = ()
    why: str = ""  # one line: what this pins


USERS = ("member", "reader", "other", "admin")
SERVER_STATES = ("stopped", "active", "error")
SHARE_KINDS = ("nfs", "cephfs", "error", "cifs")

S = "/servers/{server:s}/shares"
SA = S + "/{share:a}"
SB = S + "/{share:b}"
ATTACH_A = {"share": {"share_id": "{share:a}"}}
ATTACH_B = {"share": {"share_id": "{share:b}"}}
ATTACH_MISSING = {"share": {"share_id": "{missing}"}}
BAD_BODY = {"share": {"share_id": "{share:a}", "foo": 1}}


def attach(share: str = "a", tag: Any = ..., **extra: Any) -> dict[str, Any]:
    inner: dict[str, Any] = {"share_id": "{share:" + share + "}"}
    if tag is not ...:
        inner["tag"] = tag
    inner.update(extra)
    return {"share": inner}


def get(path: str, **kw: Any) -> Step:
    return Step("GET", path, **kw)


def post(path: str, body: Any = None, **kw: Any) -> Step:
    return Step("POST", path, body=body, **kw)


def delete(path: str, **kw: Any) -> Step:
    return Step("DELETE", path, **kw)


def action(body: dict[str, Any], user: str = "member", version: str | None = "2.97") -> Step:
    return Step("POST", "/servers/{server:s}/action", user=user, version=version, body=body)


STOPPED = {"s": "stopped"}
ACTIVE = {"s": "active"}
ERROR = {"s": "error"}
NFS_A = {"a": "nfs"}
NFS_AB = {"a": "nfs", "b": "nfs"}
ATT_A = (("s", "a", None),)


def c(name: str, why: str, *steps: Step, servers: dict[str, str] | None = None,
      shares: dict[str, str] | None = None,
      attached: tuple[tuple[str, str, str | None], ...] = ()) -> Case:
    return Case(name=name, steps=tuple(steps), servers=dict(STOPPED if servers is None else servers),
                shares=dict(NFS_A if shares is None else shares), attached=attached, why=why)


CASES: tuple[Case, ...] = (
    # --- success paths -----------------------------------------------------------------------
    c("list_empty", "list on a server with no share: 200 {'shares': []}", get(S)),
    c("list_one", "list shows share_id, status inactive, tag = share id; no export_location",
      get(S), attached=ATT_A),
    c("list_two_tagged", "list of two attachments, one tagged", get(S),
      shares=NFS_AB, attached=(("s", "a", "tag-a"), ("s", "b", None))),
    c("show_member", "show as member: no export_location / uuid", get(SA), attached=ATT_A),
    c("show_reader", "show as reader (project reader may read)", get(SA, user="reader"),
      attached=ATT_A),
    c("show_admin", "show as admin adds export_location and uuid", get(SA, user="admin"),
      attached=ATT_A),
    c("attach_default_tag", "201, status attaching, tag defaults to the share id",
      post(S, ATTACH_A)),
    c("attach_with_tag", "201 with the given tag", post(S, attach(tag="my-tag"))),
    c("attach_admin", "admin attach answer includes export_location and uuid",
      post(S, ATTACH_A, user="admin")),
    c("attach_two_shares", "two different shares on one server, back to back",
      post(S, ATTACH_A), post(S, ATTACH_B), shares=NFS_AB),
    c("attach_same_share_two_servers", "one share on two servers of the project",
      post("/servers/{server:t}/shares", ATTACH_A), servers={"s": "stopped", "t": "stopped"},
      attached=ATT_A),
    c("detach", "200 with an empty body", delete(SA), attached=ATT_A),
    c("detach_twice", "second DELETE right after the first (mapping still detaching)",
      delete(SA), delete(SA), attached=ATT_A),
    c("list_active_server", "after os-start the attachment is 'active'", get(S), get(SA),
      servers=ACTIVE, attached=ATT_A),
    # --- microversions ----------------------------------------------------------------------
    c("list_v2_96", "route absent below 2.97", get(S, version="2.96"), attached=ATT_A),
    c("show_v2_96", "route absent below 2.97", get(SA, version="2.96"), attached=ATT_A),
    c("attach_v2_96", "route absent below 2.97", post(S, ATTACH_A, version="2.96")),
    c("detach_v2_96", "route absent below 2.97", delete(SA, version="2.96"), attached=ATT_A),
    c("list_no_version", "no header = 2.1: 404", get(S, version=None), attached=ATT_A),
    c("list_v2_98", "later microversions keep the route", get(S, version="2.98"), attached=ATT_A),
    c("show_v2_100", "later microversions keep the route", get(SA, version="2.100"),
      attached=ATT_A),
    c("attach_v2_104", "attach at the service's max", post(S, ATTACH_A, version="2.104")),
    c("list_latest", "'latest' resolves to the max", get(S, version="latest"), attached=ATT_A),
    c("list_version_malformed", "malformed version header", get(S, version="2.97abc")),
    c("list_version_too_high", "above the max: 406", get(S, version="2.999")),
    # --- body schema ------------------------------------------------------------------------
    c("attach_missing_share", "no 'share' key", post(S, {})),
    c("attach_missing_share_id", "no share_id", post(S, {"share": {"tag": "x"}})),
    c("attach_share_id_not_uuid", "share_id format uuid", post(S, {"share": {"share_id": "abc"}})),
    c("attach_share_not_object", "'share' must be an object", post(S, {"share": "{share:a}"})),
    c("attach_extra_top_key", "additionalProperties at the top", post(S, {**ATTACH_A, "foo": 1})),
    c("attach_extra_inner_key", "additionalProperties inside share", post(S, BAD_BODY)),
    c("attach_read_only_key", "attachfs's read_only extension key is not 2.97 schema",
      post(S, attach(read_only=True))),
    c("attach_tag_empty", "tag minLength 1", post(S, attach(tag=""))),
    c("attach_tag_bad_chars", "tag pattern ^[a-zA-Z0-9-]*$", post(S, attach(tag="bad tag!"))),
    c("attach_tag_255", "schema maxLength 255, but the DB column is 48: 500", post(S, attach(tag="t" * 255))),
    c("attach_tag_256", "tag maxLength 255", post(S, attach(tag="t" * 256))),
    c("attach_tag_37", "Nova accepts a 37-character tag", post(S, attach(tag="t" * 37))),
    c("attach_tag_48", "Nova's share_mapping.tag column is String(48)", post(S, attach(tag="t" * 48))),
    c("attach_tag_49", "one past the column: the schema allows it, the DB does not",
      post(S, attach(tag="t" * 49))),
    c("attach_tag_null", "tag null is not a string", post(S, attach(tag=None))),
    c("attach_tag_int", "tag must be a string", post(S, attach(tag=5))),
    c("attach_body_not_json", "invalid JSON body", post(S, raw="{")),
    c("attach_body_list", "a JSON list", post(S, [ATTACH_A])),
    c("attach_body_empty", "empty body with Content-Type json", post(S, raw="")),
    c("attach_no_body", "no body at all", post(S)),
    c("attach_content_type_text", "text/plain with a JSON body",
      post(S, ATTACH_A, content_type="text/plain")),
    c("attach_no_content_type", "JSON body without Content-Type",
      post(S, ATTACH_A, content_type=None)),
    c("attach_content_type_charset", "application/json; charset=UTF-8 accepted",
      post(S, ATTACH_A, content_type="application/json; charset=UTF-8")),
    # --- order of checks --------------------------------------------------------------------
    c("order_bad_body_unknown_server", "schema before server lookup",
      post("/servers/{missing}/shares", BAD_BODY), servers={}),
    c("order_bad_body_other_server", "schema before policy on another project's server",
      post("/servers/{other_server}/shares", BAD_BODY), servers={}),
    c("order_bad_body_reader", "schema before policy for a reader",
      post(S, BAD_BODY, user="reader")),
    c("order_bad_body_v2_96", "version routing before schema", post(S, BAD_BODY, version="2.96")),
    c("order_unknown_share_active", "server state checked before the share lookup",
      post(S, ATTACH_MISSING), servers=ACTIVE, shares={}),
    c("order_unknown_share_stopped", "unknown share on a stopped server: 404",
      post(S, ATTACH_MISSING), shares={}),
    c("order_unknown_share_reader", "policy before the share lookup",
      post(S, ATTACH_MISSING, user="reader"), shares={}),
    c("order_unknown_server_reader", "server lookup before policy",
      post("/servers/{missing}/shares", ATTACH_A, user="reader"), servers={}),
    c("order_other_server_unknown_share", "policy before the share lookup (other project)",
      post("/servers/{other_server}/shares", ATTACH_MISSING), servers={}, shares={}),
    c("order_error_share_active_server", "server state before share status",
      post(S, ATTACH_A), servers=ACTIVE, shares={"a": "error"}),
    # --- query parameters -------------------------------------------------------------------
    c("list_query_unknown", "list query schema has no properties", get(S, query="foo=1")),
    c("show_query_unknown", "show query schema has no properties", get(SA, query="foo=1"),
      attached=ATT_A),
    c("attach_query_unknown", "POST has no query schema", post(S, ATTACH_A, query="foo=1")),
    c("detach_query_unknown", "DELETE has no query schema", delete(SA, query="foo=1"),
      attached=ATT_A),
    # --- path ids ---------------------------------------------------------------------------
    c("show_share_id_not_uuid", "share id in path is not validated", get(S + "/not-a-uuid")),
    c("detach_share_id_not_uuid", "share id in path is not validated",
      delete(S + "/not-a-uuid")),
    c("list_server_id_not_uuid", "server id not a uuid", get("/servers/not-a-uuid/shares"),
      servers={}),
    c("list_unknown_server", "unknown server", get("/servers/{missing}/shares"), servers={}),
    c("show_unknown_server", "unknown server",
      get("/servers/{missing}/shares/{share:a}"), servers={}),
    c("attach_unknown_server", "unknown server",
      post("/servers/{missing}/shares", ATTACH_A), servers={}),
    c("detach_unknown_server", "unknown server",
      delete("/servers/{missing}/shares/{share:a}"), servers={}),
    c("show_not_attached", "existing share not attached to the server", get(SA)),
    # --- duplicates -------------------------------------------------------------------------
    c("dup_same_share_same_tag", "same share, same tag", post(S, attach(tag="t1")),
      attached=(("s", "a", "t1"),)),
    c("dup_same_share_other_tag", "same share, another tag", post(S, attach(tag="t2")),
      attached=(("s", "a", "t1"),)),
    c("dup_same_share_default_tag", "same share twice without a tag", post(S, ATTACH_A),
      attached=ATT_A),
    c("dup_other_share_same_tag", "another share with an attached share's tag",
      post(S, attach("b", tag="t1")), shares=NFS_AB, attached=(("s", "a", "t1"),)),
    c("dup_tag_equals_other_default", "tag = another attached share's default tag (its id)",
      post(S, attach("b", tag="{share:a}")), shares=NFS_AB, attached=ATT_A),
    c("dup_default_tag_equals_other_tag", "default tag (share id) = a tag already used",
      post(S, ATTACH_B), shares=NFS_AB, attached=(("s", "a", "{share:b}"),)),
    # --- state rules ------------------------------------------------------------------------
    c("attach_active", "attach needs a stopped server: 409", post(S, ATTACH_A), servers=ACTIVE),
    c("attach_error_server", "attach to a server in error: 409", post(S, ATTACH_A),
      servers=ERROR),
    c("detach_error_server", "detach from a server in error is allowed", delete(SA),
      servers=ERROR, attached=ATT_A),
    c("detach_active", "detach needs stopped or error: 409", delete(SA), servers=ACTIVE,
      attached=ATT_A),
    c("list_show_error_server", "list and show on a server in error", get(S), get(SA),
      servers=ERROR, attached=ATT_A),
    c("attach_share_error", "share in status error: 409", post(S, ATTACH_A),
      shares={"a": "error"}),
    c("attach_share_cephfs", "CEPHFS is a supported protocol", post(S, ATTACH_A),
      shares={"a": "cephfs"}),
    c("attach_share_cifs", "CIFS is not supported: 409", post(S, ATTACH_A), shares={"a": "cifs"}),
    c("detach_not_attached", "detach a share that is not attached: 404", delete(SA)),
    c("detach_unknown_share_active", "state check before the mapping lookup on detach",
      delete(S + "/{missing}"), servers=ACTIVE, shares={}),
    c("attach_locked_server", "a locked server still takes a share",
      action({"lock": None}), post(S, ATTACH_A)),
    # --- permissions ------------------------------------------------------------------------
    c("reader_list", "reader may list", get(S, user="reader"), attached=ATT_A),
    c("reader_attach", "reader may not attach: 403", post(S, ATTACH_A, user="reader")),
    c("reader_detach", "reader may not detach: 403", delete(SA, user="reader"), attached=ATT_A),
    c("other_list", "other project's member on A's server: 403", get(S, user="other"),
      attached=ATT_A),
    c("other_show", "other project's member on A's server: 403", get(SA, user="other"),
      attached=ATT_A),
    c("other_attach", "other project's member on A's server: 403",
      post(S, ATTACH_A, user="other")),
    c("other_detach", "other project's member on A's server: 403", delete(SA, user="other"),
      attached=ATT_A),
    c("member_on_other_server_list", "A's member on B's server: 403",
      get("/servers/{other_server}/shares"), servers={}, shares={}),
    c("other_attach_foreign_share", "B attaches A's share to B's own server: Manila hides it",
      post("/servers/{other_server}/shares", ATTACH_A, user="other"), servers={}),
    c("admin_list", "admin of A lists", get(S, user="admin"), attached=ATT_A),
    c("admin_list_other_server", "admin of A on B's server", get("/servers/{other_server}/shares",
                                                                  user="admin"),
      servers={}, shares={}),
    # --- server actions with a share attached ------------------------------------------------
    c("action_shelve", "shelve blocked with a share", action({"shelve": None}), attached=ATT_A),
    c("action_suspend", "suspend blocked with a share", action({"suspend": None}),
      servers=ACTIVE, attached=ATT_A),
    c("action_migrate_member", "cold migrate is admin only", action({"migrate": None}),
      attached=ATT_A),
    c("action_migrate_admin", "cold migrate blocked with a share",
      action({"migrate": None}, user="admin"), attached=ATT_A),
    c("action_live_migrate_member", "live migrate is admin only",
      action({"os-migrateLive": {"host": None, "block_migration": "auto"}}),
      servers=ACTIVE, attached=ATT_A),
    c("action_live_migrate_admin", "live migrate blocked with a share",
      action({"os-migrateLive": {"host": None, "block_migration": "auto"}}, user="admin"),
      servers=ACTIVE, attached=ATT_A),
    c("action_evacuate_member", "evacuate is admin only", action({"evacuate": {}}),
      attached=ATT_A),
    c("action_evacuate_admin", "evacuate with a share (host is up)",
      action({"evacuate": {}}, user="admin"), attached=ATT_A),
    c("action_resize", "resize to flavor conf-1024 (the recorder makes it) with a share",
      action({"resize": {"flavorRef": "conf-1024"}}), attached=ATT_A),
    c("action_resize_unknown_flavor", "resize: unknown flavor vs the share",
      action({"resize": {"flavorRef": "conf-unknown-flavor"}}), attached=ATT_A),
    c("action_rebuild", "rebuild blocked with a share (checked before the image)",
      action({"rebuild": {"imageRef": "{missing}"}}), attached=ATT_A),
    c("action_lock", "lock is not blocked by a share", action({"lock": None}), attached=ATT_A),
    c("action_pause", "pause is not blocked by a share", action({"pause": None}),
      servers=ACTIVE, attached=ATT_A),
    c("action_create_image", "createImage is not blocked by a share",
      action({"createImage": {"name": "conf-snap"}}), attached=ATT_A),
    c("server_delete_with_share", "deleting a server with a share attached",
      Step("DELETE", "/servers/{server:s}"), attached=ATT_A),
    # --- HTTP details -----------------------------------------------------------------------
    c("unknown_route", "unknown route under /v2.1", get("/servers/{server:s}/sharez")),
    c("put_share", "wrong method on one attachment: 405",
      Step("PUT", SA, body={"share": {"tag": "x"}}), attached=ATT_A),
    c("delete_collection", "DELETE on the collection: 405", delete(S)),
    c("list_trailing_slash", "trailing slash on the collection", get(S + "/")),
)


def by_name() -> dict[str, Case]:
    out: dict[str, Case] = {}
    for case in CASES:
        if case.name in out:
            raise ValueError(f"duplicate case name {case.name}")
        out[case.name] = case
    return out


def _check() -> None:
    import re

    names = by_name()
    for case in names.values():
        for alias, state in case.servers.items():
            assert state in SERVER_STATES, (case.name, alias, state)
        for alias, kind in case.shares.items():
            assert kind in SHARE_KINDS, (case.name, alias, kind)
        for server, share, _tag in case.attached:
            assert server in case.servers and share in case.shares, case.name
        for step in case.steps:
            assert step.user in USERS, (case.name, step.user)
            text = repr((step.path, step.body, step.raw, step.query))
            for kind, alias in re.findall(r"\{(server|share):(\w+)\}", text):
                pool = case.servers if kind == "server" else case.shares
                assert alias in pool, (case.name, kind, alias)


_check()
