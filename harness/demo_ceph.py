"""`make demo-ceph` (scripts/demo-ceph.sh runs `python -m harness.demo_ceph`): a CephFS share
from a real Ceph, made through a real Manila, attached with the unchanged `openstack` CLI to a
running guest of a real `attachfs serve`, with Keystone on; the guest reads and writes it.

Everything runs on this host under one new directory /var/lib/attachfs/demo-ceph.XXXXXX, with
the code the tests use: a single-node Ceph (harness/ceph.py), Keystone (harness/keystone.py),
Manila with its real CephFS driver and a keystone-mode API in the catalog (harness/manila.py),
and `attachfs serve` with Keystone auth and the Manila provider, in the catalog as the compute
service (harness/serve.py, harness/cloud.py). Each `openstack` command is printed, then run as
the project member a_member (password auth, endpoints from the catalog).

Everything is torn down at the end, on a failure and on Ctrl-C (or SIGTERM) alike: no daemon,
mount, guest, database or RabbitMQ vhost of the run is left, which the last step checks; the
directory is removed (kept after a failure, for its logs). Nothing of one run is used by the
next: run it as often as you like.
"""

from __future__ import annotations

import contextlib
import shlex
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from types import FrameType

from attachfs.storage import mountinfo
from harness import keystone as hk
from harness import manila as hm
from harness.ceph import CephCluster
from harness.cloud import attachfs_in_catalog, manila_client_user, serve_config
from harness.openstack_cli import OPENSTACK, Cli, password_clouds_yaml
from harness.process import processes_mentioning, wait_for
from harness.serve import IMAGES_DIR, Serve

STATE_ROOT = Path("/var/lib/attachfs")
HOST = "demo-ceph-host"  # the agent's host: Manila's cephx rule is for attachfs-<host>
USER, PROJECT = "a_member", "A"
SERVER, SHARE, TAG = "demo-ceph-vm", "demo-ceph-share", "ceph"
CLI_TIMEOUT = 240  # `server create --wait` boots a guest under TCG

# The guest's user_data: the share comes later (hot attach), so it waits in the background for
# the file the host put in Ceph, then reads it and writes one back; its lines go to the console.
GUEST_SCRIPT = r"""#!/bin/sh
(
  while [ ! -f /mnt/ceph/hello.txt ]; do sleep 0.5; done
  echo "guest read: $(cat /mnt/ceph/hello.txt)"
  echo "hello from the guest $(hostname), uptime $(cut -d' ' -f1 /proc/uptime)s" > /mnt/ceph/from-guest.txt
  sync
  echo "guest wrote: /mnt/ceph/from-guest.txt"
  echo "guest df: $(df -k /mnt/ceph | tail -1)"
) &
echo "guest: waiting for the share at /mnt/ceph"
"""


class Interrupts:
    """Ctrl-C, SIGTERM, SIGHUP: the first unwinds into the teardown (KeyboardInterrupt); later
    ones are ignored, so that the teardown is not cut short."""

    def __init__(self) -> None:
        self.stopping = False  # unwinding or tearing down: ignore signals

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self.handle)

    def handle(self, signum: int, frame: FrameType | None) -> None:
        if self.stopping:
            print(f"\n(signal {signum}: already tearing down, please wait)", flush=True)
        else:
            self.stopping = True
            raise KeyboardInterrupt


INTERRUPTS = Interrupts()


# ---- printing ------------------------------------------------------------------------------
def step(title: str) -> None:
    print(f"\n\033[1m== {title}\033[0m", flush=True)


def say(text: str) -> None:
    print(text, flush=True)


def show(cli: Cli, *args: str, timeout: float = 60) -> str:
    """Print the command, run it, print what it printed (an empty list prints nothing: say
    so)."""
    say(f"$ openstack {shlex.join(args)}")
    out = cli.ok(*args, timeout=timeout)
    if out.strip():
        say(out.rstrip())
    elif "list" in args:
        say("(empty)")
    return out


