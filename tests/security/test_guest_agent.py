"""The guest agent against tenant-controlled tags and mount points.

Without a guest: the agent's own functions (ATTACHFS_AGENT_LIB=1 defines them without running
the loop) run under the host's busybox (the same busybox-static the guest image carries)
against hostile meta_data.json and /proc/mounts lines.
With a guest (`vm`): a hostile-but-accepted mount point and odd-but-legal tags mount, stay
mounted without a remount loop, and unmount after detach.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from attachfs.core.validation import mount_point_problem
from tests.vm.harness import IMAGES_DIR, Serve, serving, wait_for

AGENT = Path(__file__).parents[2] / "src/attachfs/virt/guest/attachfs-guest-agent"
BUSYBOX = shutil.which("busybox")
needs_busybox = pytest.mark.skipif(BUSYBOX is None, reason="busybox (busybox-static) missing")


def agent(function_call: list[str], tmp_path: Path, env: dict[str, str] | None = None) -> str:
    """Run one of the agent's shell functions under busybox sh; its stdout."""
    assert BUSYBOX is not None
    script = f'. "{AGENT}"; "$@"'
    result = subprocess.run([BUSYBOX, "sh", "-c", script, "agent", *function_call],
                            capture_output=True, timeout=30, cwd=tmp_path,
                            env={"PATH": os.environ["PATH"], "ATTACHFS_AGENT_LIB": "1",
                                 **(env or {})})
    assert result.returncode == 0, result.stderr
    return result.stdout.decode("latin-1")


def devices_of(tmp_path: Path, devices: Any, **top: Any) -> list[tuple[str, ...]]:
    meta = tmp_path / "meta_data.json"
    meta.write_text(json.dumps({"uuid": str(uuid.uuid4()), "name": "vm", **top,
                                "devices": devices}))
    return [_short(tuple(line.split("\t")))
            for line in agent(["devices_of", str(meta)], tmp_path).splitlines()]


def _short(row: tuple[str, ...]) -> tuple[str, ...]:
    """An accepted virtio-fs device without extension keys as (ok, tag, path): its mount is
    the default (virtiofs, the tag, defaults); anything else is kept whole."""
    if row[0] == "ok" and row[3:] == ("virtiofs", row[1], "defaults"):
        return row[:3]
    return row


def share(tag: Any, mount_point: Any = None, **extra: Any) -> dict[str, Any]:
    device = {"type": "share", "share_id": str(uuid.uuid4()), "tag": tag, "bus": "none",
              "address": "none", **extra}
    if mount_point is not None:
        device["mount_point"] = mount_point
    return device


@needs_busybox
def test_happy_path_devices(tmp_path: Path) -> None:
    rows = devices_of(tmp_path, [share("data"), share("home", "/home/alice"),
                                 share("-o", "/net/mymount"), share("--"), share("-")])
    assert rows == [("ok", "data", "/mnt/data"), ("ok", "home", "/home/alice"),
                    ("ok", "-o", "/net/mymount"), ("ok", "--", "/mnt/--"), ("ok", "-", "/mnt/-")]


HOSTILE_MOUNT_POINTS = [
    "/srv/a b", "/srv/a\tb", "/mnt/a\n\"ok\"\tevil\t/srv/evil", "/srv/a\\040b", "/srv/a\x00b",
    "/srv/a\x7fb", "/srv/é", "/mnt/../etc", "/mnt/./x", "/mnt//x", "/mnt/x/", "/", "relative",
    "/proc", "/proc/sys/kernel", "/sys/x", "/dev/shm", "/run/attachfs", "/etc", "/usr/local/x",
    "/lib64/x", "/boot/x", "/tmp/x", "/var/lib/x", "/bin", "/sbin/x", "/" + "a" * 255,
    "/srv/$(reboot)", "/srv/`id`", "/srv/a;b", "/srv/*",
]


