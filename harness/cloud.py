"""attachfs in a small real cloud: a real `attachfs serve` that authenticates with a real
Keystone (harness/keystone.py), takes its shares from a real Manila found in that Keystone's
catalog (harness/manila.py, keystone mode), and is itself in the catalog as the compute
service, so that the unchanged `openstack` CLI with password auth finds every part. Shared by
tests/clients/test_openstack_cli_cephfs.py and the operator's demo (harness/demo_ceph.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

from harness.keystone import REGION, Keystone, authtoken_overrides

# attachfs's account for Manila ([manila] username). Besides `service` (its X-Service-Token is
# what makes Manila's locks service locks), it has Manila's `admin` role: the agent reads a
# CEPHFS rule's cephx key (and checks each host's rules) with its own credentials alone, without
# the user's token, and Manila 23 shows another project's share and rule only to an admin.
MANILA_CLIENT_USER, MANILA_CLIENT_PASSWORD = "attachfs-manila", "attachfs-manila-secret"  # noqa: S105
MANILA_CLIENT_ROLES = ["service", "admin"]


def serve_config(keystone: Keystone, host: str, manila_user: str = MANILA_CLIENT_USER,
                 manila_password: str = MANILA_CLIENT_PASSWORD,
                 **extra: object) -> str:
    """TOML for `attachfs serve`: Keystone auth for its API (keystonemiddleware as attachfs's
    service user), shares from Manila through the catalog (sharev2 in REGION, password auth
    as `manila_user`), the agent's host named `host` (its cephx ID is attachfs-<host>); `extra`:
    more dotted settings (`agent__stop_timeout=0.0` for "agent.stop_timeout")."""
    settings: dict[str, object] = {
        **authtoken_overrides(keystone.url),
        "storage.provider": "manila",
        "manila.auth_type": "password", "manila.auth_url": keystone.v3,
        "manila.username": manila_user, "manila.password": manila_password,
        "manila.project_name": "service", "manila.region_name": REGION,
        "manila.access_timeout": 30.0,
        "agent.host": host,
        **{key.replace("__", "."): value for key, value in extra.items()},
    }
    return toml_of(settings)


def toml_of(settings: dict[str, object]) -> str:
    """Dotted keys ("api.auth_strategy") as TOML tables. Values: str, bool, int, float or a
    list of str; a JSON string is a valid TOML basic string for the values used here."""
    tables: dict[str, list[str]] = {}
    for dotted, value in settings.items():
        table, _, key = dotted.rpartition(".")
        tables.setdefault(table, []).append(f"{key} = {_toml_value(value)}")
    top = "".join(line + "\n" for line in tables.pop("", []))  # keys of no table come first
    return top + "".join(f"[{table}]\n" + "\n".join(lines) + "\n\n"
                         for table, lines in tables.items())


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "[" + ", ".join(json.dumps(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


@contextmanager
def attachfs_in_catalog(keystone: Keystone, url: str) -> Iterator[None]:
    """attachfs at `url` in the catalog for the block: `compute` at …/v2.1 (no project id in
    it, as the compute service registers itself) and, because this throw-away cloud has no
    image service, `image` at …/image (attachfs's read-only view of the guest images it can
    boot: `server create --image NAME` looks the name up there). Removed on the way out."""
    ids: list[str] = []
    try:
        ids.append(keystone.register("compute", "nova", f"{url}/v2.1"))
        ids.append(keystone.register("image", "glance", f"{url}/image"))
        yield
    finally:
        for service_id in ids:
            keystone.unregister(service_id)


@contextmanager
def manila_client_user(keystone: Keystone) -> Iterator[str]:
    """MANILA_CLIENT_USER (MANILA_CLIENT_ROLES in project service) for the block; its id."""
    user_id = keystone.create_user(MANILA_CLIENT_USER, MANILA_CLIENT_PASSWORD, "service",
                                   MANILA_CLIENT_ROLES)
    try:
        yield user_id
    finally:
        keystone.delete_user(user_id)
