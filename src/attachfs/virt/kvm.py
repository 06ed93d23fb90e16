"""Whether this host can run guests under KVM, or only under TCG (detected, never assumed)."""

from __future__ import annotations

import fcntl
import functools
import os
from pathlib import Path

_KVM_GET_API_VERSION = 0xAE00


@functools.cache
def kvm_usable() -> bool:
    """True when KVM can boot a stock kernel: a real VMX/SVM KVM, not PVM.

    PVM (`kvm_pvm`, a paravirtual KVM for hosts without VT-x) exposes /dev/kvm but stock Debian
    kernels hang in the decompressor under it, so it counts as unusable. Cheap: module and ioctl.
    """
    mods = Path("/sys/module")
    if (mods / "kvm_pvm").exists():
        return False
    if not ((mods / "kvm_intel").exists() or (mods / "kvm_amd").exists()):
        return False
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return fcntl.ioctl(fd, _KVM_GET_API_VERSION) == 12
    except OSError:
        return False
    finally:
        os.close(fd)
