"""An operator's policy file: its rules decide, and a change to it applies once the reused
decisions expire (api/policy.py, DECISIONS_KEPT_S)."""

from __future__ import annotations

from pathlib import Path

import pytest

from attachfs.api.policy import DECISIONS_KEPT_S, PolicyEnforcer
from attachfs.core.context import RequestContext
from attachfs.errors import Forbidden

ATTACH = "os_compute_api:os-server-shares:create"
MEMBER = RequestContext(user_id="alice", project_id="p1", roles=("member", "reader"))
READER = RequestContext(user_id="rita", project_id="p1", roles=("reader",))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_defaults_decide_by_role_and_project() -> None:
    policy = PolicyEnforcer()
    assert policy.allowed(ATTACH, MEMBER, "p1")
    assert not policy.allowed(ATTACH, MEMBER, "p2")  # another project's server
    assert not policy.allowed(ATTACH, READER, "p1")
    with pytest.raises(Forbidden, match=ATTACH):
        policy.authorize(ATTACH, READER, "p1")


def test_a_changed_policy_file_applies_after_the_decisions_expire(tmp_path: Path) -> None:
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(f'"{ATTACH}": "role:admin"\n')
    clock = Clock()
    policy = PolicyEnforcer(str(policy_file), clock=clock)
    assert not policy.allowed(ATTACH, MEMBER, "p1")  # the file overrides the default

    policy_file.write_text(f'"{ATTACH}": "role:reader"\n')
    clock.now += DECISIONS_KEPT_S / 2
    assert not policy.allowed(ATTACH, MEMBER, "p1")  # still the reused decision
    clock.now += DECISIONS_KEPT_S
    assert policy.allowed(ATTACH, MEMBER, "p1")
    assert policy.allowed(ATTACH, READER, "p1")