@needs_busybox
@pytest.mark.parametrize("mount_point", HOSTILE_MOUNT_POINTS)
def test_hostile_mount_point_is_refused_without_injection(tmp_path: Path,
                                                          mount_point: str) -> None:
    assert mount_point_problem(mount_point) is not None  # the API refuses it as well
    rows = devices_of(tmp_path, [share("before"), share("victim", mount_point),
                                 share("after", "/srv/after")])
    assert rows[:2] == [("ok", "before", "/mnt/before"), ("ok", "after", "/srv/after")]
    assert len(rows) == 3 and rows[2][:2] == ("bad", "victim"), rows
    assert all("\n" not in field and "\\" not in field for row in rows for field in row)


HOSTILE_TAGS = ["", "a b", "a\tb", "a\nok\t/srv/x", "../x", "a/b", "x" * 37, ".", "a\\b",
                "a\u0000b", "tag\"", "é"]


@needs_busybox
@pytest.mark.parametrize("tag", HOSTILE_TAGS)
def test_hostile_tag_is_refused_and_named_safely(tmp_path: Path, tag: str) -> None:
    victim = share(tag)
    rows = devices_of(tmp_path, [victim, share("ok1")])
    assert rows == [("ok", "ok1", "/mnt/ok1"),
                    ("bad", victim["share_id"],
                     "tag is missing, longer than 36 bytes or not [A-Za-z0-9-]")]


@needs_busybox
def test_escapes_cannot_inject_devices(tmp_path: Path) -> None:
    """Everything a tenant controls (server name, metadata, tags, mount points) goes through
    json.dumps; none of its escapes may end a string, an object or the list early."""
    forged = '{"type": "share", "tag": "evil", "mount_point": "/srv/evil"}'
    odd_tags = [share({"tag": "d"}), share(None), share(7)]
    rows = devices_of(
        tmp_path,
        [share("a", "/srv/x\"}, " + forged + ", {\"tag\": \"y"),
         share("b", "/srv/\\\"],\"devices\":[" + forged),
         {"type": "share", "share_id": "x", "tag": "c", "note": {"nested": [forged]}},
         {"type": "disk", "tag": "not-a-share"}, *odd_tags],
        meta={"devices": json.dumps([json.loads(forged)])}, name="vm\"},{\"devices\":[" + forged)
    assert [r[:2] for r in rows if r[0] == "ok"] == [("ok", "c")]
    assert "evil" not in "".join("".join(r) for r in rows)
    assert [r[1] for r in rows if r[0] == "bad"] == ["a", "b", *(d["share_id"] for d in odd_tags)]


@needs_busybox
def test_unicode_escapes_decode_before_checks(tmp_path: Path) -> None:
    # A producer other than json.dumps may escape plain ASCII: it means the same characters.
    meta = tmp_path / "meta_data.json"
    meta.write_text('{"devices": [{"type": "sh\\u0061re", "t\\u0061g": "d\\u0061ta", '
                    '"mount_point": "\\u002fsrv\\/d"}, {"type": "share", "tag": "e", '
                    '"mount_point": "/srv/e\\u000a/x"}]}')
    rows = [_short(tuple(x.split("\t")))
            for x in agent(["devices_of", str(meta)], tmp_path).splitlines()]
    assert rows == [("ok", "data", "/srv/d"),
                    ("bad", "e", "mount point has characters outside [A-Za-z0-9._+@-]")]


@needs_busybox
def test_overlapping_and_duplicate_devices_keep_the_first(tmp_path: Path) -> None:
    rows = devices_of(tmp_path, [share("a", "/srv/data"), share("b", "/srv/data/sub"),
                                 share("c", "/srv"), share("a", "/srv/other"),
                                 share("d", "/srv/data2")])
    assert rows == [("ok", "a", "/srv/data"), ("ok", "d", "/srv/data2"),
                    ("bad", "b", "mount point overlaps the one of share a"),
                    ("bad", "c", "mount point overlaps the one of share a"),
                    ("bad", "a", "tag is listed twice")]


