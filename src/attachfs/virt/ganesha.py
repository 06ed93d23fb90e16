"""The host's NFS server for transport `nfs` (seed 000): one NFS-Ganesha per host, started and
supervised by the agent, exporting each attached host mount to exactly one guest.

Measured with nfs-ganesha 4.3 (FSAL VFS) on this kind of host:
- NFSv4 only (``Protocols = 4``; with no rpcbind it exits otherwise), on 127.0.0.1 only,
  ``Graceless``: it serves 0.03-0.15 s after it starts.
- ``SIGHUP`` rereads the exports: one added or removed in 0.1-0.5 s ("Reread exports complete"
  in its log), the others and their clients undisturbed, no restart.
- ``EXPORT_DEFAULTS { Access_Type = None }`` and one ``CLIENT`` block per export naming a
  single address: a client from another address cannot see the export at all (its pseudo path
  answers "no such file"), so each guest's exports are reachable only through its own link
  (virt/nfs_link.py connects from an address of 127/8 that is that guest's alone).

Files under ``[state]/ganesha``: ganesha.conf (written whole, renamed into place), exports.json
(what is exported: the record of `Export_Id`s, observed back by `exports`), the log, the pid
file and the NFSv4 recovery directory. The daemon outlives an agent restart (its own session)
and is adopted by the next agent from its pid file.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from attachfs.virt.libvirt_xml import VirtError

GANESHA = "ganesha.nfsd"
HOST = "127.0.0.1"
RELOADED = "Reread exports complete"
MAX_EXPORT_ID = 65535


@dataclass(frozen=True)
class Client:
    """One guest allowed on an export: its link's address, and the attachment it serves."""

    address: str
    server: str  # the server uuid
    tag: str
    read_only: bool


@dataclass(frozen=True)
class Export:
    export_id: int
    path: str  # the host mount (transport nfs) or the share's own directory (direct)
    pseudo: str  # what guests mount (core.guest_mount)
    clients: tuple[Client, ...]


def ganesha_conf(directory: Path, port: int, exports: list[Export]) -> str:
    """A whole NFSv4-only, loopback-only, graceless configuration (also harness/ganesha.py's)."""
    blocks = []
    for e in sorted(exports, key=lambda x: x.export_id):
        clients = "\n".join(
            f"    CLIENT {{ Clients = {c.address}; Access_Type = {'RO' if c.read_only else 'RW'}; }}"
            for c in e.clients)
        blocks.append(f"""EXPORT {{
    Export_Id = {e.export_id};
    Path = "{e.path}";
    Pseudo = "{e.pseudo}";
    Protocols = 4;
    Access_Type = None;
    Squash = No_Root_Squash;
    SecType = sys;
    # the share is also written by the host and by guests over other transports: Ganesha
    # keeps no attributes of its own (the guest's NFS client still caches for its acregmin)
    Attr_Expiration_Time = 0;
{clients}
    FSAL {{ Name = VFS; }}
}}""")
    return f"""# written by attachfs (virt/ganesha.py): do not edit, it is rewritten
NFS_CORE_PARAM {{
    Bind_Addr = {HOST};
    NFS_Port = {port};
    Protocols = 4;
    Enable_NLM = false;
    Enable_RQUOTA = false;
    Enable_UDP = false;
}}
NFSV4 {{
    Graceless = true;
    RecoveryBackend = fs;
    RecoveryRoot = "{directory / 'recovery'}";
    Only_Numeric_Owners = true;
}}
EXPORT_DEFAULTS {{
    Access_Type = None;
}}
MDCACHE {{
    Dir_Chunk = 0;  # nor directory listings: a name made behind its back is found
}}
LOG {{
    Default_Log_Level = EVENT;
    COMPONENTS {{ PNFS = CRIT; }}
}}
""" + "\n".join(blocks) + "\n"


