"""The vm tests' side of the shared harness (`harness/`, also used by bench/): a fresh
`attachfs serve` per test under /var/lib/attachfs/test-state, removed afterwards."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from harness.process import free_port, wait_for
from harness.serve import IMAGES_DIR, Serve

__all__ = ["GUEST_TEST", "IMAGES_DIR", "TEST_STATE", "Serve", "console_on_failure",
           "crash_after", "free_port", "serving", "wait_for"]

TEST_STATE = Path("/var/lib/attachfs/test-state")
# The marks of a test that boots a real guest (a module's `pytestmark`): under CI=true a
# missing capability fails instead of skipping (tests/conftest.py).
GUEST_TEST = [
    pytest.mark.vm,
    pytest.mark.skipif(os.geteuid() != 0, reason="libvirt guests and host mounts need root"),
    pytest.mark.skipif(not (IMAGES_DIR / "debian-busybox" / "image.json").exists(),
                       reason="guest image missing: run `make setup`"),
]


@contextmanager
def serving(config: str = "", prefix: str = "") -> Iterator[Serve]:
    """A fresh `attachfs serve` with its own state directory, cleaned up afterwards."""
    s = Serve(TEST_STATE / f"{prefix}{uuid.uuid4().hex[:8]}", config)
    s.start()
    try:
        yield s
    finally:
        s.cleanup()


@contextmanager
def console_on_failure(serve: Serve) -> Iterator[None]:
    """On a failure, the ends of the guests' consoles and serve's log go to the test output."""
    try:
        yield
    except BaseException:
        for log in sorted(serve.state_dir.rglob("*.log")):
            with contextlib.suppress(OSError):
                print(f"---- {log}\n{log.read_text(errors='replace')[-3000:]}")
        raise


def crash_after(serve: Serve, point: str, request: Callable[[], object]) -> None:
    """`serve` started again with ATTACHFS_CRASH_AFTER=<point> (operation:step), `request`
    made, and the process gone right after that step (SIGKILL's exit code). Left stopped: the
    caller starts it again when it wants."""
    serve.stop()
    os.environ["ATTACHFS_CRASH_AFTER"] = point
    try:
        serve.start()
    finally:
        del os.environ["ATTACHFS_CRASH_AFTER"]
    request()
    wait_for(f"the crash after {point}",
             lambda: serve.proc is not None and serve.proc.poll() is not None, 120, interval=0.1)
    assert serve.proc is not None and serve.proc.returncode == 137, (point, serve.proc.returncode)