@needs_busybox
def test_mounted_entries_decode_proc_mounts_escapes(tmp_path: Path) -> None:
    """mounted_entries reads /proc/mounts; run it on a copy with escaped fields (through a
    private mount namespace would need root tricks: the awk program is what matters). It keeps
    the lines of its file, in their order, whose mount is there: type, source and path."""
    fake = tmp_path / "mounts"
    fake.write_text("t1 /srv/a\\040b virtiofs rw 0 0\n"
                    "t2 /srv/plain virtiofs rw 0 0\n"
                    "t4 /srv/plain tmpfs rw 0 0\n"
                    "t5 /srv/back\\134slash virtiofs rw 0 0\n")
    text = AGENT.read_text().replace("/proc/mounts", str(fake))
    patched = tmp_path / "agent"
    patched.write_text(text)
    entries = [("b", "/srv/a b", "virtiofs", "t1"),  # listed after the others: order is kept
               ("a", "/srv/a\\040b", "virtiofs", "t1"),  # the escape, undecoded: not there
               ("c", "/srv/plain", "virtiofs", "t2"),
               ("d", "/srv/plain", "virtiofs", "t4"),  # t4 is a tmpfs
               ("e", "/srv/plain/", "virtiofs", "t2"),
               ("f", "/srv/plain", "tmpfs", "t4"),
               ("g", "/srv/plain", "9p", "t2"),
               ("h", "/srv/back\\slash", "virtiofs", "t5")]
    listed = tmp_path / "listed"
    listed.write_text("".join("\t".join(e) + "\n" for e in entries))
    assert BUSYBOX is not None
    out = subprocess.run([BUSYBOX, "sh", "-c", f'. "{patched}"; mounted_entries "$1"', "agent",
                          str(listed)], env={"ATTACHFS_AGENT_LIB": "1", "PATH": os.environ["PATH"]},
                         capture_output=True, text=True, timeout=30, check=True).stdout
    assert [line.split("\t")[0] for line in out.splitlines()] == ["b", "c", "f", "h"]
    out = subprocess.run([BUSYBOX, "sh", "-c", f'. "{patched}"; mounted_entries "$1" tags',
                          "agent", str(listed)], env={"ATTACHFS_AGENT_LIB": "1",
                                                      "PATH": os.environ["PATH"]},
                         capture_output=True, text=True, timeout=30, check=True).stdout
    assert out.splitlines() == ["b", "c", "f", "h"]  # the report's form: tags only
    empty = tmp_path / "empty"
    empty.write_text("")
    out = subprocess.run([BUSYBOX, "sh", "-c", f'. "{patched}"; mounted_entries "$1"', "agent",
                          str(empty)], env={"ATTACHFS_AGENT_LIB": "1", "PATH": os.environ["PATH"]},
                         capture_output=True, text=True, timeout=30, check=True).stdout
    assert out == ""


def how(transport: str, fstype: str, source: str, options: str, target: str) -> dict[str, str]:
    """The extension keys the metadata service adds with ?attachfs=1 (core/guest_mount)."""
    return {"attachfs:transport": transport, "attachfs:fstype": fstype,
            "attachfs:source": source, "attachfs:options": options, "attachfs:target": target}


NFS_SOURCE = "169.254.169.254:/attachfs-0b4f3c1e-8d7a-4e55-9a8e-2f1d3c4b5a69-data"


