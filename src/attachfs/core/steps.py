"""What the agent does, as data: the steps a plan is made of and the operations they belong to.

A step is idempotent (running it twice is running it once) and named `operation:step`, so logs,
the crash-injection hook (ATTACHFS_CRASH_AFTER) and the tests speak of the same thing. Pure: no
I/O; the agent's executor (agent/executor.py) turns each step into driver calls.

    operation     steps, in order
    cold_attach   grant_access, record
    hot_attach    grant_access, mount, plug, record
    detach        unmount, revoke_access, record
    hot_detach    unplug, unmount, revoke_access, record   (unplug once the guest let go)
    power_on      grant_access, mount, metadata, start_guest, record, finish
    power_off     stop_guest, unmount, record, finish
    reboot        stop_guest, mount, metadata, start_guest, record, finish
    delete        stop_guest, remove_metadata, unmount, revoke_access, record, finish
    repair        plug, unplug, mount, fix_mount, unmount, stop_guest, record
    evacuate      fence, fenced (the failed host's access goes first), then
                  grant_access, mount, metadata, start_guest, record, finish on the new host
    migrate       leaving host: stop_guest, remove_metadata, unmount, revoke_access, record,
                  forget, handoff; arriving host: grant_access, mount, metadata, start_guest,
                  record, finish (core/moves.py)
    moved_away    stop_guest, remove_metadata, unmount, forget: a host whose server now runs
                  elsewhere (it came back after an evacuation) removes what it still has
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Op(enum.StrEnum):
    GRANT_ACCESS = "grant_access"
    MOUNT = "mount"
    FIX_MOUNT = "fix_mount"  # make an existing host mount nosuid,nodev[,ro] in place
    UNMOUNT = "unmount"
    METADATA = "metadata"  # the server's metadata socket is served
    REMOVE_METADATA = "remove_metadata"
    START_GUEST = "start_guest"
    STOP_GUEST = "stop_guest"
    PLUG = "plug"  # add the share's device to the running guest
    UNPLUG = "unplug"  # ask the running guest to give the device back (does not wait)
    REVOKE_ACCESS = "revoke_access"
    CONFIG_DRIVE = "config_drive"  # rebuild the config drive from the rows (live if running)
    RECORD = "record"  # write an attachment's observed status (None: the row goes)
    FINISH = "finish"  # write the server's observed state; the request is done
    FENCE = "fence"  # revoke a failed host's access to a share (before an evacuation)
    FENCED = "fenced"  # record that the failed host is cut off: the rebuild may start
    FORGET = "forget"  # remove what this host kept for the server (config drive, addresses)
    HANDOFF = "handoff"  # give the server to the next host (core/moves.py)


class Operation(enum.StrEnum):
    COLD_ATTACH = "cold_attach"
    HOT_ATTACH = "hot_attach"
    DETACH = "detach"
    HOT_DETACH = "hot_detach"
    POWER_ON = "power_on"
    POWER_OFF = "power_off"
    REBOOT = "reboot"
    DELETE = "delete"
    REPAIR = "repair"
    EVACUATE = "evacuate"
    MIGRATE = "migrate"
    MOVED_AWAY = "moved_away"


# The step names each operation can produce (what the crash matrix kills after).
OPERATION_STEPS: dict[Operation, tuple[Op, ...]] = {
    Operation.COLD_ATTACH: (Op.GRANT_ACCESS, Op.RECORD),
    Operation.HOT_ATTACH: (Op.GRANT_ACCESS, Op.MOUNT, Op.PLUG, Op.RECORD),
    Operation.DETACH: (Op.UNMOUNT, Op.REVOKE_ACCESS, Op.RECORD),
    Operation.HOT_DETACH: (Op.UNPLUG, Op.UNMOUNT, Op.REVOKE_ACCESS, Op.RECORD),
    Operation.POWER_ON: (Op.GRANT_ACCESS, Op.MOUNT, Op.METADATA, Op.START_GUEST, Op.RECORD,
                         Op.FINISH),
    Operation.POWER_OFF: (Op.STOP_GUEST, Op.UNMOUNT, Op.RECORD, Op.FINISH),
    Operation.REBOOT: (Op.STOP_GUEST, Op.MOUNT, Op.METADATA, Op.START_GUEST, Op.RECORD,
                       Op.FINISH),
    Operation.DELETE: (Op.STOP_GUEST, Op.REMOVE_METADATA, Op.UNMOUNT, Op.REVOKE_ACCESS,
                       Op.RECORD, Op.FINISH),
    Operation.EVACUATE: (Op.FENCE, Op.FENCED, Op.GRANT_ACCESS, Op.MOUNT, Op.METADATA,
                         Op.START_GUEST, Op.RECORD, Op.FINISH),
    Operation.MIGRATE: (Op.STOP_GUEST, Op.REMOVE_METADATA, Op.UNMOUNT, Op.REVOKE_ACCESS,
                        Op.RECORD, Op.FORGET, Op.HANDOFF, Op.GRANT_ACCESS, Op.MOUNT,
                        Op.METADATA, Op.START_GUEST, Op.FINISH),
    Operation.MOVED_AWAY: (Op.STOP_GUEST, Op.REMOVE_METADATA, Op.UNMOUNT, Op.FORGET),
}


@dataclass(frozen=True)
class Step:
    """One idempotent action. Fields not used by `op` stay at their defaults."""

    operation: Operation
    op: Op
    attachment: int | None = None  # the attachment row it serves (its failure is that row's)
    share_id: str = ""
    tag: str = ""
    path: str = ""  # the host mount (mount, fix_mount, unmount, plug)
    read_only: bool = False
    protocol: str = ""
    export: str = ""
    status: str | None = None  # record: the attachment's new status (None: delete the row)
    vm_state: str = ""  # finish: the server's new vm_state
    force: bool = False  # stop_guest: no ACPI grace (hard reboot, delete of an error server)
    host: str = ""  # fence: the host cut off; handoff: the host the server goes to
    note: str | None = None  # record: what the user should know (kept on the action)

    @property
    def name(self) -> str:
        return f"{self.operation}:{self.op}"

    def __str__(self) -> str:
        what = self.tag or self.path or self.share_id
        return f"{self.name}({what})" if what else self.name
