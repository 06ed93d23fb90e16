"""Placement (core/scheduler.py): each filter, the weigher, and the refusal's reason."""

from __future__ import annotations

from attachfs.core.scheduler import Candidate, Needs, place


def host(name: str, *, up: bool = True, enabled: bool = True, containers: bool = False,
         transports: tuple[str, ...] = ("virtiofs", "9p"), memory: int = 4096, used: int = 0,
         servers: int = 0) -> Candidate:
    return Candidate(name, up, enabled, containers, frozenset(transports), memory, used, servers)


def test_each_filter_drops_what_cannot_take_the_server() -> None:
    hosts = [host("down", up=False), host("off", enabled=False), host("small", memory=128),
             host("vm-only"), host("boxes", containers=True, transports=("bind",), used=1024)]
    assert place(hosts, Needs(256)) == ("vm-only", "")
    assert place(hosts, Needs(256, container=True)) == ("boxes", "")
    assert place(hosts, Needs(256, transport="9p")) == ("vm-only", "")
    chosen, why = place(hosts, Needs(256, transport="nfs"))
    assert chosen is None
    assert why == ("No valid host was found. Of 5 host(s): 1 down, 1 disabled, "
                   "3 without the flavor's transport.")
    assert place(hosts, Needs(8192))[1].endswith(", 3 without enough free memory.")
    # a server that moves needs every transport its attachments use
    assert place(hosts, Needs(256, shares=frozenset({"virtiofs", "9p"}))) == ("vm-only", "")
    assert place(hosts, Needs(256, shares=frozenset({"nfs"})))[1].endswith(
        "3 without a transport its shares use.")


def test_the_most_free_memory_wins_then_the_fewest_servers_then_the_name() -> None:
    assert place([host("a", used=1024), host("b")], Needs(256))[0] == "b"
    assert place([host("a", servers=3), host("b", servers=1)], Needs(256))[0] == "b"
    assert place([host("b"), host("a")], Needs(256))[0] == "a"
    assert place([], Needs(256)) == (None, "No valid host was found. No host is registered.")