@needs_busybox
def test_extension_keys_say_how_to_mount(tmp_path: Path) -> None:
    rows = devices_of(tmp_path, [
        share("v", **how("virtiofs", "virtiofs", "v", "ro", "/mnt/v")),
        share("n", "/srv/n", **how("9p", "9p", "n", "trans=virtio,version=9p2000.L,ro",
                                   "/srv/n")),
        share("f", **how("nfs", "nfs4", NFS_SOURCE, "vers=4.1,proto=tcp,port=2049", "/mnt/f"))])
    assert rows == [("ok", "v", "/mnt/v", "virtiofs", "v", "ro"),
                    ("ok", "n", "/srv/n", "9p", "n", "trans=virtio,version=9p2000.L,ro"),
                    ("ok", "f", "/mnt/f", "nfs4", NFS_SOURCE, "vers=4.1,proto=tcp,port=2049")]


@needs_busybox
@pytest.mark.parametrize(("keys", "reason"), [
    (how("x", "ext4", "t", "rw", "/mnt/t"), "fstype is not virtiofs, 9p or nfs4"),
    (how("x", "bind", "t", "rw", "/mnt/t"), "fstype is not virtiofs, 9p or nfs4"),
    (how("9p", "9p", "other", "rw", "/mnt/t"), "source is not the tag"),
    (how("9p", "9p", "/dev/sda", "rw", "/mnt/t"), "source is not the tag"),
    (how("nfs", "nfs4", "evil.example:/x", "rw", "/mnt/t"), "nfs source is not ADDRESS:/PATH"),
    (how("nfs", "nfs4", "10.0.0.1:/a/../..", "rw", "/mnt/t"), "nfs source is not ADDRESS:/PATH"),
    (how("nfs", "nfs4", "10.0.0.1:/a b", "rw", "/mnt/t"), "nfs source is not ADDRESS:/PATH"),
    (how("9p", "9p", "t", "rw,exec,suid ", "/mnt/t"), "options have characters outside [A-Za-z0-9=,.]"),
    (how("9p", "9p", "t", "x\tz", "/mnt/t"), "options have characters outside [A-Za-z0-9=,.]"),
    (how("9p", "9p", "t", "rw", "/etc"), "target is not the mount point"),
])
def test_extension_keys_are_checked(tmp_path: Path, keys: dict[str, str], reason: str) -> None:
    """The host writes them, but the guest agent checks them as it checks a tenant's tag:
    nothing outside a fixed alphabet reaches its fstab line."""
    rows = devices_of(tmp_path, [share("t", **keys), share("ok1")])
    assert rows == [("ok", "ok1", "/mnt/ok1"), ("bad", "t", reason)]


# ---- in a real guest ------------------------------------------------------------------------
ODD_MOUNT_POINT = "/srv/o.d+d@x-y_z/-data"  # every character the rule allows
ODD_TAG = "-o"  # busybox mount takes a leading "-" for an option: the agent must not
PLAIN_DASH_TAG = "--"
GUEST_LOOP = r"""#!/bin/sh
(
  last=
  while true; do
    for d in "/srv/o.d+d@x-y_z/-data" "/mnt/--"; do
      [ -f "$d/ping" ] || continue
      v=$(cat "$d/ping")
      echo "$v" > "$d/pong.tmp" && mv "$d/pong.tmp" "$d/pong" && rm -f "$d/ping"
    done
    n=$(grep -c " virtiofs " /proc/mounts)
    [ "$n" = "$last" ] || echo "virtiofs mounts: $n"
    last=$n
    sleep 0.3
  done
) &
echo "odd loop started"
"""


@pytest.fixture
def serve() -> Iterator[Serve]:
    with serving(config="[libvirt]\nspare_root_ports = 2\n[agent]\ndetach_timeout = 8.0\n",
                 prefix="odd-") as s:
        yield s


def _ping(share_dir: Path) -> None:
    token = uuid.uuid4().hex
    (share_dir / "ping").write_text(token + "\n")
    wait_for(f"pong in {share_dir.name}", lambda: (share_dir / "pong").exists()
             and (share_dir / "pong").read_text().strip() == token, 60)


def _last_count(console: str) -> str | None:
    """The console if the last virtiofs count the guest loop printed is 0."""
    return console if console.rsplit("virtiofs mounts: ", 1)[1].startswith("0") else None


