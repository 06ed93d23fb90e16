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
    RESIZED = "resized"  # moved by a cold migration, waiting for confirmResize/revertResize
    ERROR = "error"
    DELETED = "deleted"


class TaskState(enum.StrEnum):
    SPAWNING = "spawning"
    POWERING_ON = "powering-on"
    POWERING_OFF = "powering-off"
    REBOOTING = "rebooting"
    REBOOTING_HARD = "rebooting_hard"
    DELETING = "deleting"
    # moves between hosts (core/moves.py): the compute service's names
    RESIZE_PREP = "resize_prep"  # cold migrate: the source host lets the server go
    RESIZE_MIGRATED = "resize_migrated"  # cold migrate: the destination takes it
    RESIZE_REVERTING = "resize_reverting"  # revertResize: back to the source
    REBUILDING = "rebuilding"  # evacuate: fence the failed host, rebuild on the new one


_STATUS = {
    VmState.BUILDING: "BUILD",
    VmState.ACTIVE: "ACTIVE",
    VmState.STOPPED: "SHUTOFF",
    VmState.RESIZED: "VERIFY_RESIZE",
    VmState.ERROR: "ERROR",
    VmState.DELETED: "DELETED",
}


_TASK_STATUS = {TaskState.RESIZE_PREP: "RESIZE", TaskState.RESIZE_MIGRATED: "RESIZE",
                TaskState.RESIZE_REVERTING: "REVERT_RESIZE", TaskState.REBUILDING: "REBUILD"}


def server_status(vm_state: str, task_state: str | None) -> str:
    if task_state in _TASK_STATUS and vm_state != VmState.DELETED:
        return _TASK_STATUS[TaskState(task_state)]
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


def is_uuid(value: object) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return isinstance(value, str)


def validate_uuid(value: str, field: str) -> str:
    try:
        return str(uuid.UUID(value))
    except (ValueError, AttributeError, TypeError) as exc:
        raise BadRequest(f"Invalid input for field/attribute {field}: '{value}' is not a UUID") from exc


# ---- server states -----------------------------------------------------------------------

def invalid_state(action: str, server_uuid: str, attr: str, state: str) -> Conflict:
    """The compute service's 409 for an action the server's state does not allow."""
    return Conflict(f"Cannot '{action}' instance {server_uuid} while it is in {attr} {state}")


def require_server_state(server_uuid: str, vm_state: str, task_state: str | None, action: str,
                         allowed: tuple[str, ...]) -> None:
    """vm_state first, then no task in flight (the compute service's order and wording)."""
    if vm_state not in allowed:
        raise invalid_state(action, server_uuid, "vm_state", vm_state)
    if task_state is not None:
        raise invalid_state(action, server_uuid, "task_state", task_state)


# ---- attachment state machine ---------------------------------------------------------------
ATTACH_ACTION = "create share"  # the compute service's names, in its 409 messages
DETACH_ACTION = "delete share"


def require_share_change_allowed(server_uuid: str, vm_state: str, task_state: str | None,
                                 action: str, hot_plug: bool) -> None:
    """2.97's rule: attach while stopped; detach while stopped or in error. Hot plug adds a
    running server to both. Checked before the share is looked up, as the compute service does."""
    allowed: tuple[str, ...] = (VmState.STOPPED,)
    if action == DETACH_ACTION:
        allowed += (VmState.ERROR,)
    if hot_plug:
        allowed += (VmState.ACTIVE,)
    require_server_state(server_uuid, vm_state, task_state, action, allowed)


def require_free_slot(vm_state: str, slots: int | None, in_use: int) -> None:
    """A running guest takes new devices only into the hot-plug slots it booted with."""
    if vm_state == VmState.ACTIVE and slots is not None and in_use >= slots:
        raise Conflict(
            f"No free hot-plug slot: the running server has {slots} slot(s) for shares and all "
            "are in use; detach a share, or stop the server and attach it while stopped"
        )


def already_attached(share_id: str, tag: str) -> Conflict:
    """One message for the same share twice and for a tag in use, as the compute service has."""
    return Conflict(f"Share '{share_id}' or tag '{tag}' already associated to this server.")


def status_after_detach_request(status: str) -> str:
    """DELETE is honoured whatever the attachment is doing (as the compute service does): the
    agent converges from wherever its steps got to, to nothing."""
    return AttachmentStatus.DETACHING


def status_after_power(status: str, power_on: bool) -> str:
    """Where a settled attachment goes when its server powers on/off (transitional ones stay)."""
    if power_on and status == AttachmentStatus.INACTIVE:
        return AttachmentStatus.ACTIVE
    if not power_on and status == AttachmentStatus.ACTIVE:
        return AttachmentStatus.INACTIVE
    return status


def status_after_retry(status: str, share_id: str, tag: str, retry: bool) -> str:
    """POST of a share already attached: a conflict, unless the caller asked to retry an
    attachment in `error` (attachfs extension 1.2, and seed 004's share_attach action)."""
    if retry and status == AttachmentStatus.ERROR:
        return AttachmentStatus.ATTACHING
    raise already_attached(share_id, tag)
