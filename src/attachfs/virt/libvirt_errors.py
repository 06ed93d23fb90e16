"""libvirt's errors and small facts, in the driver's words (libvirt.py, libvirt_events.py)."""

from __future__ import annotations

from pathlib import Path

import libvirt

from attachfs.virt.libvirt_xml import VirtError

LIBVIRT_RUN = Path("/run/libvirt/qemu")  # libvirt's run directory for QEMU domains


def _quiet(_ctx: object, _err: object) -> None:
    """libvirt prints every error on stderr by default; ours are raised as VirtError instead."""


libvirt.registerErrorHandler(_quiet, None)


# An unplug already under way (this binding may not name the code), or the device already gone.
UNPLUG_UNDER_WAY = {code for code in (getattr(libvirt, "VIR_ERR_OPERATION_IN_PROGRESS", None),
                                        getattr(libvirt, "VIR_ERR_NO_DEVICE", None)) if code}


def virtiofsd_pidfile(dom: libvirt.virDomain, alias: str) -> Path:
    """Where libvirt keeps the pid of a device's virtiofsd: its run directory, named after the
    domain's short name (`<id>-<first 20 characters of the name>`) and the device alias."""
    return LIBVIRT_RUN / f"{dom.ID()}-{str(dom.name())[:20]}-{alias}-fs.pid"


def msg(e: libvirt.libvirtError) -> str:
    return e.get_error_message() or str(e)


def gone(e: libvirt.libvirtError) -> bool:
    return e.get_error_code() in (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_OPERATION_INVALID)


def active(dom: libvirt.virDomain) -> bool:
    try:
        return bool(dom.isActive())
    except libvirt.libvirtError as e:
        if gone(e):
            return False
        raise VirtError(f"guest state: {msg(e)}") from e
