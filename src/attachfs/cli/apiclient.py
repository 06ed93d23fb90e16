"""The HTTP side of the client commands: a small compute API client (microversion 2.97) on httpx.

`make_http_client` is the one place an `httpx.Client` is made; tests replace it with one that
talks to the app in-process (starlette's TestClient is an httpx.Client).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:8774"
DEFAULT_TOKEN = "demo:demo"
MICROVERSION = "2.97"
# attachfs's extension (api/microversion.py): 1.0 adds `os-extended-shares:shares_attached` to
# server bodies (the server list shows each server's shares), 1.1 `read_only` and 1.3
# `transport` to attachments; without it bodies are exactly the compute service's.
EXTENSION = "1.3"
API_HEADERS = {
    "OpenStack-API-Version": f"compute {MICROVERSION}, attachfs {EXTENSION}",
    "X-OpenStack-Nova-API-Version": MICROVERSION,
    "Accept": "application/json",
}


class CliError(Exception):
    """An expected failure: printed as one line on stderr, exit code 1, no traceback."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status

    def __str__(self) -> str:
        if self.status is not None:
            return f"Error (HTTP {self.status}): {self.message}"
        return f"Error: {self.message}"


class ApiError(CliError):
    """The API answered with a fault body such as {"itemNotFound": {"code": 404, ...}}."""


def make_http_client(url: str, timeout: float = 30.0) -> httpx.Client:
    return httpx.Client(base_url=url, timeout=timeout)


def _fault_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip() or response.reason_phrase
    if isinstance(body, dict) and len(body) == 1:
        (inner,) = body.values()
        if isinstance(inner, dict) and "message" in inner:
            return str(inner["message"])
    if isinstance(body, dict) and "detail" in body:
        return str(body["detail"])
    return response.text.strip() or response.reason_phrase


def is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


