"""The vm tests' side of the shared harness (`harness/`, also used by bench/): a fresh
`attachfs serve` per test under /var/lib/attachfs/test-state, removed afterwards."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from harness.process import free_port, wait_for
from harness.serve import IMAGES_DIR, Serve

__all__ = ["IMAGES_DIR", "TEST_STATE", "Serve", "free_port", "serving", "wait_for"]

TEST_STATE = Path("/var/lib/attachfs/test-state")


@contextmanager
def serving(config: str = "", prefix: str = "") -> Iterator[Serve]:
    """A fresh `attachfs serve` with its own state directory, cleaned up afterwards."""
    s = Serve(TEST_STATE / f"{prefix}{uuid.uuid4().hex[:8]}", config)
    s.start()
    try:
        yield s
    finally:
        s.cleanup()
