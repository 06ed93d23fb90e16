"""Transport nfs: shares exported by this host's NFS-Ganesha to one guest each, over that
guest's private link (169.254.169.254:2049 inside the guest, a unix socket and an address of
its own on the host), proven from inside two real guests on the same host:
- hot attach exports and the guest agent mounts NFSv4.1; data both ways;
- read-only: root in the guest remounts read-write and writes, nothing lands;
- the second guest cannot mount the first guest's export, nor see it in the pseudo root;
- exports come and go without restarting the server or disturbing the other export.
"""

from __future__ import annotations

import time

from attachfs.virt.ganesha import HostNfsServer
from tests.vm.harness import GUEST_TEST, Serve, console_on_failure, serving, wait_for
from tests.vm.test_transports import EXT, GUEST_RUNNER, Guest, data_both_ways, read_only_holds

pytestmark = GUEST_TEST


def boot(serve: Serve, name: str, ctl: str) -> tuple[str, Guest]:
    r = serve.http.post("/v2.1/servers", json={"server": {
        "name": name, "flavorRef": "2", "imageRef": "debian-busybox",
        "user_data": GUEST_RUNNER}})
    assert r.status_code == 202, r.text
    sid = str(r.json()["server"]["id"])
    serve.wait_status(sid, "ACTIVE")
    r = serve.http.post(f"/v2.1/servers/{sid}/shares", headers=EXT,
                        json={"share": {"share_id": ctl, "tag": "ctl"}})
    assert r.status_code == 201, r.text
    serve.wait_mapping(sid, ctl, "active")
    serve.wait_console(sid, "runner started")
    return sid, Guest(serve.state_dir / "shares" / ctl)


def nfs_mounts(guest: Guest) -> dict[str, str]:
    out = guest.run("cat /proc/mounts\n")
    return {f[1]: f[0] for f in (line.split() for line in out.splitlines())
            if len(f) > 2 and f[2] == "nfs4"}


def test_nfs_from_the_host_to_one_guest_only() -> None:
    with serving(prefix="nfsx-") as serve, console_on_failure(serve):
        _body(serve)


def _body(serve: Serve) -> None:
    ctl_a, _ = serve.new_share("ctl-a")
    ctl_b, _ = serve.new_share("ctl-b")
    rw, rw_dir = serve.new_share("nfs-rw")
    ro, ro_dir = serve.new_share("nfs-ro")
    a, guest_a = boot(serve, "a", ctl_a)
    b, guest_b = boot(serve, "b", ctl_b)

    t0 = time.monotonic()
    r = serve.http.post(f"/v2.1/servers/{a}/shares", headers=EXT,
                        json={"share": {"share_id": rw, "tag": "nfsrw", "transport": "nfs"}})
    assert r.status_code == 201 and r.json()["share"]["transport"] == "nfs", r.text
    serve.wait_mapping(a, rw, "active")
    wait_for("the guest's NFS mount", lambda: "/mnt/nfsrw" in nfs_mounts(guest_a) or None, 90)
    print(f"\nhot attach over nfs: POST -> mounted in the guest {time.monotonic() - t0:.1f} s")
    info = serve.http.get(f"/v2.1/servers/{a}/shares/{rw}/mount_info").json()["mount_info"]
    assert nfs_mounts(guest_a)["/mnt/nfsrw"] == info["source"] == \
        f"169.254.169.254:/attachfs-{a}-nfsrw"
    data_both_ways(guest_a, "nfsrw", rw_dir)

    server = HostNfsServer(serve.state_dir / "ganesha")
    pid = server.pid()
    assert pid is not None

    r = serve.http.post(f"/v2.1/servers/{a}/shares", headers=EXT, json={"share": {
        "share_id": ro, "tag": "nfsro", "transport": "nfs", "read_only": True}})
    assert r.status_code == 201, r.text
    serve.wait_mapping(a, ro, "active")
    wait_for("the read-only NFS mount", lambda: "/mnt/nfsro" in nfs_mounts(guest_a) or None, 90)
    print(f"read-only over nfs: {read_only_holds(guest_a, 'nfsro', ro_dir)!r}")

    # the other guest on this host: neither the export nor its name
    out = guest_b.run(f"mkdir -p /x /y\n"
                      f"mount -t nfs4 -o vers=4.1,proto=tcp,port=2049 "
                      f"169.254.169.254:/attachfs-{a}-nfsrw /x; echo steal=$?\n"
                      f"mount -t nfs4 -o vers=4.1,proto=tcp,port=2049 169.254.169.254:/ /y; "
                      f"echo root=$?; ls -R /y 2>&1 | head -20; umount /y 2>/dev/null\n",
                      timeout=120)
    print(f"the other guest: {out!r}")
    assert "steal=0" not in out, out
    listing = out.split("root=", 1)[1]
    assert a not in listing and "nfsrw" not in listing, out

    # an export goes; the other stays in use, the server is the same process
    assert serve.http.delete(f"/v2.1/servers/{a}/shares/{ro}").status_code == 200
    wait_for("the read-only attachment gone", lambda: serve.mapping(a, ro) is None, 90)
    assert "/mnt/nfsro" not in nfs_mounts(guest_a)
    data_both_ways(guest_a, "nfsrw", rw_dir)
    assert server.pid() == pid
    assert [c.tag for e in server.exports() for c in e.clients] == ["nfsrw"]

    # power off (the guest stops by itself): its exports go, its host mount can go; on again
    assert serve.action(a, {"os-stop": None}).status_code == 202
    serve.wait_status(a, "SHUTOFF")
    assert server.exports() == []
    wait_for("the host mount released", lambda: not any(
        p.name.startswith(rw) for p in serve.host_mounts()), 30)
    assert serve.action(a, {"os-start": None}).status_code == 202
    serve.wait_status(a, "ACTIVE")
    serve.wait_console(a, "runner started")
    wait_for("the NFS mount again", lambda: "/mnt/nfsrw" in nfs_mounts(guest_a) or None, 90)
    data_both_ways(guest_a, "nfsrw", rw_dir)

    t1 = time.monotonic()
    assert serve.http.delete(f"/v2.1/servers/{a}/shares/{rw}").status_code == 200
    wait_for("the attachment gone", lambda: serve.mapping(a, rw) is None, 90)
    print(f"hot detach over nfs: DELETE -> gone {time.monotonic() - t1:.1f} s")
    assert nfs_mounts(guest_a) == {} and server.exports() == [] and server.pid() == pid

    # deleted while running with an export: nothing left (exports, links, mounts)
    r = serve.http.post(f"/v2.1/servers/{a}/shares", headers=EXT,
                        json={"share": {"share_id": rw, "tag": "again", "transport": "nfs"}})
    assert r.status_code == 201, r.text
    serve.wait_mapping(a, rw, "active")
    for sid in (a, b):
        assert serve.http.delete(f"/v2.1/servers/{sid}").status_code == 204
    for sid in (a, b):
        serve.wait_gone(sid)
    assert serve.host_mounts() == [] and server.exports() == []
    assert not list((serve.state_dir / "nfs-link").glob("*.addr"))
