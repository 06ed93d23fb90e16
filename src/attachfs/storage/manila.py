"""Shares from the shared-file-system service (Manila), through openstacksdk.

One Connection, made with the service credentials of [manila] on first use, finds the service's
endpoint and holds the HTTP connections (kept alive, shared by every call). Each call
authenticates as its context: with the requester's token (and attachfs's own token beside it as
X-Service-Token, so Manila's records name the user and its locks are service locks the user
cannot drop) when the API ran with Keystone, else with the service credentials. Manila's
answers are read at the REST level (microversion [manila] api_version, >= 2.82 for access rule
locks), and every Manila, keystoneauth or connection failure is turned into an attachfs error
here, naming the share service and what to do about it.

A compute host's access is one rule per (share, host): `ip` [manila] host_address for NFS,
`cephx` [manila] cephx_access_to (default attachfs-<host>) for CEPHFS, created locked
(visibility and deletion) and marked with metadata attachfs_host=<host>. Rule changes on one
share are serialized across agents by a lease on its row in attachfs's database
(share_service_locks), never by a transaction held open while Manila is asked.
"""

from __future__ import annotations

import contextlib
import threading
import time
import warnings
from collections.abc import Collection, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from keystoneauth1 import exceptions as ks_exc
from keystoneauth1 import plugin
from keystoneauth1 import session as ks_session
from keystoneauth1.adapter import Adapter
from keystoneauth1.service_token import ServiceTokenAuthWrapper
from openstack import connection
from openstack import exceptions as sdk_exc
from openstack import warnings as sdk_warnings

from attachfs.config import Config
from attachfs.core.rules import ShareProtocol
from attachfs.db.engine import Database
from attachfs.db.share_leases import share_lease
from attachfs.errors import (
    AttachfsError,
    BackendError,
    NotFound,
    PermanentError,
    ServiceUnavailable,
    TemporaryError,
)
from attachfs.storage.base import HostCredentials, RequestContext, ShareInfo
from attachfs.storage.manila_auth import UserToken, service_auth

SERVICE = "share service (Manila)"
RULE_TYPES = {ShareProtocol.NFS: "ip", ShareProtocol.CEPHFS: "cephx"}
HOST_KEY = "attachfs_host"  # access rule metadata: which compute host the rule is for
HTTP_TIMEOUT = 10.0  # per request
GONE = object()
# openstacksdk warns about its own internal call on every GET (its cache key); not ours to fix.
warnings.filterwarnings("ignore", message="The 'service_type' parameter is unnecesary",
                        category=sdk_warnings.RemovedInSDK50Warning)


class ShareServiceUnavailable(ServiceUnavailable):
    """The API could not ask the share service (503): the request may be retried later."""


@dataclass(frozen=True)
class _ShareApi:
    """The shared proxy, and the auth one call's requests carry."""

    proxy: Adapter
    auth: plugin.BaseAuthPlugin