class HostNfsServer:
    def __init__(self, directory: Path, port: int = 0) -> None:
        self.dir = Path(directory)
        self._port = port
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None

    # ---- files ------------------------------------------------------------------------------
    @property
    def conf_path(self) -> Path:
        return self.dir / "ganesha.conf"

    @property
    def log_path(self) -> Path:
        return self.dir / "ganesha.log"

    @property
    def pid_path(self) -> Path:
        return self.dir / "ganesha.pid"

    @property
    def port(self) -> int:
        """Its port on 127.0.0.1: the configured one, else one chosen once and kept."""
        if self._port:
            return self._port
        path = self.dir / "port"
        with contextlib.suppress(OSError, ValueError):
            self._port = int(path.read_text())
            return self._port
        with socket.socket() as s:
            s.bind((HOST, 0))
            self._port = int(s.getsockname()[1])
        self.dir.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{self._port}\n")
        return self._port

    def exports(self) -> list[Export]:
        try:
            rows = json.loads((self.dir / "exports.json").read_text())
        except (OSError, ValueError):
            return []
        return [Export(row["export_id"], row["path"], row["pseudo"],
                       tuple(Client(**c) for c in row["clients"])) for row in rows]

    def _save(self, exports: list[Export]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        exports = [e for e in exports if e.clients]  # an export nobody may mount goes
        for name, text in (("exports.json", json.dumps([asdict(e) for e in exports])),
                           ("ganesha.conf", ganesha_conf(self.dir, self.port, exports))):
            tmp = self.dir / f".{name}.tmp"
            tmp.write_text(text)
            tmp.replace(self.dir / name)

    # ---- the daemon -------------------------------------------------------------------------
    def pid(self) -> int | None:
        """The running daemon's pid (ours: started on our conf), or None."""
        try:
            pid = int(self.pid_path.read_text().split()[0])
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, ValueError, IndexError):
            return None
        if state == "Z" or not argv[0].endswith(GANESHA.encode()) \
                or str(self.conf_path).encode() not in argv:
            return None
        return pid

    def ensure_running(self, timeout: float = 15.0) -> None:
        """Started (with the recorded exports) when it is not running; then it serves."""
        with self._lock:
            if self.pid() is not None:
                return
            self._save(self.exports())
            (self.dir / "recovery").mkdir(exist_ok=True)
            self.pid_path.unlink(missing_ok=True)
            argv = [GANESHA, "-F", "-f", str(self.conf_path), "-L", str(self.log_path),
                    "-p", str(self.pid_path)]
            try:
                with open(self.dir / "ganesha.out", "ab") as out:
                    # own session: it outlives an agent restart, which adopts it by pid file
                    self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                                  stderr=subprocess.STDOUT,
                                                  start_new_session=True)
            except FileNotFoundError as exc:
                raise VirtError(f"{GANESHA} not found (apt-get install nfs-ganesha "
                                "nfs-ganesha-vfs)") from exc
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    raise VirtError(f"{GANESHA} exited ({self._proc.returncode}); see "
                                    f"{self.log_path}")
                with contextlib.suppress(OSError), socket.create_connection(
                        (HOST, self.port), timeout=0.5):
                    return
                time.sleep(0.02)
            raise VirtError(f"{GANESHA} does not listen on {HOST}:{self.port} after "
                            f"{timeout:g} s")

    def stop(self) -> None:
        pid = self.pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 5
            while self.pid() is not None and time.monotonic() < deadline:
                if self._proc is not None:
                    self._proc.poll()
                time.sleep(0.02)

    # ---- exports ----------------------------------------------------------------------------
    def allow(self, pseudo: str, path: Path, client: Client) -> None:
        """`client` may mount `path` at `pseudo` (the export is made when it is the first);
        idempotent. An export's path never changes under its clients."""
        with self._lock:
            exports = self.exports()
            found = next((e for e in exports if e.pseudo == pseudo), None)
            if found is not None and client in found.clients:
                return
            if found is not None and found.path != str(path):
                raise VirtError(f"NFS export {pseudo} serves {found.path}, not {path}")
            others = tuple(c for c in (found.clients if found else ())
                           if (c.server, c.tag) != (client.server, client.tag)
                           and c.address != client.address)
            if found is None:
                used = {e.export_id for e in exports}
                export_id = next((i for i in range(2, MAX_EXPORT_ID) if i not in used), None)
                if export_id is None:
                    raise VirtError("no free NFS export id on this host")
            else:
                export_id = found.export_id
            exports = [e for e in exports if e.pseudo != pseudo]
            self._reload(exports + [Export(export_id, str(path), pseudo, others + (client,))])

    def deny(self, server: str, tag: str | None = None) -> None:
        """The server's clients (of `tag` only, when given) go from every export; an export
        left without clients goes. The others stay."""
        with self._lock:
            exports = self.exports()
            changed = [Export(e.export_id, e.path, e.pseudo, tuple(
                c for c in e.clients if not (c.server == server and tag in (None, c.tag))))
                for e in exports]
            if changed != exports:
                self._reload(changed)

    def clients_of(self, server: str) -> list[tuple[Export, Client]]:
        return [(e, c) for e in self.exports() for c in e.clients if c.server == server]

    def _reload(self, exports: list[Export], timeout: float = 10.0) -> None:
        """Write the new exports and have the running daemon reread them (SIGHUP): it says so
        in its log, and only then is the change in force."""
        offset = self._log_size()
        self._save(exports)
        pid = self.pid()
        if pid is None:
            return  # ensure_running starts it with these
        os.kill(pid, signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while not self._logged_since(offset, RELOADED):
            if time.monotonic() > deadline:
                raise VirtError(f"{GANESHA} did not reread its exports within {timeout:g} s")
            time.sleep(0.02)

    def _log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def _logged_since(self, offset: int, text: str) -> bool:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return text.encode() in f.read()
        except OSError:
            return False
