"""attachfs: attach shared filesystems to VMs and containers through the host."""

__version__ = "0.1.0"