def _mounted_lines(console: str, tag: str) -> int:
    return console.count(f"attachfs-guest: mounted share {tag} at ")


@pytest.mark.vm
@pytest.mark.skipif(os.geteuid() != 0, reason="libvirt guests and host mounts need root")
@pytest.mark.skipif(not (IMAGES_DIR / "debian-busybox" / "image.json").exists(),
                    reason="guest image missing: run `make setup`")
def test_odd_but_legal_tag_and_mount_point_in_a_real_guest(serve: Serve) -> None:
    user_data = base64.b64encode(GUEST_LOOP.encode()).decode()
    r = serve.http.post("/v2.1/servers", json={"server": {
        "name": "odd", "flavorRef": "2", "imageRef": "debian-busybox", "user_data": user_data}})
    assert r.status_code == 202, r.text
    sid = str(r.json()["server"]["id"])
    serve.wait_status(sid, "ACTIVE")
    serve.wait_console(sid, "odd loop started")
    odd_id, odd_dir = serve.new_share("odd-data")
    dash_id, dash_dir = serve.new_share("dash-data")

    # Refused at the API, nothing recorded: the server still has no attachment.
    r = serve.action(sid, {"share_attach": {"share_id": odd_id, "mount_point": "/run/attachfs",
                                            "tag": "x"}})
    assert r.status_code == 400 and "/run" in r.json()["badRequest"]["message"], r.text
    assert serve.http.get(f"/v2.1/servers/{sid}/shares").json()["shares"] == []

    r = serve.action(sid, {"share_attach": {"share_id": odd_id, "tag": ODD_TAG,
                                            "mount_point": ODD_MOUNT_POINT}})
    assert r.status_code == 202, r.text
    r = serve.http.post(f"/v2.1/servers/{sid}/shares",
                        json={"share": {"share_id": dash_id, "tag": PLAIN_DASH_TAG}})
    assert r.status_code == 201, r.text
    serve.wait_mapping(sid, odd_id, "active")
    serve.wait_mapping(sid, dash_id, "active")
    serve.wait_console(sid, f"attachfs-guest: mounted share {ODD_TAG} at {ODD_MOUNT_POINT}")
    serve.wait_console(sid, f"attachfs-guest: mounted share {PLAIN_DASH_TAG} at /mnt/--")
    _ping(odd_dir)
    _ping(dash_dir)

    # No remount loop: with a 1 s poll, 6 s more rounds add no "mounted share" line.
    time.sleep(6)
    console = serve.console(sid)
    assert _mounted_lines(console, ODD_TAG) == 1, console
    assert _mounted_lines(console, PLAIN_DASH_TAG) == 1, console
    assert "could not mount" not in console, console
    assert "virtiofs mounts: 2" in console, console

    for share_id in (odd_id, dash_id):
        assert serve.http.delete(f"/v2.1/servers/{sid}/shares/{share_id}").status_code == 200
    serve.wait_console(sid, f"attachfs-guest: unmounted share {ODD_TAG} from {ODD_MOUNT_POINT}")
    serve.wait_console(sid, f"attachfs-guest: unmounted share {PLAIN_DASH_TAG} from /mnt/--")
    wait_for("attachments removed", lambda: serve.mapping(sid, odd_id) is None
             and serve.mapping(sid, dash_id) is None, 90)
    # The loop printed "virtiofs mounts: 0" once already, before anything was attached: wait
    # for the last count it printed to be 0, not for the line.
    console = wait_for("no virtiofs mount left in the guest", lambda: _last_count(serve.console(sid)), 60)
    assert _mounted_lines(console, ODD_TAG) == 1 and _mounted_lines(console, PLAIN_DASH_TAG) == 1
    assert serve.http.delete(f"/v2.1/servers/{sid}").status_code == 204
    serve.wait_gone(sid)
