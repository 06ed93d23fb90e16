#!/usr/bin/python3 -I
"""The program libvirt runs for a virtio-fs device (``<binary path=...>``): Debian's C virtiofsd
with the options libvirt 9.0's XML cannot express, appended to libvirt's own argument list.

- ``-o modcaps=-mknod:-setfcap:-fsetid`` drops capabilities virtiofsd keeps by default:
  ``mknod``: the guest cannot create character or block device nodes in the share (EPERM);
  ``setfcap``: no file capabilities (also impossible with xattrs off, see libvirt_xml);
  ``fsetid``: the host kernel clears set-user-ID/set-group-ID bits when virtiofsd writes to or
  changes the owner of a file, and refuses set-group-ID for a group the writer is not in.
- ``-o killpriv_v2``: the guest kernel clears set-user-ID/set-group-ID bits on write, truncate
  and chown, as a local filesystem does.
- ``--rlimit-nofile=65536``: a bound on open files per device instead of virtiofsd's default of
  up to a million.

Exec'd in place (no shell, no child): libvirt and the agent's orphan repair see virtiofsd itself.
Standalone on purpose (``python3 -I``, standard library only): it runs before anything else of
attachfs is importable in libvirt's environment.
"""

import os
import sys

VIRTIOFSD = "/usr/lib/qemu/virtiofsd"
EXTRA_ARGS = ["-o", "modcaps=-mknod:-setfcap:-fsetid", "-o", "killpriv_v2", "--rlimit-nofile=65536"]


def argv(libvirt_args: list[str]) -> list[str]:
    if "--print-capabilities" in libvirt_args:  # a probe, not a device: answer as virtiofsd
        return [VIRTIOFSD, *libvirt_args]
    return [VIRTIOFSD, *libvirt_args, *EXTRA_ARGS]


if __name__ == "__main__":
    os.execv(VIRTIOFSD, argv(sys.argv[1:]))