class Clock:
    """Seconds per phase, printed at the end."""

    def __init__(self) -> None:
        self.began = self.last = time.monotonic()
        self.phases: list[tuple[str, float]] = []

    def lap(self, what: str) -> None:
        now = time.monotonic()
        self.phases.append((what, now - self.last))
        self.last = now

    def summary(self) -> str:
        parts = ", ".join(f"{what} {seconds:.1f}s" for what, seconds in self.phases)
        return f"{parts}; total {time.monotonic() - self.began:.1f}s"


# ---- checks before anything starts ----------------------------------------------------------
def missing_prerequisites() -> list[str]:
    missing = []
    for venv, what in ((hk.KEYSTONE_VENV / "bin" / "keystone-manage", "Keystone"),
                       (hm.VENV / "bin" / "manila-share", "Manila"), (OPENSTACK, "openstack CLI")):
        if not venv.exists():
            missing.append(f"{what} ({venv}): run `make setup`")
    if not (IMAGES_DIR / "debian-busybox" / "image.json").exists():
        missing.append(f"the guest image under {IMAGES_DIR}: run `make setup`")
    problem = hm.prerequisites()
    if problem:
        missing.append(problem + " (Manila needs MariaDB and RabbitMQ on this host)")
    return missing


# ---- the services ----------------------------------------------------------------------------
def start_keystone(base: Path) -> hk.Keystone:
    base.mkdir()
    ks = hk.start(base)
    try:
        hk.populate(ks)
    except BaseException:
        hk.stop(ks)
        raise
    return ks


def start_manila(base: Path) -> hm.Manila:
    base.mkdir()
    manila = hm.Manila(base, uuid.uuid4().hex[:10])
    try:
        manila.start()
        manila.create_share_type(hm.DEFAULT_TYPE)
    except BaseException:
        manila.stop()
        raise
    return manila


def stop_manila(manila: hm.Manila) -> None:
    left = manila.stop()
    if left:
        raise RuntimeError(f"Manila left: {left}")


def start_services(stack: ExitStack, base: Path) -> tuple[CephCluster, hk.Keystone, hm.Manila]:
    """Ceph, Keystone and Manila, one after the other (started side by side they took as long
    on 2 cores: each is busy with its CPU), each stopped at the end of `stack`. Ceph's
    daemons die with the thread that started them (setpriv --pdeathsig): this one, which
    lives as long as the demo."""
    ceph = CephCluster(base / "ceph")
    stack.callback(ceph.stop)
    ceph.start()
    say(f"Ceph: HEALTH_OK with CephFS in {ceph.start_seconds:.1f}s, mons {ceph.mon_addrs}")
    ks = start_keystone(base / "keystone")
    stack.callback(hk.stop, ks)
    say(f"Keystone: {ks.v3} (up in {ks.started_in:.1f}s)")
    manila = start_manila(base / "manila")
    stack.callback(stop_manila, manila)
    say(f"Manila: started in {manila.start_seconds:.1f}s")
    return ceph, ks, manila


@contextlib.contextmanager
def serving(config: str, state: Path) -> Iterator[Serve]:
    """`attachfs serve` on `state`; on the way out its guests, mounts and state go (its log's
    end is printed first if the block failed)."""
    serve = Serve(state, config)
    try:
        serve.start()
        yield serve
    except BaseException:
        print(f"--- the end of attachfs's log:\n{serve.tail(4000)}", file=sys.stderr)
        raise
    finally:
        serve.cleanup()


# ---- the walk-through ------------------------------------------------------------------------
def console_lines(cli: Cli, prefixes: tuple[str, ...]) -> list[str]:
    out = cli.ok("console", "log", "show", SERVER)
    return [line for line in out.splitlines() if line.startswith(prefixes)]


def wait_console(cli: Cli, text: str, timeout: float = 180) -> None:
    wait_for(f"the console line {text!r}", lambda: console_lines(cli, (text,)), timeout, 1.0)


def share_status(cli: Cli) -> str | None:
    status = str(cli.ok("share", "show", SHARE, "-c", "status", "-f", "value")).strip()
    if status not in ("creating", "available"):
        raise RuntimeError(f"share {SHARE} went to {status}")
    return status if status == "available" else None


def attachment_status(cli: Cli) -> list[str]:
    return [a["Status"] for a in cli.json("server", "share", "list", SERVER)]


