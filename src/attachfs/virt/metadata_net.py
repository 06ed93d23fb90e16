"""The guest's only network: a user-mode TCP/IP stack that reaches its metadata service and
nothing else. Runs as its own process, one per running guest (`python -m attachfs.virt.metadata_net`),
started and supervised by `metadata_net_supervisor`.

QEMU serves the guest's NIC as ``-netdev stream,server=on,addr.type=unix`` (frames are a 4-byte
big-endian length followed by the ethernet frame); this process connects to that socket and runs
libslirp (Debian ``libslirp0``, the library QEMU's own user networking uses) through ctypes with:

- ``restricted``: the guest reaches no host or outside address; only the forward below.
- ``slirp_add_unix(metadata socket, 169.254.169.254, 80)``: each guest TCP connection to the
  metadata address becomes a NEW connection to this server's own metadata unix socket (no
  process per connection, unlike QEMU's ``guestfwd=...-cmd:``, and the server's identity is the
  socket, never anything the guest sends).
- ``slirp_add_unix(NFS link socket, 169.254.169.254, 2049)`` the same way: the guest's private
  link to the host's NFS server (virt/nfs_link.py); refused while nothing listens there.
- IPv6 off, DNS off, host loopback off, DHCP on (the guest gets 169.254.169.15, gateway .2).
- an empty network namespace (``unshare(CLONE_NEWNET)``) before anything else: even a libslirp
  bug finds no network interface to reach. Pathname unix sockets still work across namespaces.
- a bound on open files, so a guest opening connections cannot grow this process without limit
  (the metadata listener caps concurrent connections per guest separately).

Exit status: 0 when QEMU closed the stream (the guest is gone), 3 when there is no QEMU to connect
to; anything else is a crash and the supervisor starts it again.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import os
import resource
import select
import socket
import struct
import sys
import time
from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    byref,
    c_bool,
    c_char_p,
    c_int,
    c_int64,
    c_size_t,
    c_ssize_t,
    c_uint8,
    c_uint32,
    c_void_p,
)

NETWORK, NETMASK = "169.254.169.0", "255.255.255.0"
GATEWAY, NAMESERVER, DHCP_START = "169.254.169.2", "169.254.169.3", "169.254.169.15"
METADATA_ADDR, METADATA_PORT = "169.254.169.254", 80
NFS_PORT = 2049  # the same address's NFS: the host's NFS server over this guest's own link
EXIT_GUEST_GONE, EXIT_NO_GUEST = 0, 3
MAX_OPEN_FILES = 64  # stream, poll, libslirp and its relayed connections (~256 KiB each)
MAX_ADDRESS_SPACE = 256 << 20  # a hard ceiling: past it an allocation fails, the helper
# crashes and is started again, instead of growing
MMAP_THRESHOLD = 64 << 10  # see isolate()
_M_MMAP_THRESHOLD = -3  # mallopt(3) parameter
MAX_QUEUED = 4 << 20  # bytes of frames towards QEMU before frames are dropped (TCP resends)
MAX_FRAME = 65536 + 18  # largest ethernet frame QEMU's stream netdev sends
LOG_INTERVAL = 10.0  # seconds between two libslirp messages on stderr
_CLONE_NEWNET = 0x40000000
_G_LOG_LEVELS = 0xFC  # G_LOG_LEVEL_ERROR .. G_LOG_LEVEL_DEBUG

_POLL = {1: select.POLLIN, 2: select.POLLOUT, 4: select.POLLPRI, 8: select.POLLERR,
         16: select.POLLHUP}  # SLIRP_POLL_* -> poll(2) flags


class _InAddr(Structure):
    _fields_ = [("s_addr", c_uint32)]


class _In6Addr(Structure):
    _fields_ = [("s6_addr32", c_uint32 * 4)]


class SlirpConfig(Structure):
    """libslirp 4.7 ``SlirpConfig`` (version 4); offsets checked against the C header."""

    _fields_ = [
        ("version", c_uint32), ("restricted", c_int), ("in_enabled", c_bool),
        ("vnetwork", _InAddr), ("vnetmask", _InAddr), ("vhost", _InAddr),
        ("in6_enabled", c_bool), ("vprefix_addr6", _In6Addr), ("vprefix_len", c_uint8),
        ("vhost6", _In6Addr), ("vhostname", c_char_p), ("tftp_server_name", c_char_p),
        ("tftp_path", c_char_p), ("bootfile", c_char_p), ("vdhcp_start", _InAddr),
        ("vnameserver", _InAddr), ("vnameserver6", _In6Addr), ("vdnssearch", c_void_p),
        ("vdomainname", c_char_p), ("if_mtu", c_size_t), ("if_mru", c_size_t),
        ("disable_host_loopback", c_bool), ("enable_emu", c_bool),
        ("outbound_addr", c_void_p), ("outbound_addr6", c_void_p),
        ("disable_dns", c_bool), ("disable_dhcp", c_bool),
    ]


_SendPacket = CFUNCTYPE(c_ssize_t, c_void_p, c_size_t, c_void_p)
_GuestError = CFUNCTYPE(None, c_char_p, c_void_p)
_ClockNs = CFUNCTYPE(c_int64, c_void_p)
_TimerNew = CFUNCTYPE(c_void_p, c_void_p, c_void_p, c_void_p)
_TimerFree = CFUNCTYPE(None, c_void_p, c_void_p)
_TimerMod = CFUNCTYPE(None, c_void_p, c_int64, c_void_p)
_FdCb = CFUNCTYPE(None, c_int, c_void_p)
_Notify = CFUNCTYPE(None, c_void_p)
_InitDone = CFUNCTYPE(None, c_void_p, c_void_p)
_TimerNewOpaque = CFUNCTYPE(c_void_p, c_int, c_void_p, c_void_p)
_GLogFunc = CFUNCTYPE(None, c_char_p, c_int, c_char_p, c_void_p)
_AddPoll = CFUNCTYPE(c_int, c_int, c_int, c_void_p)
_GetRevents = CFUNCTYPE(c_int, c_int, c_void_p)


class SlirpCb(Structure):
    _fields_ = [
        ("send_packet", _SendPacket), ("guest_error", _GuestError), ("clock_get_ns", _ClockNs),
        ("timer_new", _TimerNew), ("timer_free", _TimerFree), ("timer_mod", _TimerMod),
        ("register_poll_fd", _FdCb), ("unregister_poll_fd", _FdCb), ("notify", _Notify),
        ("init_completed", _InitDone), ("timer_new_opaque", _TimerNewOpaque),
    ]


def _addr(ip: str) -> _InAddr:
    # in_addr holds the address in network byte order: the four bytes as they are on the wire
    return _InAddr(int.from_bytes(socket.inet_aton(ip), sys.byteorder))


def load_libslirp() -> ctypes.CDLL:
    lib = ctypes.CDLL("libslirp.so.0", use_errno=True)
    lib.slirp_new.restype = c_void_p
    lib.slirp_new.argtypes = [POINTER(SlirpConfig), POINTER(SlirpCb), c_void_p]
    lib.slirp_input.argtypes = [c_void_p, c_char_p, c_int]
    lib.slirp_pollfds_fill.argtypes = [c_void_p, POINTER(c_uint32), _AddPoll, c_void_p]
    lib.slirp_pollfds_poll.argtypes = [c_void_p, c_int, _GetRevents, c_void_p]
    lib.slirp_add_unix.argtypes = [c_void_p, c_char_p, POINTER(_InAddr), c_int]
    lib.slirp_handle_timer.argtypes = [c_void_p, c_int, c_void_p]
    lib.slirp_version_string.restype = c_char_p
    return lib


class LogLimiter:
    """libslirp reports through glib (g_critical), once per event: a guest opening connections
    past the open-file bound would print a line each, into the agent's log. At most one line per
    `interval` s reaches stderr, with how many were left out."""

    def __init__(self, interval: float = LOG_INTERVAL) -> None:
        self.interval = interval
        self.last = -interval
        self.suppressed = 0

    def __call__(self, domain: bytes | None, _level: int, message: bytes | None, _data: int) -> None:
        now = time.monotonic()
        if now - self.last < self.interval:
            self.suppressed += 1
            return
        more = f" ({self.suppressed} more since)" if self.suppressed else ""
        text = (message or b"").decode(errors="replace")
        print(f"metadata-net: {(domain or b'').decode()}: {text}{more}", file=sys.stderr, flush=True)
        self.last, self.suppressed = now, 0


def limit_libslirp_logs(limiter: LogLimiter) -> object:
    """Route libslirp's glib messages through `limiter`; keep the returned handle alive."""
    glib = ctypes.CDLL("libglib-2.0.so.0")
    glib.g_log_set_handler.argtypes = [c_char_p, c_int, _GLogFunc, c_void_p]
    handler = _GLogFunc(limiter)
    glib.g_log_set_handler(b"Slirp", _G_LOG_LEVELS, handler, None)
    return handler