class ManilaShareProvider:
    name = "manila"

    def __init__(self, config: Config, db: Database) -> None:
        self.cfg, self.db, self.host = config.manila, db, config.agent.host
        self._service_auth = service_auth(self.cfg)  # one plugin: its token is reused
        self._discovery_cache: dict[str, Any] = {}  # version documents, shared by connections
        # share -> when this agent first found its rule on the way (to active, or away)
        self._since: dict[str, float] = {}
        self._errors: dict[str, int] = {}  # share -> rules of ours that went to `error`
        self._shared: Adapter | None = None  # the proxy every call uses (_proxy)
        self._proxy_lock = threading.Lock()

    # ---- connections -------------------------------------------------------------------------
    def _api(self, requester: RequestContext | None, retry: str) -> _ShareApi:
        """The shared proxy and this call's auth: the requester's token when it has one."""
        auth: plugin.BaseAuthPlugin = self._service_auth
        if requester is not None and requester.auth_token:
            auth = ServiceTokenAuthWrapper(
                user_auth=UserToken(requester.auth_token, requester.project_id,
                                     self._service_auth),
                service_auth=self._service_auth)
        return _ShareApi(self._proxy(retry), auth)

    def _proxy(self, retry: str) -> Adapter:
        """The shared-file-system proxy, made once (making it may ask the service: endpoint
        and version discovery; a failure is not kept, the next call tries again). Made per
        call, a Connection and its HTTP session cost 23-64 ms of every call to the service
        (measured: docs/bench.md, section 10), and no connection was ever reused."""
        with self._proxy_lock:
            if self._shared is None:
                session = ks_session.Session(auth=self._service_auth, timeout=HTTP_TIMEOUT,
                                             app_name="attachfs",
                                             discovery_cache=self._discovery_cache)
                options: dict[str, Any] = {"shared_file_system_api_version": "2"}
                if self.cfg.endpoint_override:
                    options["shared_file_system_endpoint_override"] = self.cfg.endpoint_override
                with self._translated(retry):
                    conn = connection.Connection(session=session,
                                                 region_name=self.cfg.region_name or None,
                                                 **options)
                    self._shared = conn.shared_file_system
            return self._shared

    def _where(self) -> str:
        return self.cfg.endpoint_override or f"the catalog endpoint from {self.cfg.auth_url}"

    @contextlib.contextmanager
    def _translated(self, retry: str) -> Iterator[None]:
        """keystoneauth / openstacksdk failures -> BackendError naming the share service."""
        try:
            yield
        except AttachfsError:
            raise
        except ks_exc.ConnectionError as exc:
            if self.cfg.auth_url and self.cfg.auth_url in str(exc):
                raise TemporaryError(f"identity service (Keystone) unreachable at "
                                     f"{self.cfg.auth_url}, so the {SERVICE} cannot be asked: "
                                     f"{_short(exc)}; {retry}") from exc
            raise TemporaryError(f"{SERVICE} unreachable at {self._where()}: {_short(exc)}; "
                                 f"{retry}") from exc
        except ks_exc.EndpointNotFound as exc:
            raise PermanentError(f"{SERVICE} not found in the service catalog: {_short(exc)}; "
                                 "check [manila] region_name / endpoint_override") from exc
        except ks_exc.DiscoveryFailure as exc:  # what an unreachable endpoint looks like here
            raise TemporaryError(f"{SERVICE} unreachable at {self._where()} (no version "
                                 f"document: {_short(exc)}); {retry}") from exc
        except (ks_exc.Unauthorized, ks_exc.AuthorizationFailure) as exc:
            raise PermanentError(f"attachfs's credentials for the {SERVICE} were refused: "
                                 f"{_short(exc)}; check the [manila] credentials") from exc
        except (ks_exc.ClientException, sdk_exc.SDKException) as exc:
            raise TemporaryError(f"{SERVICE} request failed: {_short(exc)}; {retry}") from exc

    def _request(self, api: _ShareApi, method: str, path: str, retry: str,
                 body: dict[str, Any] | None = None,
                 params: dict[str, str] | None = None) -> Any:
        with self._translated(retry):
            return api.proxy.request(path, method, json=body, params=params, raise_exc=False,
                                     microversion=self.cfg.api_version, auth=api.auth)

    def _call(self, api: _ShareApi, method: str, path: str, retry: str,
              body: dict[str, Any] | None = None, params: dict[str, str] | None = None) -> Any:
        """One REST call; the decoded body, GONE on 404, else a BackendError."""
        r = self._request(api, method, path, retry, body, params)
        if r.status_code == 404:
            return GONE
        self._check(r, method, path, retry)
        return r.json() if r.content else {}

    @staticmethod
    def _check(r: Any, method: str, path: str, retry: str) -> None:
        """A failed answer -> BackendError (404 is the caller's to interpret)."""
        if r.status_code < 300:
            return
        detail = _detail(r)
        if r.status_code >= 500:
            raise TemporaryError(f"the {SERVICE} failed ({r.status_code}) on {method} {path}: "
                                 f"{detail}; {retry}")
        if r.status_code == 401:
            raise PermanentError(f"the {SERVICE} refused the credentials (401): {detail}; "
                                 "the user's token may have expired: repeat the request")
        if r.status_code == 403:
            raise PermanentError(f"the {SERVICE} refused {method} {path} (403): {detail}; "
                                 "the user needs the right to manage access to the share")
        raise PermanentError(f"the {SERVICE} refused {method} {path} ({r.status_code}): {detail}")

    # ---- ShareProvider -----------------------------------------------------------------------
    def get_share(self, share_id: str, context: RequestContext) -> ShareInfo:
        """The share as the requester sees it (API side: errors are HTTP faults)."""
        retry = "retry when it is back"
        try:
            api = self._api(context, retry)
            r = self._request(api, "GET", f"/shares/{share_id}", retry)
            if r.status_code in (403, 404):  # not visible to this user: the same as missing
                raise NotFound(f"Share {share_id} could not be found.")
            self._check(r, "GET", f"/shares/{share_id}", retry)
            share = r.json()
            exports = self._call(api, "GET", f"/shares/{share_id}/export_locations", retry)
        except BackendError as exc:
            raise ShareServiceUnavailable(exc.message) from exc
        s = share["share"]
        return ShareInfo(
            id=s["id"], name=s.get("name") or s["id"], status=s["status"],
            protocol=(s.get("share_proto") or "").upper(),
            export_locations=_preferred_first([] if exports is GONE else
                                              exports.get("export_locations", [])),
            project_id=s.get("project_id") or "", size_gib=int(s.get("size") or 0))

    def list_shares(self, context: RequestContext) -> list[ShareInfo]:
        """The shares the requester sees in the service (one request; no export locations)."""
        retry = "retry when it is back"
        api = self._api(context, retry)
        found = self._call(api, "GET", "/shares/detail", retry)
        shares = [] if found is GONE else found.get("shares", [])
        return [ShareInfo(id=s["id"], name=s.get("name") or s["id"], status=s["status"],
                          protocol=(s.get("share_proto") or "").upper(), export_locations=(),
                          project_id=s.get("project_id") or "", size_gib=int(s.get("size") or 0))
                for s in shares]

    def grant_access(self, share_id: str, host: str, access_level: str, reason: str,
                     requester: RequestContext) -> bool:
        """Create (or find) this host's rule; True once it is `active`. The service applies a
        rule asynchronously: False means "not yet, ask again" (nothing here waits)."""
        retry = "retry the attach when it is back"
        api = self._api(requester, retry)
        proto = self._protocol(api, share_id, retry)
        if proto is None:
            raise PermanentError(f"share {share_id} no longer exists in the {SERVICE}")
        if proto not in RULE_TYPES:
            raise PermanentError(f"share {share_id} uses protocol {proto or 'unknown'}; attachfs "
                                 f"attaches {' and '.join(RULE_TYPES)} shares only")
        access_type, access_to = self._access_for(proto, host)
        with self._share_lease(share_id) as mine:  # the look-up and the change only
            if not mine:
                return False  # another agent is changing this share's rules: ask again soon
            rule = self._find_rule(api, share_id, host, access_type, access_to, retry)
            if rule is None:
                rule = self._create_rule(api, share_id, host, access_type, access_to,
                                         access_level, reason, requester, retry)
            elif rule["state"] == "error" and share_id not in self._since:
                # an old failed rule (not the one this request waits for): start over
                self._failed_rule(share_id, host)
                self._deny(api, share_id, rule, retry)
                return False
            elif rule["state"] in ("queued_to_deny", "denying"):
                return self._pending(share_id, rule, "active")  # recreated once it is gone
            elif rule["access_level"] == "ro" and access_level == "rw" \
                    and rule["state"] != "error":
                raise PermanentError(
                    f"host {host} already has a read-only access rule on share {share_id} in "
                    f"the {SERVICE}; a read-write attachment needs it gone (detach the "
                    "read-only attachments on this host first)")
        return self._pending(share_id, rule, "active")

    def revoke_access(self, share_id: str, host: str, requester: RequestContext) -> bool:
        """Unlock and deny this host's rule; True once it is gone (False: ask again)."""
        retry = "retry the detach when it is back"
        api = self._api(requester, retry)
        proto = self._protocol(api, share_id, retry)
        if proto is None or proto not in RULE_TYPES:
            return True  # the share and its rules are gone, or never granted (refused)
        access_type, access_to = self._access_for(proto, host)
        with self._share_lease(share_id) as mine:
            if not mine:
                return False
            rule = self._find_rule(api, share_id, host, access_type, access_to, retry)
            if rule is None:
                self._since.pop(share_id, None)
                return True
            if rule["state"] not in ("queued_to_deny", "denying"):
                self._deny(api, share_id, rule, retry)
        return self._pending(share_id, rule, "gone")

    def access_levels(self, share_ids: Collection[str], host: str) -> dict[str, str]:
        """This host's rules as the service has them (with the service's own credentials):
        the service lists rules per share, so a look-up each."""
        retry = "the agent looks again later"
        api = self._api(None, retry)
        found = {share_id: self._access_of(api, share_id, host, retry) for share_id in share_ids}
        return {share_id: level for share_id, level in found.items() if level is not None}

    def _access_of(self, api: _ShareApi, share_id: str, host: str, retry: str) -> str | None:
        proto = self._protocol(api, share_id, retry)
        if proto is None or proto not in RULE_TYPES:
            return None
        access_type, access_to = self._access_for(proto, host)
        rule = self._find_rule(api, share_id, host, access_type, access_to, retry)
        if rule is None or rule["state"] in ("error", "queued_to_deny", "denying"):
            return None
        return str(rule["access_level"])

    def host_credentials(self, share_id: str, host: str) -> HostCredentials | None:
        """For a CEPHFS share, the cephx ID and key of this host's active rule (the service
        shows a rule's key once the backend has made it)."""
        retry = "the agent tries again"
        api = self._api(None, retry)
        proto = self._protocol(api, share_id, retry)
        if proto is None:
            raise PermanentError(f"share {share_id} no longer exists in the {SERVICE}")
        if proto != ShareProtocol.CEPHFS:
            return None
        access_type, access_to = self._access_for(proto, host)
        rule = self._find_rule(api, share_id, host, access_type, access_to, retry)
        if rule is None or rule.get("state") != "active":
            raise TemporaryError(f"this host's access rule on share {share_id} is not active "
                                 f"in the {SERVICE} yet")
        shown = self._call(api, "GET", f"/share-access-rules/{rule['id']}", retry)
        key = None if shown is GONE else shown.get("access", {}).get("access_key")
        if not key:
            raise PermanentError(f"the {SERVICE} gave no cephx key for this host "
                                 f"({access_to}) on share {share_id}")
        return HostCredentials(str(rule["access_to"]), str(key))

    # ---- rules -------------------------------------------------------------------------------
    def _protocol(self, api: _ShareApi, share_id: str, retry: str) -> str | None:
        """The share's protocol, upper case ("" when it has none); None: the share is gone."""
        share = self._call(api, "GET", f"/shares/{share_id}", retry)
        if share is GONE:
            return None
        return str(share["share"].get("share_proto") or "").upper()

    def _access_for(self, proto: str, host: str) -> tuple[str, str]:
        if proto == ShareProtocol.NFS:
            return "ip", self.cfg.host_address
        return "cephx", self.cfg.cephx_access_to or f"attachfs-{host}"

    def _create_rule(self, api: _ShareApi, share_id: str, host: str, access_type: str,
                     access_to: str, access_level: str, reason: str, requester: RequestContext,
                     retry: str) -> dict[str, Any]:
        """A new rule, locked (visibility and deletion) with a reason naming the requester."""
        lock_reason = (f"attachfs: compute host {host} mounts this share ({reason}; requested "
                       f"by user {requester.user_id} of project {requester.project_id}"
                       + (f", request {requester.request_id}" if requester.request_id else "")
                       + ")")[:1023]
        created = self._call(api, "POST", f"/shares/{share_id}/action", retry, body={
            "allow_access": {
                "access_type": access_type, "access_to": access_to,
                "access_level": access_level, "metadata": {HOST_KEY: host},
                "lock_visibility": True, "lock_deletion": True, "lock_reason": lock_reason}})
        if created is GONE:
            raise PermanentError(f"share {share_id} no longer exists in the {SERVICE}")
        rule: dict[str, Any] = created["access"]
        return rule

    def _find_rule(self, api: _ShareApi, share_id: str, host: str, access_type: str,
                   access_to: str, retry: str) -> dict[str, Any] | None:
        """This host's rule: ours by metadata, or any rule for the same access_to (reused)."""
        found = self._call(api, "GET", "/share-access-rules", retry, params={"share_id": share_id})
        if found is GONE:
            raise PermanentError(f"share {share_id} no longer exists in the {SERVICE}")
        rules: list[dict[str, Any]] = found.get("access_list", [])
        for rule in rules:
            if (rule.get("metadata") or {}).get(HOST_KEY) == host:
                return rule
        if host != self.host:  # another host's (a fence): by its mark only, never our address
            return None
        for rule in rules:
            if rule.get("access_type") == access_type and rule.get("access_to") == access_to:
                return rule
        return None

    def _deny(self, api: _ShareApi, share_id: str, rule: dict[str, Any], retry: str) -> None:
        """Delete the rule, lifting its locks (unrestrict)."""
        self._call(api, "POST", f"/shares/{share_id}/action", retry, body={
            "deny_access": {"access_id": rule["id"], "unrestrict": True}})

    def _pending(self, share_id: str, rule: dict[str, Any], want: str) -> bool:
        """True when `rule` (as just read) is where we want it: `active`, or "gone" (a rule
        being denied is not). Otherwise False, until `access_timeout` has passed since this
        agent first found it on the way: then a PermanentError that says where it is stuck."""
        state = rule.get("state", "unknown")
        if want == "active" and state == "active":
            self._since.pop(share_id, None)
            self._errors.pop(share_id, None)
            return True
        if want == "active" and state == "error":
            raise PermanentError(
                f"the {SERVICE} could not give this host access to share {share_id}: its "
                f"access rule {rule['id']} is in state error; the share's backend refused it "
                "(see manila-share's log), then retry the attach")
        since = self._since.setdefault(share_id, time.monotonic())
        if time.monotonic() - since > self.cfg.access_timeout:
            self._since.pop(share_id, None)
            doing = "apply" if want == "active" else "remove"
            raise PermanentError(
                f"the {SERVICE} did not {doing} access rule {rule['id']} on share {share_id} "
                f"within {self.cfg.access_timeout:g}s (rule state: {state}); check that its "
                "manila-share service is running, then retry")
        return False

    def _failed_rule(self, share_id: str, host: str) -> None:
        """A rule that went to `error` is denied and made again, once; twice is the end."""
        self._errors[share_id] = self._errors.get(share_id, 0) + 1
        if self._errors[share_id] > 2:
            self._errors.pop(share_id, None)
            raise PermanentError(f"the {SERVICE} keeps failing the access rule for host {host} "
                                 f"on share {share_id}; see manila-share's log")

    def _share_lease(self, share_id: str) -> AbstractContextManager[bool]:
        return share_lease(self.db, share_id, self.host)


def _preferred_first(locations: list[dict[str, Any]]) -> tuple[str, ...]:
    """Export paths, the preferred first; admin-only ones only when there is nothing else."""
    usable = [loc for loc in locations if not loc.get("is_admin_only")] or locations
    usable.sort(key=lambda loc: not loc.get("preferred"))
    return tuple(str(loc["path"]) for loc in usable if loc.get("path"))


def _detail(response: Any) -> str:
    try:
        body = response.json()
        inner = next(iter(body.values())) if isinstance(body, dict) and body else body
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
    except (ValueError, StopIteration):
        pass
    return (response.text or response.reason or "").strip()[:300]


def _short(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 300 else text[:300] + "…"

