"""Domain vocabulary: server and attachment states, and the attachment state machine.

Pure: no I/O. The API records desired state with these rules; the agent moves actual state
along the same table (DESIGN.md, "State machine of an attachment").
"""

from __future__ import annotations

import enum
import uuid
from typing import Protocol

# The tag rule lives in core/rules.py; these names stay importable from here.
from attachfs.core.rules import TAG_MAX_BYTES as TAG_MAX_BYTES
from attachfs.core.rules import validate_tag as validate_tag
from attachfs.errors import BadRequest, Conflict


class VmState(enum.StrEnum):
    """`OS-EXT-STS:vm_state`; the API `status` is derived from it (see `server_status`)."""

    BUILDING = "building"
    ACTIVE = "active"
    STOPPED = "stopped"
    ERROR = "error"
    DELETED = "deleted"


class TaskState(enum.StrEnum):
    SPAWNING = "spawning"
    POWERING_ON = "powering-on"
    POWERING_OFF = "powering-off"
    REBOOTING = "rebooting"
    REBOOTING_HARD = "rebooting_hard"
    DELETING = "deleting"


_STATUS = {
    VmState.BUILDING: "BUILD",
    VmState.ACTIVE: "ACTIVE",
    VmState.STOPPED: "SHUTOFF",
    VmState.ERROR: "ERROR",
    VmState.DELETED: "DELETED",
}


def server_status(vm_state: str, task_state: str | None) -> str:
    if vm_state == VmState.ACTIVE and task_state in (TaskState.REBOOTING,):
        return "REBOOT"
    if vm_state == VmState.ACTIVE and task_state == TaskState.REBOOTING_HARD:
        return "HARD_REBOOT"
    return _STATUS.get(VmState(vm_state), "UNKNOWN")


class PowerIntent(enum.StrEnum):
    ON = "on"
    OFF = "off"


class AttachmentStatus(enum.StrEnum):
    ATTACHING = "attaching"
    INACTIVE = "inactive"
    ACTIVE = "active"
    DETACHING = "detaching"
    ERROR = "error"


class ShareScope(enum.StrEnum):
    INSTANCE = "instance"
    PROJECT = "project"
    GLOBAL = "global"


class _ScopedShare(Protocol):
    @property
    def scope(self) -> str: ...
    @property
    def project_id(self) -> str: ...


class _Caller(Protocol):
    @property
    def project_id(self) -> str: ...
    @property
    def is_admin(self) -> bool: ...


def share_visible(share: _ScopedShare, ctx: _Caller) -> bool:
    """Who may see a built-in share: an admin, anyone for a global one, else its project."""
    return ctx.is_admin or share.scope == ShareScope.GLOBAL or share.project_id == ctx.project_id


def validate_uuid(value: str, field: str) -> str:
    try:
        return str(uuid.UUID(value))
    except (ValueError, AttributeError, TypeError) as exc:
        raise BadRequest(f"Invalid input for field/attribute {field}: '{value}' is not a UUID") from exc


# ---- attachment state machine ---------------------------------------------------------------

def require_share_change_allowed(vm_state: str, task_state: str | None, verb: str,
                                 hot_plug: bool) -> None:
    """Shares change while the server is idle and stopped, or (hot plug) idle and running.
    With hot plug off this is exactly 2.97's rule: stopped only."""
    allowed = (VmState.STOPPED, VmState.ACTIVE) if hot_plug else (VmState.STOPPED,)
    if vm_state not in allowed or task_state is not None:
        raise Conflict(
            f"Cannot '{verb}' share while the server is in vm_state {vm_state}"
            + (f", task_state {task_state}" if task_state else "")
            + ("; wait until it is ACTIVE or SHUTOFF" if hot_plug else "; stop the server first")
        )


def require_free_slot(vm_state: str, slots: int | None, in_use: int) -> None:
    """A running guest takes new devices only into the hot-plug slots it booted with."""
    if vm_state == VmState.ACTIVE and slots is not None and in_use >= slots:
        raise Conflict(
            f"No free hot-plug slot: the running server has {slots} slot(s) for shares and all "
            "are in use; detach a share, or stop the server and attach it while stopped"
        )


def status_after_detach_request(status: str) -> str:
    """DELETE is allowed from inactive, active and error; anything in flight is a conflict."""
    if status in (AttachmentStatus.INACTIVE, AttachmentStatus.ACTIVE, AttachmentStatus.ERROR):
        return AttachmentStatus.DETACHING
    raise Conflict(f"Share attachment is {status}; wait until it is inactive, active or error")


def status_after_power(status: str, power_on: bool) -> str:
    """Where a settled attachment goes when its server powers on/off (transitional ones stay)."""
    if power_on and status == AttachmentStatus.INACTIVE:
        return AttachmentStatus.ACTIVE
    if not power_on and status == AttachmentStatus.ACTIVE:
        return AttachmentStatus.INACTIVE
    return status


def status_after_retry(status: str) -> str:
    """POST of a share already attached: only an attachment in `error` may be driven again."""
    if status == AttachmentStatus.ERROR:
        return AttachmentStatus.ATTACHING
    raise Conflict("Share is already attached to this server")
