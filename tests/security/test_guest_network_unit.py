"""The guest network pieces without a guest: the domain XML, the libslirp structure layout, the
metadata listener's caps (a real listener on a real unix socket) and the helper supervisor (the
real helper process against a stand-in for QEMU's stream socket)."""

from __future__ import annotations

import base64
import contextlib
import ctypes
import socket
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from attachfs.db.engine import Database, migrate
from attachfs.db.tables import Server
from attachfs.metadata.sockets import MetadataLimits, MetadataSockets
from attachfs.virt import libvirt_xml as lx
from attachfs.virt import metadata_net
from attachfs.virt.base import BootImage, GuestShare, GuestSpec
from attachfs.virt.metadata_net_supervisor import MetadataNetworks, stream_socket_path


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A directory short enough for unix socket paths (pytest's tmp_path is not)."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="afs-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _spec(tmp: Path) -> GuestSpec:
    image = BootImage(id="i", name="n", kernel=Path("/k"), initrd=Path("/i"))
    return GuestSpec(uuid=str(uuid.uuid4()), name="vm", vcpus=1, memory_mib=256, image=image,
                     console_log=tmp / "c.log", metadata_socket=tmp / "md" / "m.sock",
                     shares=(GuestShare("t", Path("/srv/t")),))


# ---- domain XML ---------------------------------------------------------------------------------
def test_domain_has_one_stream_nic_and_no_user_network(short_tmp: Path) -> None:
    tmp_path = short_tmp
    spec = _spec(tmp_path)
    stream = stream_socket_path(spec.metadata_socket, spec.uuid)
    xml = lx.domain_xml(spec, domain_type="qemu", owner="o", network_socket=stream,
                        spare_root_ports=1, sockets={"t": Path("/run/v/t.sock")})
    root = ET.fromstring(xml)
    args = [a.get("value", "") for a in root.iter(f"{{{lx.QEMU_NS}}}arg")]
    assert args[0] == "-netdev"
    assert args[1] == f"stream,id=afsmd0,server=on,addr.type=unix,addr.path={stream}"
    assert args[2] == "-device" and '"netdev": "afsmd0"' in args[3]
    assert len(args) == 4
    # nothing of QEMU's own user networking (slirp with host access) nor anything it spawns
    assert "user," not in xml and "guestfwd" not in xml and "cmd:" not in xml
    assert root.find("./devices/interface") is None
    assert stream == tmp_path / "md" / "net" / f"{spec.uuid}.sock"
    assert lx.relay_sockets(xml) == (stream, spec.metadata_socket)


def test_virtiofs_device_is_served_on_attachfs_socket(tmp_path: Path) -> None:
    """libvirt runs no virtiofsd: the device connects to the one attachfs runs sandboxed
    (virt/virtiofsd.py), and the boot-time element is the hot-plug one."""
    spec = _spec(tmp_path)
    xml = lx.domain_xml(spec, domain_type="qemu", owner=None, network_socket=tmp_path / "n.sock",
                        spare_root_ports=0, sockets={"t": Path("/run/v/t.sock")})
    fs = ET.fromstring(xml).find("./devices/filesystem")
    assert fs is not None and fs.find("binary") is None
    source = fs.find("source")
    assert source is not None and source.get("socket") == "/run/v/t.sock"
    assert source.get("dir") is None
    hot = lx.filesystem_element(GuestShare("t", Path("/srv/t")), Path("/run/v/t.sock"))
    assert lx.to_xml(hot) == ET.tostring(fs, encoding="unicode").strip()


@pytest.mark.parametrize("bad", ["/run/a,b.sock", "/run/a b.sock", "relative.sock",
                                 "/" + "x" * 120 + ".sock"])
def test_socket_paths_qemu_cannot_take_are_refused(tmp_path: Path, bad: str) -> None:
    spec = _spec(tmp_path)
    with pytest.raises(lx.VirtError):
        lx.domain_xml(spec, domain_type="qemu", owner=None, network_socket=Path(bad),
                      spare_root_ports=0, sockets={"t": Path("/run/v/t.sock")})


def test_relay_sockets_absent_in_foreign_xml() -> None:
    assert lx.relay_sockets("<domain><devices/></domain>") is None


# ---- libslirp ABI ---------------------------------------------------------------------------------
def test_slirp_structures_match_libslirp_4_7_header() -> None:
    """Offsets and sizes as compiled from /usr/include/slirp/libslirp.h (libslirp-dev 4.7.0)."""
    cfg, cb = metadata_net.SlirpConfig, metadata_net.SlirpCb
    assert ctypes.sizeof(cfg) == 184 and ctypes.sizeof(cb) == 88
    expected = {"restricted": 4, "in_enabled": 8, "vnetwork": 12, "vhost": 20, "in6_enabled": 24,
                "vprefix_addr6": 28, "vprefix_len": 44, "vhost6": 48, "vhostname": 64,
                "vdhcp_start": 96, "vnameserver": 100, "vnameserver6": 104, "vdnssearch": 120,
                "vdomainname": 128, "if_mtu": 136, "if_mru": 144, "disable_host_loopback": 152,
                "enable_emu": 153, "outbound_addr": 160, "outbound_addr6": 168,
                "disable_dns": 176, "disable_dhcp": 177}
    assert {name: getattr(cfg, name).offset for name in expected} == expected
    assert cb.timer_new_opaque.offset == 80
    lib = metadata_net.load_libslirp()
    assert lib.slirp_version_string().decode().startswith("4.")
    config = metadata_net.slirp_config()
    assert config.restricted == 1 and not config.in6_enabled and config.disable_host_loopback
    assert config.disable_dns and not config.disable_dhcp and not config.enable_emu


def test_libslirp_messages_are_rate_limited(capsys: pytest.CaptureFixture[str]) -> None:
    limiter = metadata_net.LogLimiter(interval=60)
    for _ in range(5):
        limiter(b"Slirp", 8, b"open_unix(): Too many open files", 0)
    limiter.last -= 60  # a minute later
    limiter(b"Slirp", 8, b"open_unix(): Too many open files", 0)
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["metadata-net: Slirp: open_unix(): Too many open files",
                     "metadata-net: Slirp: open_unix(): Too many open files (4 more since)"]


# ---- the metadata listener's caps -------------------------------------------------------------
LIMITS = MetadataLimits(max_connections=4, request_timeout=1.0, keep_alive_timeout=1.0,
                        max_header_bytes=2048, max_body_bytes=4096)


def test_limits_come_from_the_metadata_config() -> None:
    from attachfs.config import MetadataConfig

    config = MetadataConfig(max_connections=3, request_timeout=2.5, keep_alive_timeout=7,
                            max_header_bytes=4096, max_body_bytes=2048)
    assert MetadataLimits.from_config(config) == MetadataLimits(3, 2.5, 7, 4096, 2048)
    assert MetadataLimits.from_config(MetadataConfig()) == MetadataLimits()


@pytest.fixture
def listener(short_tmp: Path) -> Iterator[tuple[Path, str]]:
    tmp_path = short_tmp  # its socket's path: pytest's tmp_path is too long under xdist
    url = f"sqlite:///{tmp_path / 'a.db'}"
    migrate(url)
    db = Database(url)
    server_uuid = str(uuid.uuid4())
    with db.session() as s:
        s.add(Server(uuid=server_uuid, name="vm", project_id="p", user_id="u", host="h",
                     flavor_id="1", image_id="i", vcpus=1, memory_mib=256, vm_state="active",
                     power_intent="on", user_data=base64.b64encode(b"#!/bin/sh\n").decode(),
                     meta={}))
    sockets = MetadataSockets(db, tmp_path / "md", limits=LIMITS)
    try:
        yield sockets.ensure(server_uuid), server_uuid
    finally:
        sockets.close()


def _connect(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(str(path))
    return s


def _closed_within(s: socket.socket, seconds: float) -> bool:
    """The peer closed (EOF or reset) within `seconds`."""
    s.settimeout(seconds)
    try:
        return s.recv(65536) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def _request(s: socket.socket, raw: bytes) -> bytes:
    """Send `raw`, read one whole response (headers and a content-length body)."""
    s.sendall(raw)
    data = b""
    while chunk := s.recv(65536):
        data += chunk
        head, sep, body = data.partition(b"\r\n\r\n")
        if not sep:
            continue
        length = [int(v) for k, v in (line.split(b":", 1) for line in head.split(b"\r\n")[1:])
                  if k.strip().lower() == b"content-length"]
        if len(body) >= (length[0] if length else 0):
            break
    return data


def test_answers_with_its_own_server(listener: tuple[Path, str]) -> None:
    path, server_uuid = listener
    with _connect(path) as s:
        reply = _request(s, b"GET /openstack/latest/meta_data.json HTTP/1.1\r\nHost: x\r\n"
                            b"Connection: close\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200") and server_uuid.encode() in reply


def test_connections_beyond_the_cap_are_closed_unanswered(listener: tuple[Path, str]) -> None:
    path, _ = listener
    held = [_connect(path) for _ in range(LIMITS.max_connections)]
    time.sleep(0.2)
    extra = _connect(path)
    try:
        assert _closed_within(extra, 0.5), "a connection beyond the cap was kept open"
        assert not any(_closed_within(s, 0.05) for s in held)
    finally:
        extra.close()
        for s in held:
            s.close()
    time.sleep(0.2)  # the closed ones leave the count: a new connection is served again
    with _connect(path) as s:
        assert _request(s, b"GET /openstack HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n") \
            .startswith(b"HTTP/1.1 200")


def test_silent_and_slow_connections_are_closed(listener: tuple[Path, str]) -> None:
    path, _ = listener
    silent, slow = _connect(path), _connect(path)
    try:
        started = time.monotonic()
        slow.sendall(b"GET /openstack HTTP/1.1\r\n")  # headers never finished
        assert _closed_within(silent, 3) and _closed_within(slow, 3)
        assert time.monotonic() - started < 2.5  # request_timeout 1 s
    finally:
        silent.close()
        slow.close()


def test_idle_keep_alive_connection_is_closed(listener: tuple[Path, str]) -> None:
    path, _ = listener
    with _connect(path) as s:
        started = time.monotonic()
        assert _request(s, b"GET /openstack HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 200")
        assert _closed_within(s, 3)
        assert time.monotonic() - started >= LIMITS.keep_alive_timeout * 0.9


def test_oversized_headers_and_bodies_are_refused(listener: tuple[Path, str]) -> None:
    path, _ = listener
    with _connect(path) as s:
        big = b"X-Pad: " + b"a" * (LIMITS.max_header_bytes + 100) + b"\r\n"
        reply = _request(s, b"GET /openstack HTTP/1.1\r\nHost: x\r\n" + big + b"\r\n")
        assert reply.startswith(b"HTTP/1.1 431")  # the whole header block at once
    with _connect(path) as s:
        s.sendall(b"GET /openstack HTTP/1.1\r\nHost: x\r\n")
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for _ in range(LIMITS.max_header_bytes // 1000 + 2):  # ... or in pieces
                s.sendall(b"X-Pad: " + b"a" * 1000 + b"\r\n")
                time.sleep(0.01)
        assert s.recv(65536).startswith(b"HTTP/1.1 431")
    with _connect(path) as s:
        body = b"t\n" * LIMITS.max_body_bytes
        reply = _request(s, b"POST /attachfs/v1/mounts HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                            b"Content-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % len(body)
                         + body)
        assert reply.startswith(b"HTTP/1.1 413")
    with _connect(path) as s:  # no declared length: counted as it streams in
        chunk = b"a" * 3000
        chunked = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(3)) + b"0\r\n\r\n"
        reply = _request(s, b"POST /attachfs/v1/mounts HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                            b"Transfer-Encoding: chunked\r\n\r\n" + chunked)
        assert reply.startswith(b"HTTP/1.1 413")


# ---- the helper supervisor ------------------------------------------------------------------
def _accept(server: socket.socket, timeout: float) -> socket.socket:
    server.settimeout(timeout)
    conn, _ = server.accept()
    return conn


def test_supervisor_starts_restarts_adopts_and_stops_the_helper(short_tmp: Path) -> None:
    """A stand-in for QEMU's stream server: the real helper connects, is started again after a
    crash, is adopted (not duplicated) by a second supervisor, and ends with its guest."""
    import os
    import signal

    server_uuid = str(uuid.uuid4())
    metadata_socket = short_tmp / "md" / f"{server_uuid}.sock"
    stream = stream_socket_path(metadata_socket, server_uuid)
    networks = MetadataNetworks()
    networks.prepare(stream)
    qemu = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    qemu.bind(str(stream))
    qemu.listen(1)
    try:
        networks.ensure(server_uuid, stream, metadata_socket)
        first = networks.pid(server_uuid)
        assert first is not None
        conn = _accept(qemu, 10)
        networks.ensure(server_uuid, stream, metadata_socket)  # idempotent
        assert networks.pid(server_uuid) == first

        os.kill(first, signal.SIGKILL)  # a crash: the watcher starts a new one
        conn.close()
        conn = _accept(qemu, 15)
        second = networks.pid(server_uuid)
        assert second is not None and second != first

        again = MetadataNetworks()  # a restarted agent adopts the running helper
        again.ensure(server_uuid, stream, metadata_socket)
        assert again.pid(server_uuid) == second

        conn.close()  # the guest is gone: QEMU closes the stream and its listener
        qemu.close()
        deadline = time.monotonic() + 15
        while (_helpers(server_uuid) or networks.pid(server_uuid) or again.pid(server_uuid)) \
                and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _helpers(server_uuid) == [], "a helper outlived its guest"
        assert networks.pid(server_uuid) is None and again.pid(server_uuid) is None
        networks.stop(server_uuid, stream)
        assert not stream.exists() and not stream.with_suffix(".pid").exists()
    finally:
        qemu.close()
        networks.stop(server_uuid, stream)


def _helpers(server_uuid: str) -> list[int]:
    """Live metadata network helpers for this server, found in /proc."""
    from attachfs.virt.metadata_net_supervisor import _is_helper

    return [int(p.name) for p in Path("/proc").iterdir()
            if p.name.isdigit() and _is_helper(int(p.name), server_uuid)]
