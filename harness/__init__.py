"""Driving attachfs from the outside, shared by the vm tests (tests/vm, tests/security, …) and
the benchmark (bench/): servers in their own processes (`process`), a real `attachfs serve`
with API helpers (`serve`), and what it left on the host (`host`). The real services around
it, for the tests' fixtures and the operator's demos alike: Ceph (`ceph`), Keystone
(`keystone`), Manila (`manila`), attachfs in their catalog (`cloud`), the `openstack` CLI
(`openstack_cli`); `demo_ceph` is `make demo-ceph`.

Neither the runtime package nor anything it imports uses this package; it lives at the top of
the repository so that bench/ does not depend on the tests package.
"""
