"""Commands run as root in a real guest through one of its shares (for the vm tests and the
benchmark): the guest's user_data starts a loop that runs each `cmd/<n>.sh` the host drops in
the control share and writes its output, then `exit=<status>`, to `out/<n>`. No network, no
console scraping: the share is the channel, and it works the same on every transport."""

from __future__ import annotations

import base64
import uuid
from pathlib import Path

from harness.process import wait_for

_LOOP = r"""#!/bin/sh
(
  while true; do
    for c in /mnt/CTL/cmd/*.sh; do
      [ -f "$c" ] || continue
      n=$(basename "$c" .sh)
      sh "$c" > "/mnt/CTL/out/$n.tmp" 2>&1
      echo "exit=$?" >> "/mnt/CTL/out/$n.tmp"
      mv "/mnt/CTL/out/$n.tmp" "/mnt/CTL/out/$n"
      rm -f "$c"
    done
    sleep 0.2
  done
) </dev/null >/dev/console 2>&1 &
echo "runner started"
"""
READY = "runner started"  # on the console once the loop runs


def user_data(ctl_tag: str) -> str:
    """The server's user_data (base64) that starts the loop on the share tagged `ctl_tag`."""
    return base64.b64encode(_LOOP.replace("CTL", ctl_tag).encode()).decode()


class GuestShell:
    def __init__(self, ctl: Path) -> None:
        """ctl: the host's view of the control share."""
        self.ctl = ctl
        (ctl / "cmd").mkdir(exist_ok=True)
        (ctl / "out").mkdir(exist_ok=True)

    def run(self, script: str, timeout: float = 60) -> str:
        """`script` run as root in the guest: its output, then `exit=<status>`."""
        n = uuid.uuid4().hex[:12]
        tmp = self.ctl / "cmd" / f".{n}"
        tmp.write_text(script)
        tmp.rename(self.ctl / "cmd" / f"{n}.sh")
        out = self.ctl / "out" / n
        wait_for(f"the guest to run {script.splitlines()[0]!r}", out.exists, timeout,
                 interval=0.1)
        return out.read_text()
