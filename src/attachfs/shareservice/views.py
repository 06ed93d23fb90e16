"""Share and export location bodies, as the shared-file-system service shapes them at each
microversion."""

from __future__ import annotations

import uuid as uuidlib
from typing import Any

from fastapi import Request

from attachfs.api import deps
from attachfs.api.views import iso
from attachfs.core.model import ShareScope
from attachfs.core.ports import BuiltinShareRecord
from attachfs.shareservice.discovery import DEFAULT_TYPE_ID, NAMESPACE
from attachfs.shareservice.versions import at_least, base


def links(request: Request, share_id: str) -> list[dict[str, str]]:
    root = base(request)
    return [{"rel": "self", "href": f"{root}/v2/shares/{share_id}"},
            {"rel": "bookmark", "href": f"{root}/shares/{share_id}"}]


def export_locations(request: Request, share: BuiltinShareRecord,
                     admin: bool) -> list[dict[str, Any]]:
    """An NFS share's NFS export first (preferred: what its clients mount), then the host
    directory every built-in share has."""
    info = deps.env(request).builtin.info(share)
    paths = [(f"nfs-export:{share.uuid}", info.nfs_export)] if info.nfs_export else []
    paths.append((f"export:{share.uuid}", info.preferred_export))
    out = []
    for i, (name, path) in enumerate(paths):
        view: dict[str, Any] = {"id": str(uuidlib.uuid5(NAMESPACE, name)), "path": path}
        if at_least(request, 14):
            view["preferred"] = i == 0
        if admin:
            view["share_instance_id"] = share.uuid
            view["is_admin_only"] = False
        if at_least(request, 87):
            view["metadata"] = {}
        out.append(view)
    return out


def summary(request: Request, share: BuiltinShareRecord) -> dict[str, Any]:
    return {"id": share.uuid, "name": share.name, "links": links(request, share.uuid)}


def detail(request: Request, share: BuiltinShareRecord, admin: bool) -> dict[str, Any]:
    paths = [e["path"] for e in export_locations(request, share, False)]
    view: dict[str, Any] = {
        "id": share.uuid, "name": share.name, "size": share.size_gib, "status": share.status,
        "availability_zone": "nova", "created_at": iso(share.created_at), "description": None,
        "project_id": share.project_id, "snapshot_id": None, "share_network_id": None,
        "share_proto": share.protocol, "metadata": {}, "share_type": DEFAULT_TYPE_ID,
        "volume_type": "default", "is_public": share.scope == ShareScope.GLOBAL,
        "links": links(request, share.uuid),
    }
    if not at_least(request, 9):  # later microversions moved these to export_locations
        view["export_location"] = paths[0]
        view["export_locations"] = paths
    if admin:
        view["host"] = "attachfs@local#local"
        view["share_server_id"] = None
    extra: list[tuple[int, dict[str, Any]]] = [
        (2, {"snapshot_support": False}),
        (5, {"task_state": None}),
        (6, {"share_type_name": "default"}),
        (10, {"access_rules_status": "active"}),
        (11, {"replication_type": None, "has_replicas": False}),
        (16, {"user_id": share.user_id}),
        (24, {"create_share_from_snapshot_support": False}),
        (27, {"revert_to_snapshot_support": False}),
        (31, {"share_group_id": None, "source_share_group_snapshot_member_id": None}),
        (32, {"mount_snapshot_support": False}),
        (54, {"progress": "100%"}),
        (69, {"is_soft_deleted": False, "scheduled_to_be_deleted_at": None}),
        (84, {"mount_point_name": None}),
        (90, {"encryption_key_ref": None}),
    ]
    for minor, fields in extra:
        if at_least(request, minor):
            view.update(fields)
    if at_least(request, 4) and not at_least(request, 31):
        view.update({"consistency_group_id": None, "source_cgsnapshot_member_id": None})
    return view
