"""Transport direct (seed 002's direct IP): a built-in share of protocol NFS is served by this
host's NFS server itself; attaching it grants an access rule for that guest's address and the
guest mounts the share's export location itself (the host mounts nothing). Proven from inside
two real guests on one host: without a rule a guest cannot mount it; with one it reads and
writes; detaching one guest revokes its rule while the other keeps working."""

from __future__ import annotations

import time

from attachfs.virt.ganesha import HostNfsServer
from tests.vm.harness import GUEST_TEST, Serve, console_on_failure, serving, wait_for
from tests.vm.test_nfs_transport import boot, nfs_mounts
from tests.vm.test_transports import EXT, Guest, data_both_ways

pytestmark = GUEST_TEST
MANILA = {"X-OpenStack-Manila-API-Version": "2.98"}


def try_mount(guest: Guest, source: str) -> str:
    return guest.run(f"mkdir -p /probe; mount -t nfs4 -o vers=4.1,proto=tcp,port=2049 "
                     f"{source} /probe; echo mounted=$?; umount /probe 2>/dev/null\n",
                     timeout=120)


def test_direct_ip_to_a_builtin_nfs_share() -> None:
    with serving(prefix="direct-") as serve, console_on_failure(serve):
        _body(serve)


def _body(serve: Serve) -> None:
    ctl_a, _ = serve.new_share("ctl-a")
    ctl_b, _ = serve.new_share("ctl-b")
    r = serve.http.post("/share/v2/shares", headers=MANILA, json={"share": {
        "share_proto": "NFS", "size": 1, "name": "direct"}})
    assert r.status_code == 200, r.text
    share = str(r.json()["share"]["id"])
    share_dir = serve.state_dir / "shares" / share
    export = f"169.254.169.254:/share-{share}"
    a, guest_a = boot(serve, "a", ctl_a)
    b, guest_b = boot(serve, "b", ctl_b)

    # no attachment, no rule: the export is not there for this guest
    out = try_mount(guest_a, export)
    assert "mounted=0" not in out, out

    t0 = time.monotonic()
    r = serve.http.post(f"/v2.1/servers/{a}/shares", headers=EXT, json={"share": {
        "share_id": share, "tag": "direct", "transport": "direct"}})
    assert r.status_code == 201 and r.json()["share"]["transport"] == "direct", r.text
    serve.wait_mapping(a, share, "active")
    wait_for("the guest's own NFS mount", lambda: nfs_mounts(guest_a).get("/mnt/direct"), 90)
    print(f"\ndirect attach: POST -> mounted by the guest {time.monotonic() - t0:.1f} s")
    assert nfs_mounts(guest_a)["/mnt/direct"] == export
    assert not [p for p in serve.host_mounts() if p.name.startswith(share)]  # none for it
    data_both_ways(guest_a, "direct", share_dir)
    nfs = HostNfsServer(serve.state_dir / "ganesha")
    (only,) = nfs.exports()
    assert (only.pseudo, only.path, [c.server for c in only.clients]) == (
        f"/share-{share}", str(share_dir), [a])

    r = serve.http.post(f"/v2.1/servers/{b}/shares", headers=EXT, json={"share": {
        "share_id": share, "tag": "direct", "transport": "direct", "read_only": True}})
    assert r.status_code == 201, r.text
    serve.wait_mapping(b, share, "active")
    wait_for("the second guest's mount", lambda: nfs_mounts(guest_b).get("/mnt/direct"), 90)
    out = guest_b.run("ls /mnt/direct; echo x > /mnt/direct/from-b; echo write=$?\n")
    assert "from-guest" in out and "write=0" not in out, out  # its rule is read-only
    assert sorted(c.server for c in nfs.exports()[0].clients) == sorted([a, b])

    # a stop and start of A keeps its address, hence its rule and its client
    before = [c.address for c in nfs.exports()[0].clients if c.server == a]
    assert serve.action(a, {"os-stop": None}).status_code == 202
    serve.wait_status(a, "SHUTOFF")
    assert [c.server for c in nfs.exports()[0].clients] == [b]
    assert serve.action(a, {"os-start": None}).status_code == 202
    serve.wait_status(a, "ACTIVE")
    serve.wait_console(a, "runner started")
    wait_for("A's mount again", lambda: nfs_mounts(guest_a).get("/mnt/direct"), 90)
    assert [c.address for c in nfs.exports()[0].clients if c.server == a] == before

    # detach from A: its rule goes, B keeps the share
    assert serve.http.delete(f"/v2.1/servers/{a}/shares/{share}").status_code == 200
    wait_for("A's attachment gone", lambda: serve.mapping(a, share) is None, 90)
    assert "/mnt/direct" not in nfs_mounts(guest_a)
    out = try_mount(guest_a, export)
    assert "mounted=0" not in out, out
    assert "from-guest" in guest_b.run("ls /mnt/direct\n")
    assert [c.server for c in nfs.exports()[0].clients] == [b]

    assert serve.http.delete(f"/v2.1/servers/{b}/shares/{share}").status_code == 200
    wait_for("B's attachment gone", lambda: serve.mapping(b, share) is None, 90)
    assert nfs.exports() == []
    for sid in (a, b):
        assert serve.http.delete(f"/v2.1/servers/{sid}").status_code == 204
    for sid in (a, b):
        serve.wait_gone(sid)
    assert serve.http.delete(f"/share/v2/shares/{share}", headers=MANILA).status_code == 202