def walk_through(cli: Cli, ceph: CephCluster, work: Path, clock: Clock) -> None:
    step("Create a CEPHFS share through Manila (found in Keystone's catalog), as a_member")
    show(cli, "share", "create", "CEPHFS", "1", "--share-type", hm.CEPHFS_TYPE, "--name", SHARE,
         "-c", "id", "-c", "name", "-c", "status", "-c", "share_proto", "-c", "size",
         "-c", "share_type_name")
    wait_for(f"share {SHARE} available", lambda: share_status(cli), 120, 1.0)
    show(cli, "share", "export", "location", "list", SHARE, "-c", "Path", "-c", "Preferred")
    (location,) = cli.json("share", "export", "location", "list", SHARE)
    path = str(location["Path"]).rsplit(":", 1)[1]  # monitors:path
    clock.lap("share")

    step("Put a file in the share through Ceph itself (an admin ceph-fuse mount, not attachfs)")
    # Mounted only for a moment, while no guest starts: a guest started meanwhile would keep a
    # copy of the mount in its QEMU's mount namespace (this host's mounts do not propagate),
    # ceph-fuse would outlive the unmount, and its client's caps would hold up Manila's delete.
    with ceph.fuse_mount(path, work / "admin-mount", "admin", ceph.admin_key) as admin:
        hello = admin.mountpoint / "hello.txt"
        hello.write_text(f"hello from Ceph, {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n")
        say(f"wrote {hello}: {hello.read_text().strip()}")

    step("Create a server whose user_data waits for the share, reads it and writes back")
    user_data = work / "user-data.sh"
    user_data.write_text(GUEST_SCRIPT)
    show(cli, "server", "create", "--flavor", "a1.small", "--image", "debian-busybox",
         "--nic", "none", "--user-data", str(user_data), "--wait", SERVER,
         "-c", "id", "-c", "name", "-c", "status", timeout=CLI_TIMEOUT)
    wait_console(cli, "guest: waiting for the share")
    clock.lap("server")

    step("Attach the share to the running server (hot plug), tag 'ceph'")
    show(cli, "server", "add", "share", SERVER, SHARE, "--tag", TAG)
    wait_for("the attachment active", lambda: attachment_status(cli) == ["active"], 180, 1.0)
    show(cli, "server", "share", "list", SERVER)
    show(cli, "server", "share", "show", SERVER, SHARE)
    say("Manila's access rule for this host, as the member sees it (locked: access_to hidden):")
    show(cli, "share", "access", "list", SHARE, "-c", "Access Type", "-c", "Access To",
         "-c", "Access Level", "-c", "State")
    clock.lap("attach")

    step("The guest reads and writes the share: its console")
    wait_console(cli, "guest wrote:", 120)
    say(f"$ openstack console log show {SERVER}   # the guest agent's and user_data's lines")
    for line in console_lines(cli, ("attachfs-guest:", "guest read:", "guest wrote:", "guest df:")):
        say(f"    {line}")
    with ceph.fuse_mount(path, work / "admin-mount", "admin", ceph.admin_key) as admin:
        written = admin.mountpoint / "from-guest.txt"
        wait_for("the guest's file in Ceph", written.exists, 30)
        say(f"In Ceph (an admin mount again): {written}: {written.read_text().strip()}")
    clock.lap("guest read/write")

    step("Detach: the guest lets go, the host unmounts, Manila's rule and the cephx ID go")
    show(cli, "server", "remove", "share", SERVER, SHARE)
    wait_for("the attachment gone", lambda: attachment_status(cli) == [], 120, 1.0)
    show(cli, "server", "share", "list", SERVER)
    wait_for("no access rule left", lambda: cli.json("share", "access", "list", SHARE) == [],
             60, 1.0)
    show(cli, "share", "access", "list", SHARE)
    auth_id = f"attachfs-{HOST}"
    wait_for(f"client.{auth_id} gone from Ceph", lambda: not ceph.auth_exists(auth_id), 60)
    say(f"Ceph: client.{auth_id} no longer exists")
    clock.lap("detach")

    step("Delete the server and the share")
    show(cli, "server", "delete", "--wait", SERVER, timeout=CLI_TIMEOUT)
    show(cli, "share", "delete", "--wait", SHARE, timeout=120)
    show(cli, "share", "list")
    clock.lap("delete")


