import pytest

from attachfs.core import model
from attachfs.core.model import AttachmentStatus as S
from attachfs.errors import BadRequest, Conflict


def test_tag_rules() -> None:
    assert model.validate_tag("data-1") == "data-1"
    assert model.validate_tag("x" * 36) == "x" * 36
    for bad in ("", "with space", "ünï", "x" * 37, "a/b", "a_b"):
        with pytest.raises(BadRequest):
            model.validate_tag(bad)


def test_uuid_rule() -> None:
    u = "3d3aafde-b4cb-45ab-8ac6-31ff93f69536"
    assert model.validate_uuid(u.upper(), "share_id") == u
    with pytest.raises(BadRequest, match="share_id"):
        model.validate_uuid("nope", "share_id")


def test_share_changes_follow_the_compute_service() -> None:
    u = "3d3aafde-b4cb-45ab-8ac6-31ff93f69536"
    attach, detach = model.ATTACH_ACTION, model.DETACH_ACTION
    model.require_share_change_allowed(u, "stopped", None, attach, hot_plug=False)
    model.require_share_change_allowed(u, "active", None, attach, hot_plug=True)
    # 2.97: detach is allowed from a server in error, attach is not
    model.require_share_change_allowed(u, "error", None, detach, hot_plug=False)
    with pytest.raises(Conflict) as refused:
        model.require_share_change_allowed(u, "error", None, attach, hot_plug=True)
    assert refused.value.message == (f"Cannot 'create share' instance {u} while it is in "
                                     "vm_state error")
    with pytest.raises(Conflict) as refused:
        model.require_share_change_allowed(u, "active", None, detach, hot_plug=False)
    assert refused.value.message == (f"Cannot 'delete share' instance {u} while it is in "
                                     "vm_state active")
    # a task in flight is named by its task_state, as the compute service words it
    with pytest.raises(Conflict) as refused:
        model.require_share_change_allowed(u, "stopped", "powering-on", attach, hot_plug=True)
    assert refused.value.message.endswith("while it is in task_state powering-on")
    for vm, task in (("building", "spawning"), ("active", "rebooting")):
        with pytest.raises(Conflict):
            model.require_share_change_allowed(u, vm, task, attach, hot_plug=True)


def test_slots() -> None:
    model.require_free_slot("active", 2, 1)
    model.require_free_slot("stopped", 2, 5)  # slots only bind a running guest
    model.require_free_slot("active", None, 5)
    with pytest.raises(Conflict, match="hot-plug slot"):
        model.require_free_slot("active", 2, 2)


def test_detach_is_honoured_from_any_status() -> None:
    for start in S:
        assert model.status_after_detach_request(start) == S.DETACHING


def test_power_transitions() -> None:
    assert model.status_after_power(S.INACTIVE, power_on=True) == S.ACTIVE
    assert model.status_after_power(S.ACTIVE, power_on=False) == S.INACTIVE
    assert model.status_after_power(S.ERROR, power_on=True) == S.ERROR
    assert model.status_after_power(S.DETACHING, power_on=False) == S.DETACHING


def test_retry_only_from_error_and_only_when_asked() -> None:
    assert model.status_after_retry(S.ERROR, "s", "t", retry=True) == S.ATTACHING
    for status in (S.ERROR, S.ACTIVE):
        with pytest.raises(Conflict) as refused:
            model.status_after_retry(status, "s", "t", retry=False)
        assert refused.value.message == "Share 's' or tag 't' already associated to this server."
    with pytest.raises(Conflict):
        model.status_after_retry(S.ACTIVE, "s", "t", retry=True)


def test_server_status_mapping() -> None:
    assert model.server_status("active", None) == "ACTIVE"
    assert model.server_status("stopped", None) == "SHUTOFF"
    assert model.server_status("building", "spawning") == "BUILD"
    assert model.server_status("active", "rebooting") == "REBOOT"
    assert model.server_status("error", None) == "ERROR"


def test_one_tag_rule() -> None:
    from attachfs.core import rules

    assert rules.is_valid_tag("x" * 36) and not rules.is_valid_tag("x" * 37)
    assert model.validate_tag is rules.validate_tag
    assert rules.tag_problem("a_b") is not None and rules.tag_problem("data-1") is None


def test_protocols_match_the_docs() -> None:
    """CEPHFS and NFS (Manila) and LOCAL (built-in) pass the API; anything else is a 409."""
    from attachfs.core import rules

    for proto in ("LOCAL", "nfs", "CEPHFS"):
        assert rules.require_attachable(proto) == proto.upper()
    with pytest.raises(Conflict) as refused:
        rules.require_attachable("CIFS")
    assert refused.value.message == "Share protocol CIFS is not supported."


def test_mount_paths() -> None:
    from attachfs.core import rules

    assert rules.guest_mount_point(None, "data") == "/mnt/data"
    assert rules.guest_mount_point("/srv/x", "data") == "/srv/x"
    assert rules.host_mount_name("abc", read_only=True) == "abc-ro"
    assert rules.host_mount_name("abc", read_only=False) == "abc"


def test_guest_agent_applies_the_same_tag_rule() -> None:
    """The guest agent is a shell script and cannot import core/rules.py: its copy of the tag
    rule is checked against the one rule instead."""
    from pathlib import Path

    from attachfs.core import rules

    agent = (Path(rules.__file__).parents[1] / "virt" / "guest" / "attachfs-guest-agent")
    text = agent.read_text()
    assert f"length(t) <= {rules.TAG_MAX_BYTES}" in text
    assert f"/^[{rules.TAG_CHARS.replace('a-zA-Z', 'A-Za-z')}]+$/" in text