def slirp_config() -> SlirpConfig:
    return SlirpConfig(
        version=4, restricted=1, in_enabled=True, vnetwork=_addr(NETWORK),
        vnetmask=_addr(NETMASK), vhost=_addr(GATEWAY), in6_enabled=False,
        vdhcp_start=_addr(DHCP_START), vnameserver=_addr(NAMESERVER), if_mtu=0, if_mru=0,
        disable_host_loopback=True, enable_emu=False, disable_dns=True, disable_dhcp=False)


class Relay:
    """One guest: the QEMU stream on one side, libslirp (and its unix connections) on the other."""

    def __init__(self, lib: ctypes.CDLL, stream: socket.socket, metadata_socket: str,
                 nfs_socket: str | None = None) -> None:
        self.lib, self.stream = lib, stream
        self.inbuf = bytearray()  # bytes from QEMU not yet split into frames
        self.outbuf = bytearray()  # length-prefixed frames for QEMU not yet written
        self.timers: dict[int, tuple[int, int, int]] = {}  # handle -> (expire ms, id, opaque)
        self._next_timer = 1
        self._fds: list[tuple[int, int]] = []
        self._revents: list[int] = []
        # the callbacks must stay referenced as long as the Slirp instance lives
        self.cb = SlirpCb(
            send_packet=_SendPacket(self._send_packet), guest_error=_GuestError(self._guest_error),
            clock_get_ns=_ClockNs(lambda _o: time.monotonic_ns()),
            timer_new=_TimerNew(0), timer_free=_TimerFree(self._timer_free),
            timer_mod=_TimerMod(self._timer_mod), register_poll_fd=_FdCb(lambda _fd, _o: None),
            unregister_poll_fd=_FdCb(lambda _fd, _o: None), notify=_Notify(lambda _o: None),
            init_completed=_InitDone(0), timer_new_opaque=_TimerNewOpaque(self._timer_new))
        self.config = slirp_config()
        self.slirp = lib.slirp_new(byref(self.config), byref(self.cb), None)
        if not self.slirp:
            raise RuntimeError("slirp_new failed")
        target = _addr(METADATA_ADDR)
        if lib.slirp_add_unix(self.slirp, metadata_socket.encode(), byref(target),
                              METADATA_PORT) < 0:
            raise RuntimeError(f"slirp_add_unix({metadata_socket}) failed")
        if nfs_socket is not None and lib.slirp_add_unix(
                self.slirp, nfs_socket.encode(), byref(target), NFS_PORT) < 0:
            raise RuntimeError(f"slirp_add_unix({nfs_socket}) failed")
        self._add_poll = _AddPoll(self._add_poll_fd)
        self._get_revents = _GetRevents(lambda idx, _o: self._revents[idx])

    # -- libslirp callbacks ------------------------------------------------------------------
    def _send_packet(self, buf: int, length: int, _opaque: int) -> int:
        if len(self.outbuf) + length + 4 <= MAX_QUEUED:  # else dropped: TCP resends later
            self.outbuf += struct.pack(">I", length) + ctypes.string_at(buf, length)
        return length

    def _guest_error(self, msg: bytes, _opaque: int) -> None:
        print(f"metadata-net: guest error: {msg.decode(errors='replace')}", file=sys.stderr)

    def _timer_new(self, timer_id: int, cb_opaque: int, _opaque: int) -> int:
        handle, self._next_timer = self._next_timer, self._next_timer + 1
        self.timers[handle] = (-1, timer_id, cb_opaque or 0)
        return handle

    def _timer_free(self, handle: int, _opaque: int) -> None:
        self.timers.pop(handle, None)

    def _timer_mod(self, handle: int, expire_ms: int, _opaque: int) -> None:
        if handle in self.timers:
            _, timer_id, cb_opaque = self.timers[handle]
            self.timers[handle] = (expire_ms, timer_id, cb_opaque)

    def _add_poll_fd(self, fd: int, events: int, _opaque: int) -> int:
        self._fds.append((fd, events))
        return len(self._fds) - 1

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> int:
        self.stream.setblocking(False)
        while True:
            self._fds = []
            timeout = c_uint32(1000)
            self.lib.slirp_pollfds_fill(self.slirp, byref(timeout), self._add_poll, None)
            wait_ms = min(int(timeout.value), self._next_timer_ms())
            poller = select.poll()
            for fd, events in self._fds:
                poller.register(fd, _to_poll(events))
            stream_fd = self.stream.fileno()
            poller.register(stream_fd, select.POLLIN | (select.POLLOUT if self.outbuf else 0))
            ready: dict[int, int] = {}
            for fd, rev in poller.poll(max(wait_ms, 0)):
                ready[fd] = ready.get(fd, 0) | rev
            readable = ready.get(stream_fd, 0) & (select.POLLIN | select.POLLHUP | select.POLLERR)
            if readable and not self._read_stream():
                return EXIT_GUEST_GONE
            self._revents = [_from_poll(ready.get(fd, 0)) for fd, _ in self._fds]
            self.lib.slirp_pollfds_poll(self.slirp, 0, self._get_revents, None)
            self._fire_timers()
            if self.outbuf and not self._flush():
                return EXIT_GUEST_GONE

    def _next_timer_ms(self) -> int:
        armed = [expire for expire, _, _ in self.timers.values() if expire >= 0]
        if not armed:
            return 1000
        return max(0, min(armed) - time.monotonic_ns() // 1_000_000)

    def _fire_timers(self) -> None:
        now = time.monotonic_ns() // 1_000_000
        for handle, (expire, timer_id, cb_opaque) in list(self.timers.items()):
            if 0 <= expire <= now:
                self.timers[handle] = (-1, timer_id, cb_opaque)
                self.lib.slirp_handle_timer(self.slirp, timer_id, cb_opaque)

    def _read_stream(self) -> bool:
        try:
            data = self.stream.recv(262144)
        except BlockingIOError:
            return True
        except OSError:
            return False
        if not data:
            return False
        self.inbuf += data
        while len(self.inbuf) >= 4:
            (length,) = struct.unpack_from(">I", self.inbuf)
            if length > MAX_FRAME:
                raise RuntimeError(f"frame of {length} bytes from QEMU: not a stream netdev?")
            if len(self.inbuf) < 4 + length:
                break
            frame = bytes(self.inbuf[4 : 4 + length])
            del self.inbuf[: 4 + length]
            self.lib.slirp_input(self.slirp, frame, length)
        return True

    def _flush(self) -> bool:
        try:
            sent = self.stream.send(self.outbuf)
        except BlockingIOError:
            return True
        except OSError:
            return False
        del self.outbuf[:sent]
        return True


def _to_poll(events: int) -> int:
    return sum(flag for bit, flag in _POLL.items() if events & bit)


def _from_poll(revents: int) -> int:
    return sum(bit for bit, flag in _POLL.items() if revents & flag)


def isolate() -> None:
    """An empty network namespace for this process, and bounds on its files and memory.

    libslirp gives every guest TCP connection two 128 KiB socket buffers. With glibc's default,
    dynamic mmap threshold those come from the heap once one was freed, and a burst of connections
    left the heap at ~90 MB resident for good (measured: 300 connections, 4 rounds). A fixed
    threshold below that size keeps them in their own mappings, returned when the connection
    ends: the same bursts peak at ~17 MB and fall back to ~15 MB."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(_CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare(CLONE_NEWNET): {os.strerror(err)}")
    if libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1:
        raise OSError("mallopt(M_MMAP_THRESHOLD) failed")
    resource.setrlimit(resource.RLIMIT_NOFILE, (MAX_OPEN_FILES, MAX_OPEN_FILES))
    resource.setrlimit(resource.RLIMIT_AS, (MAX_ADDRESS_SPACE, MAX_ADDRESS_SPACE))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--server", required=True, help="server uuid (for logs and ps)")
    parser.add_argument("--stream", required=True, help="QEMU's -netdev stream unix socket")
    parser.add_argument("--metadata-socket", required=True, help="this server's metadata socket")
    parser.add_argument("--nfs-socket", help="this server's NFS link socket (virt/nfs_link.py)")
    args = parser.parse_args(argv)
    isolate()
    lib = load_libslirp()
    log_handler = limit_libslirp_logs(LogLimiter())  # noqa: F841 - must outlive the relay
    stream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        stream.connect(args.stream)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ECONNREFUSED):
            print(f"metadata-net {args.server}: no guest on {args.stream}: {e.strerror}",
                  file=sys.stderr)
            return EXIT_NO_GUEST
        raise
    return Relay(lib, stream, args.metadata_socket, args.nfs_socket).run()


if __name__ == "__main__":
    sys.exit(main())
