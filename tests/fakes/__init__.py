"""Test doubles that keep actual state in memory: a virt driver, a host's mounts with a
storage connector, a share provider and metadata sockets. Test-only: never a default, never
imported by the runtime package. `FaultPlan` makes any of their calls fail on demand."""