def leftovers(base: Path, owner: str) -> list[str]:
    """What the run left: guests of its attachfs, mounts and processes under its directory."""
    from attachfs.virt.libvirt import LibvirtDriver

    driver = LibvirtDriver(owner=owner)
    try:
        left = [f"guest {name}" for name in driver.list_guests()]
    finally:
        driver.close()
    left += [f"mount {point}" for point in mountinfo.mount_points(base)]
    left += [f"pid {pid}: {cmd[:100]}" for pid, cmd in processes_mentioning(base)]
    return left


def run(base: Path, clock: Clock) -> None:
    with ExitStack() as stack:
        step("Start Ceph, Keystone and Manila (its CephFS driver, its API in the catalog)")
        ceph, ks, manila = start_services(stack, base)
        keystone_api = hm.start_keystone_api(manila, ks)
        stack.callback(hm.stop_keystone_api, keystone_api)
        hm.add_cephfs_backend(manila, ceph)
        say(f"Manila: {keystone_api.endpoint} in the catalog as sharev2; share type "
            f"{hm.CEPHFS_TYPE} on the CephFS backend")
        clock.lap("Ceph, Keystone, Manila")

        step("Start attachfs (Keystone auth, shares from Manila), in the catalog as compute")
        stack.enter_context(manila_client_user(ks))
        config = serve_config(ks, HOST)
        serve = stack.enter_context(serving(config, base / "state"))
        stack.enter_context(attachfs_in_catalog(ks, serve.url))
        say(f"$ {shlex.join(['attachfs', *serve.argv[1:]])} &")
        say("    " + config.rstrip().replace("\n", "\n    "))
        say(f"compute {serve.url}/v2.1 and image {serve.url}/image in the catalog, {hk.REGION}")
        work = base / "client"
        work.mkdir()
        clouds = password_clouds_yaml(work, ks.v3, USER, hk.PASSWORD, PROJECT, hk.REGION)
        cli = Cli(OPENSTACK, clouds)
        say(f"The member's clouds.yaml ({clouds}):")
        say("    " + clouds.read_text().rstrip().replace("\n", "\n    "))
        say(f"$ {cli.exports()}")
        show(cli, "catalog", "list", "-c", "Name", "-c", "Type")
        clock.lap("attachfs")

        walk_through(cli, ceph, work, clock)
        step("Tear down: attachfs, Manila, Keystone, Ceph")
        INTERRUPTS.stopping = True  # a Ctrl-C now would cut a teardown step short
    clock.lap("teardown")


def main() -> int:
    missing = missing_prerequisites()
    if missing:
        print("demo-ceph: cannot start:\n  " + "\n  ".join(missing), file=sys.stderr)
        return 1
    INTERRUPTS.install()
    STATE_ROOT.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="demo-ceph.", dir=STATE_ROOT))
    owner = f"{HOST}:{(base / 'state').resolve()}"  # what attachfs tags its guests with
    clock = Clock()
    failed: BaseException | None = None
    try:
        run(base, clock)
    except KeyboardInterrupt:
        failed = KeyboardInterrupt()
        print("\ndemo-ceph: interrupted; torn down", file=sys.stderr)
    except Exception as exc:  # noqa: BLE001 - reported, and the teardown has run
        failed = exc
        print(f"\ndemo-ceph: FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
    INTERRUPTS.stopping = True  # from here on a signal does not interrupt the check
    left = leftovers(base, owner)
    say(f"guests left: {sum(x.startswith('guest') for x in left)}, "
        f"mounts left: {sum(x.startswith('mount') for x in left)}, "
        f"processes left: {sum(x.startswith('pid') for x in left)}")
    if left:
        print(f"demo-ceph: left behind (see {base}):\n  " + "\n  ".join(left), file=sys.stderr)
        return 1
    if failed is not None and not isinstance(failed, KeyboardInterrupt):
        print(f"demo-ceph: logs kept in {base}", file=sys.stderr)  # Ceph's, Keystone's, Manila's
        return 1
    shutil.rmtree(base)
    if failed is not None:
        return 130  # as a shell reports a Ctrl-C
    say(f"({clock.summary()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