@dataclass
class Api:
    """Compute API calls the CLI makes; every method returns decoded JSON (or None)."""

    url: str
    token: str

    def __post_init__(self) -> None:
        self._http: httpx.Client | None = None

    def _client(self) -> httpx.Client:
        if self._http is None:
            self._http = make_http_client(self.url)
        return self._http

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    def request(self, method: str, path: str, body: Any = None,
                params: dict[str, str] | None = None) -> Any:
        headers = {**API_HEADERS, "X-Auth-Token": self.token}
        try:
            response = self._client().request(method, path, json=body, headers=headers,
                                              params=params)
        except httpx.ConnectError as exc:
            raise CliError(f"cannot connect to the attachfs API at {self.url} ({exc}); "
                           "is `attachfs serve` running? Set --url or ATTACHFS_URL") from exc
        except httpx.TimeoutException as exc:
            raise CliError(f"the attachfs API at {self.url} did not answer in time") from exc
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise CliError(f"request to {self.url} failed: {exc}") from exc
        if response.status_code >= 400:
            raise ApiError(_fault_message(response), response.status_code)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError as exc:
            raise CliError(f"the API answered {method} {path} with a body that is not JSON") \
                from exc

    # ---- servers ------------------------------------------------------------------------
    def list_servers(self, detail: bool = True) -> list[dict[str, Any]]:
        body = self.request("GET", "/v2.1/servers/detail" if detail else "/v2.1/servers")
        return list(body["servers"])

    def get_server(self, server_id: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/v2.1/servers/{server_id}")["server"])

    def create_server(self, spec: dict[str, Any]) -> dict[str, Any]:
        return dict(self.request("POST", "/v2.1/servers", {"server": spec})["server"])

    def delete_server(self, server_id: str) -> None:
        self.request("DELETE", f"/v2.1/servers/{server_id}")

    def action(self, server_id: str, name: str, args: Any = None) -> Any:
        return self.request("POST", f"/v2.1/servers/{server_id}/action", {name: args})

    def list_images(self) -> list[dict[str, Any]]:
        return list(self.request("GET", "/v2.1/images")["images"])

    def resolve_server(self, ref: str) -> str:
        """A server id from a name or an id; a name shared by several servers is an error."""
        servers = self.list_servers(detail=False)
        if any(s["id"] == ref for s in servers):
            return ref
        named = [s["id"] for s in servers if s["name"] == ref]
        if len(named) > 1:
            raise CliError(f"More than one server exists with the name '{ref}' "
                           f"({', '.join(named)}); use the ID instead")
        if named:
            return str(named[0])
        if is_uuid(ref):  # let the API say why (e.g. 404 for another project's server)
            return ref
        raise CliError(f"No server with a name or ID of '{ref}' exists.")

    # ---- filesystems (built-in shares) --------------------------------------------------
    def list_filesystems(self) -> list[dict[str, Any]]:
        return list(self.request("GET", "/v2.1/os-filesystem")["fs_entries"])

    def get_filesystem(self, name: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/v2.1/os-filesystem/{name}")["fs_entry"])

    def create_filesystem(self, name: str, entry: dict[str, Any]) -> dict[str, Any]:
        body = self.request("PUT", f"/v2.1/os-filesystem/{name}", {"fs_entry": entry})
        return dict(body["fs_entry"])

    def delete_filesystem(self, name: str) -> None:
        self.request("DELETE", f"/v2.1/os-filesystem/{name}")

    def find_filesystem(self, ref: str) -> dict[str, Any] | None:
        entries = self.list_filesystems()
        for key in ("id", "name"):
            for entry in entries:
                if entry[key] == ref:
                    return entry
        return None

    def filesystem_name(self, ref: str) -> str:
        """The name the os-filesystem API is keyed by, from a name or an id."""
        if is_uuid(ref):
            entry = self.find_filesystem(ref)
            if entry is not None:
                return str(entry["name"])
        return ref

    def resolve_share(self, ref: str) -> str:
        """A share id from a built-in share name or an id."""
        entry = self.find_filesystem(ref)
        if entry is not None:
            return str(entry["id"])
        if is_uuid(ref):  # e.g. a share no longer listed: the API decides
            return ref
        raise CliError(f"No share with a name or ID of '{ref}' exists.")

    # ---- attachments (2.97) -------------------------------------------------------------
    def list_attachments(self, server_id: str) -> list[dict[str, Any]]:
        return list(self.request("GET", f"/v2.1/servers/{server_id}/shares")["shares"])

    def get_attachment(self, server_id: str, share_id: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/v2.1/servers/{server_id}/shares/{share_id}")["share"])

    def mount_info(self, server_id: str, share_id: str) -> dict[str, Any]:
        path = f"/v2.1/servers/{server_id}/shares/{share_id}/mount_info"
        return dict(self.request("GET", path)["mount_info"])

    def attach(self, server_id: str, share_id: str, tag: str | None, read_only: bool = False,
               transport: str | None = None) -> dict[str, Any]:
        spec: dict[str, Any] = {"share_id": share_id}
        if tag is not None:
            spec["tag"] = tag
        if read_only:
            spec["read_only"] = True
        if transport is not None:
            spec["transport"] = transport
        body = self.request("POST", f"/v2.1/servers/{server_id}/shares", {"share": spec})
        return dict(body["share"])

    def detach(self, server_id: str, share_id: str) -> None:
        self.request("DELETE", f"/v2.1/servers/{server_id}/shares/{share_id}")


# ---- waiting -------------------------------------------------------------------------------

POLL_INTERVAL = 1.0
GONE = object()  # what a poll returns once the resource answers 404


def poll(fetch: Callable[[], Any], done: Callable[[Any], str | None], timeout: float,
         what: str, on_tick: Callable[[str], None] = lambda _status: None) -> Any:
    """Call `fetch` until `done(result)` says "ok" (return the result) or "failed" (raise).

    `fetch` may return GONE; `done` returns None to keep waiting, "ok", or an error message.
    """
    deadline = time.monotonic() + timeout
    last = "unknown"
    while True:
        try:
            current = fetch()
        except ApiError as exc:
            if exc.status != 404:
                raise
            current = GONE
        verdict = done(current)
        if verdict == "ok":
            return current
        if verdict is not None:
            raise CliError(verdict)
        last = "gone" if current is GONE else _describe(current)
        on_tick(last)
        if time.monotonic() >= deadline:
            raise CliError(f"timed out after {timeout:g} s waiting for {what} "
                           f"(last status: {last})")
        time.sleep(min(POLL_INTERVAL, max(0.0, deadline - time.monotonic())))


def server_reached(target: str | object, label: str) -> Callable[[Any], str | None]:
    """Verdict for `poll` on a server: `target` status with no task in flight (or GONE)."""

    def done(server: Any) -> str | None:
        if server is GONE:
            return "ok" if target is GONE else f"server {label} disappeared"
        if server.get("OS-EXT-STS:task_state"):
            return None
        if server["status"] == target:
            return "ok"
        if server["status"] == "ERROR":
            fault = (server.get("fault") or {}).get("message") or "no fault recorded"
            return f"server {label} is in ERROR: {fault}"
        return None

    return done


def attachment_settled(gone: bool, label: str) -> Callable[[Any], str | None]:
    """Verdict for `poll` on an attachment: inactive/active (attach) or gone (detach)."""

    def done(mapping: Any) -> str | None:
        if mapping is GONE:
            return "ok" if gone else f"the attachment of {label} disappeared"
        if mapping["status"] == "error":
            return (f"the attachment of {label} is in error; see the agent log, then retry "
                    "`server add share` or `server remove share`")
        if not gone and mapping["status"] in ("inactive", "active"):
            return "ok"
        return None

    return done


def _describe(resource: Any) -> str:
    if not isinstance(resource, dict):
        return str(resource)
    status = str(resource.get("status", "unknown"))
    task = resource.get("OS-EXT-STS:task_state")
    return f"{status} ({task})" if task else status
