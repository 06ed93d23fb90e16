"""Running Ceph commands: programs (`run`) and, as client.admin, mon and mgr commands over one
librados connection (`Admin`). The `ceph` CLI costs 0.3–1 s of CPU per call (Python, then the
descriptions of every command fetched from the mon); a command over an open connection, a few
milliseconds. While a cluster starts, the mgr loading its Python modules on the same two cores
is what the start waits for.
"""

from __future__ import annotations

import errno
import importlib.util
import json
import re
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

DIST_PACKAGES = Path("/usr/lib/python3/dist-packages")


class CephError(RuntimeError):
    """A Ceph command failed; `errno_name` is Ceph's reason (e.g. ENOENT) when it gave one."""

    def __init__(self, argv: list[str], returncode: int, output: str,
                 errno_name: str = "") -> None:
        super().__init__(f"{' '.join(argv)} exited {returncode}: {output.strip()[-2000:]}")
        self.returncode = returncode
        found = re.search(r"Error (E[A-Z]+)", output)
        self.errno_name = errno_name or (found.group(1) if found else "")


def run(argv: list[str], timeout: float = 60) -> str:
    """Run a program (an argument list); its standard output, or CephError."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise CephError(argv, done.returncode, done.stderr + done.stdout)
    return done.stdout


def load_rados() -> Any:
    """Debian's librados binding (python3-rados), built for CPython 3.11: any 3.11 loads it
    (this machine's .venv runs pyenv's 3.11.7). Imported from its file, so that the rest of
    Debian's dist-packages stays out of the interpreter."""
    if "rados" in sys.modules:
        return sys.modules["rados"]
    so = DIST_PACKAGES / f"rados{sysconfig.get_config_var('EXT_SUFFIX')}"
    spec = importlib.util.spec_from_file_location("rados", so)
    if spec is None or spec.loader is None or not so.exists():
        raise RuntimeError(f"no {so}: run scripts/setup-ceph.sh (python3-rados), from a "
                           f"CPython {sys.version_info.major}.{sys.version_info.minor} like "
                           "Debian's")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules["rados"] = module
    return module


class Admin:
    """client.admin of a cluster over one librados connection. Commands are JSON, as the CLI
    sends them: {"prefix": "fs subvolume create", "vol_name": …}."""

    def __init__(self, conf: Path, keyring: Path, timeout: float = 60) -> None:
        rados = load_rados()
        self.conn = rados.Rados(conffile=str(conf), name="client.admin", conf={
            "keyring": str(keyring), "client_mount_timeout": str(int(timeout)),
            "rados_mon_op_timeout": str(int(timeout))})
        self.conn.connect(timeout=int(timeout))

    def command(self, prefix: str, *, mgr: bool = False, inbuf: bytes = b"",
                **args: Any) -> str:
        """A mon command (or a mgr one: `mgr=True`); its output. CephError when it fails."""
        call = self.conn.mgr_command if mgr else self.conn.mon_command
        rc, out, status = call(json.dumps({"prefix": prefix, **args}), inbuf)
        if rc != 0:
            raise CephError([prefix, json.dumps(args)], rc, status,
                            errno.errorcode.get(-rc, ""))
        return bytes(out).decode()

    def close(self) -> None:
        self.conn.shutdown()
