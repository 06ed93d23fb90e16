"""Moving a server between hosts: evacuate (from a failed host) and cold migrate. Pure.

A move is a migration row (its type, hosts and status) plus the server row's `host`, which
names the one agent that acts at each moment. Two hosts never hold a share for one guest: the
source lets go (guest stopped, host mounts gone, its access revoked) before the destination
takes the server; after a host failure the destination first fences the failed host on the
storage side (revokes its access, which the share service turns into a cut-off: Manila's
CephFS driver evicts the host's sessions), then rebuilds.

    type        status          server.host  that host's agent
    evacuation  accepted        dest         fence the source, then grant, mount, start: done
    migration   pre-migrating   source       stop, unmount, revoke; hand over: post-migrating
    migration   post-migrating  dest         grant, mount, start as before: finished
                                             (the server is VERIFY_RESIZE)
    migration   finished        dest         confirmResize: confirmed (nothing is left on the
                                             source); revertResize: reverting
    migration   reverting       dest         stop, unmount, revoke; hand back to the source
    migration   reverting       source       grant, mount, start as before: reverted

A host whose server row points elsewhere and which still has its guest (a failed host that
comes back after an evacuation) removes the guest and its host mounts, and touches neither the
rows nor the share's access (the new host owns both).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from attachfs.core.model import TaskState, VmState


class MoveType(enum.StrEnum):
    EVACUATION = "evacuation"
    MIGRATION = "migration"


class MigrationStatus(enum.StrEnum):
    ACCEPTED = "accepted"  # evacuation under way
    DONE = "done"
    FAILED = "failed"
    PRE_MIGRATING = "pre-migrating"  # cold migration: the source lets go
    POST_MIGRATING = "post-migrating"  # the destination takes it
    FINISHED = "finished"  # on the destination, waiting for confirm or revert
    CONFIRMED = "confirmed"
    REVERTING = "reverting"
    REVERTED = "reverted"
    ERROR = "error"


IN_PROGRESS = frozenset({MigrationStatus.ACCEPTED, MigrationStatus.PRE_MIGRATING,
                         MigrationStatus.POST_MIGRATING, MigrationStatus.FINISHED,
                         MigrationStatus.REVERTING})
MOVE_TASKS = frozenset({TaskState.RESIZE_PREP, TaskState.RESIZE_MIGRATED,
                        TaskState.RESIZE_REVERTING, TaskState.REBUILDING})


class Role(enum.StrEnum):
    LEAVE = "leave"  # let the server go: stop, unmount, revoke, hand over
    ARRIVE = "arrive"  # take it: (fence,) grant, mount, start as before


@dataclass(frozen=True)
class Move:
    """What this host's agent does for a server that is moving."""

    role: Role
    kind: MoveType
    to: str = ""  # leave: the host the server goes to
    fence: str | None = None  # arrive: the host whose storage access must go first
    resized: bool = False  # arrive: a forward cold migration ends in VERIFY_RESIZE

    @property
    def operation(self) -> str:
        """The name its steps go by (core/steps.py's Operation values)."""
        return "evacuate" if self.kind == MoveType.EVACUATION else "migrate"


def move_of(kind: str, status: str, source: str, dest: str, fenced: bool, task: str | None,
            server_host: str, this_host: str) -> Move | None:
    """What `this_host` does for a server whose row says `server_host` and `task`, in the
    migration (kind, status, source, dest); None: nothing move-related."""
    if server_host != this_host or task not in MOVE_TASKS:
        return None
    move_type = MoveType(kind)
    if move_type == MoveType.EVACUATION and status == MigrationStatus.ACCEPTED:
        return Move(Role.ARRIVE, move_type, fence=None if fenced else source)
    if status == MigrationStatus.PRE_MIGRATING and this_host == source:
        return Move(Role.LEAVE, move_type, to=dest)
    if status == MigrationStatus.POST_MIGRATING and this_host == dest:
        return Move(Role.ARRIVE, move_type, resized=True)
    if status == MigrationStatus.REVERTING:
        if this_host == dest and this_host != source:
            return Move(Role.LEAVE, move_type, to=source)
        if this_host == source:
            return Move(Role.ARRIVE, move_type)
    return None


def handed_over(kind: str, status: str) -> tuple[str, str]:
    """(the server's task, the migration's status) once the leaving host handed it over."""
    if status == MigrationStatus.REVERTING:
        return TaskState.RESIZE_REVERTING, MigrationStatus.REVERTING
    return TaskState.RESIZE_MIGRATED, MigrationStatus.POST_MIGRATING


def arrived(kind: str, status: str) -> str:
    """The migration's status once the arriving host runs the server as it should."""
    if kind == MoveType.EVACUATION:
        return MigrationStatus.DONE
    return MigrationStatus.REVERTED if status == MigrationStatus.REVERTING \
        else MigrationStatus.FINISHED


def failed(kind: str) -> str:
    return MigrationStatus.FAILED if kind == MoveType.EVACUATION else MigrationStatus.ERROR


def settled_vm_state(power_on: bool) -> str:
    """Where a server ends after confirmResize, a revert or an evacuation: as its power says."""
    return VmState.ACTIVE if power_on else VmState.STOPPED
