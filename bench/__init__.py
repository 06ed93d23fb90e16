"""Benchmark of share attachments (compute API 2.97) against the floor of this machine.

    .venv/bin/python -m bench [--quick] [--json FILE] [--no-postgres] [--no-vm]
                              [--no-datapath] [--no-transports] [--scale]       (make bench)
    .venv/bin/python -m bench --scale-only [--scale-hosts N] ...            (make bench-scale)

1. attach/detach cycles through a real `attachfs serve` (embedded SQLite, in-process agent,
   libvirt) on a stopped server that booted a real guest (`attach.py`);
2. the floor, measured in the same run: HTTP round trip + one committed INSERT (`floor.py`,
   the servers in `servers.py`);
3. list/show latency with 10,000 attachments, compute API only, on SQLite and PostgreSQL
   (`listing.py`);
4. hot attach/detach on the running server (POST -> the guest mounted it) against a guest of
   our own that mounts by itself every 50 ms (`hotplug.py`);
5. power on with 0, 1, 4 and 8 shares: os-start -> ACTIVE and -> the guest is ready
   (`power.py`);
6. guest write/read throughput through a built-in, a CephFS (throw-away Ceph) and an NFS
   (throw-away NFS-Ganesha) share, beside the host's own through the same clients
   (`datapath.py`);
7. the same sequential and random I/O through virtio-fs, 9p and NFS from the host's Ganesha in
   one guest, against the host on the same shares and the guest's own tmpfs, and the guest's
   tmpfs against the host's (what TCG costs) (`transports.py`);
8. only with --scale (or --scale-only): a scale simulation, 1,000 hosts by default, each a real
   agent on the test-only fake virt and storage drivers (`scale_hosts.py`, a few processes
   sharing one engine each), 10 servers per host, 2 shares per server, on one throw-away
   PostgreSQL database, with the real `attachfs api --workers 4`: attach throughput and POST
   -> inactive / active, all agents restarted at once, connections and cores used
   (`scale.py`).

Figures are printed (and written with --json), never asserted (`report.py`). The serve is
driven through the harness the vm tests use (`harness/`). Not part of the runtime package:
attachfs never imports it. See docs/bench.md.
"""
