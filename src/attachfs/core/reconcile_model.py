"""What the planner reads and writes (core/planner.py): a server's desired state from its rows,
its actual state from the drivers, and the plan that closes the gap. Plain frozen dataclasses,
no I/O: the agent builds them (agent/state.py), the planner compares them, the executor runs the
plan's steps (agent/executor.py)."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from attachfs.core.moves import Move
from attachfs.core.rules import BUILTIN_PROTOCOL, HOST_MOUNTED, HOT_PLUG_TRANSPORTS, Transport
from attachfs.core.steps import Step

RUNNING, SHUTOFF, MISSING = "running", "shutoff", "missing"  # virt.base.PowerState values
ACTIVE, INACTIVE = "active", "inactive"  # attachment statuses this module records


class Phase(enum.StrEnum):
    """What an attachment row asks of the host (from its status)."""

    REQUESTED = "requested"  # attaching: a user's request, not yet confirmed
    HELD = "held"  # active / inactive: keep it reachable
    FAILED = "failed"  # error: hold nothing in the guest; keep the row for the user
    RELEASE = "release"  # detaching: device, host mount and access go, then the row


_PHASE = {"attaching": Phase.REQUESTED, "active": Phase.HELD, "inactive": Phase.HELD,
          "error": Phase.FAILED, "detaching": Phase.RELEASE}


def phase_of(status: str) -> Phase:
    return _PHASE[status]


class Power(enum.StrEnum):
    ON = "on"
    OFF = "off"
    GONE = "gone"  # being deleted, or no row at all


@dataclass(frozen=True)
class DesiredShare:
    id: int
    share_id: str
    tag: str
    path: str  # the host mount this attachment uses (one per share and access mode)
    read_only: bool = False
    status: str = INACTIVE  # as the row says now
    protocol: str = BUILTIN_PROTOCOL
    export: str = ""
    release_started: float | None = None  # monotonic: when the agent first saw `detaching`
    transport: str = Transport.VIRTIOFS
    target: str = ""  # where a container gets it (its bind mount); a VM's guest mounts itself

    @property
    def host_mounted(self) -> bool:
        """The host mounts it (at `path`); transport direct: the guest mounts the share's own
        export, and `path` is the share's directory the host's NFS server exports."""
        return self.transport in HOST_MOUNTED

    @property
    def own_rule(self) -> bool:
        """Its access rule is the guest's own (direct), not this host's shared one."""
        return self.transport == Transport.DIRECT

    @property
    def pluggable(self) -> bool:
        """Its device can be added to a running guest (9p's only at boot)."""
        return self.transport in HOT_PLUG_TRANSPORTS

    @property
    def phase(self) -> Phase:
        return phase_of(self.status)


@dataclass(frozen=True)
class Desired:
    uuid: str
    power: Power
    vm_state: str = "active"
    task: str | None = None
    settled: bool = True  # generation == observed_generation and no task
    shares: tuple[DesiredShare, ...] = ()
    config_drive: bool = False
    # a digest of the files the drive must hold (agent/config_drives.py); "" when not computed
    drive_digest: str = ""
    generation: int = 0  # the server's desired-state version (a reboot request bumps it)
    paths_used_elsewhere: frozenset[str] = frozenset()  # host mounts other servers need
    access_used_elsewhere: frozenset[str] = frozenset()  # shares other attachments hold
    detach_timeout: float = 10.0
    stop_timeout: float = 10.0  # s a guest gets to power off by itself before it is stopped
    move: Move | None = None  # core/moves.py: this host lets the server go, or takes it
    moved_away: bool = False  # the server runs on another host now: remove ours, touch no row


@dataclass(frozen=True)
class Actual:
    power: str = MISSING
    devices: Mapping[str, str] = field(default_factory=dict)  # tag -> host source path
    mounts: Mapping[str, frozenset[str]] = field(default_factory=dict)  # path -> options
    metadata: bool = False
    guest_report: tuple[float, frozenset[str]] | None = None  # (when, tags it has mounted)
    access: frozenset[str] | None = None  # shares with a rule for this host; None: unknown
    unplugging: Mapping[str, float] = field(default_factory=dict)  # tag -> when asked (now's clock)
    writable_devices: frozenset[str] = frozenset()  # devices whose daemon serves read-write
    shutdown_asked: tuple[float, float] | None = None  # (first, last) power button press
    guest_generation: int | None = None  # the server generation the running guest booted for
    fixed_devices: frozenset[str] = frozenset()  # tags whose device stays until the guest stops
    cooperative: bool = True  # a guest agent mounts and reports; False: the host does it all
    drive_digest: str = ""  # a digest of the files the config drive holds; "": none, unreadable
    now: float = 0.0  # monotonic, same clock as guest_report and release_started


@dataclass(frozen=True)
class Plan:
    steps: tuple[Step, ...]
    wait: float | None = None  # look again after this many seconds (waiting on the outside)
    waiting_for: str = ""

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.steps]
