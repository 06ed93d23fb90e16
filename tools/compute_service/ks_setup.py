"""Idempotent Keystone setup for the side-by-side compute service: project `service`, one service
user per service (role admin + service there), and the catalog (identity from bootstrap; compute,
placement, image, network, sharev2 added here). Run with the stack's venv python:

    python ks_setup.py --auth-url http://127.0.0.1:19500/v3 --admin-password P \
        --service-password P --endpoint compute=http://127.0.0.1:19774/v2.1 ...
"""

from __future__ import annotations

import argparse
import sys

import requests


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--auth-url", required=True)
    ap.add_argument("--admin-password", required=True)
    ap.add_argument("--service-password", required=True)
    ap.add_argument("--region", default="RegionOne")
    ap.add_argument("--user", action="append", default=[], help="service user name")
    ap.add_argument("--endpoint", action="append", default=[], help="TYPE=NAME=URL")
    a = ap.parse_args()
    base = a.auth_url.rstrip("/")
    r = requests.post(f"{base}/auth/tokens", timeout=30, json={"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "name": "admin", "domain": {"id": "default"}, "password": a.admin_password}}},
        "scope": {"project": {"name": "admin", "domain": {"id": "default"}}}}})
    r.raise_for_status()
    s = requests.Session()
    s.headers["X-Auth-Token"] = r.headers["X-Subject-Token"]

    def get(path: str, key: str, **params: str) -> list[dict]:
        resp = s.get(f"{base}{path}", params=params, timeout=30)
        resp.raise_for_status()
        return resp.json()[key]

    def post(path: str, body: dict) -> dict:
        resp = s.post(f"{base}{path}", json=body, timeout=30)
        if resp.status_code >= 300:
            sys.exit(f"ks_setup: POST {path}: {resp.status_code} {resp.text}")
        return resp.json()

    def ensure(path: str, key: str, name: str, body: dict) -> str:
        found = get(path, key + "s", name=name)
        if found:
            return found[0]["id"]
        return post(path, {key: body})[key]["id"]

    project = ensure("/projects", "project", "service", {"name": "service", "domain_id": "default"})
    roles = {}
    for role in ("admin", "service"):
        roles[role] = ensure("/roles", "role", role, {"name": role})
    for user in a.user:
        uid = ensure("/users", "user", user, {"name": user, "domain_id": "default",
                                               "password": a.service_password})
        for rid in roles.values():
            s.put(f"{base}/projects/{project}/users/{uid}/roles/{rid}", timeout=30).raise_for_status()
    for spec in a.endpoint:
        stype, name, url = spec.split("=", 2)
        services = [x for x in get("/services", "services", type=stype)]
        sid = services[0]["id"] if services else post(
            "/services", {"service": {"type": stype, "name": name, "enabled": True}})["service"]["id"]
        have = {e["interface"]: e for e in get("/endpoints", "endpoints", service_id=sid)}
        for iface in ("public", "internal", "admin"):
            if iface in have:
                if have[iface]["url"] != url:
                    s.patch(f"{base}/endpoints/{have[iface]['id']}", timeout=30,
                            json={"endpoint": {"url": url}}).raise_for_status()
                continue
            post("/endpoints", {"endpoint": {"service_id": sid, "interface": iface, "url": url,
                                             "region_id": a.region}})
    print("ks_setup: service project, users and catalog ready")
    return 0


if __name__ == "__main__":
    sys.exit(main())
