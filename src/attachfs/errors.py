"""Every error attachfs raises on purpose, in one tree.

    AttachfsError
     ├── ClientError              a request that cannot be honoured as asked
     │    ├── BadRequest          the input is wrong (a field, a body, a header)
     │    ├── Unauthorized        who is calling cannot be established
     │    ├── Forbidden           the caller may not do this
     │    ├── NotFound            no such thing (or not visible to the caller)
     │    ├── NotAcceptable       an unsupported API version
     │    ├── Conflict            the current state does not allow it
     │    │    └── Duplicate      a concurrent change won a uniqueness race (db/uow.py)
     │    └── ServiceUnavailable  a service we must ask (identity, share service) is down
     └── BackendError             a host-side step failed (agent only; never reaches HTTP as 500)
          ├── TemporaryError      worth retrying later (a daemon restarting, a lock held)
          └── PermanentError      retrying will not help: the attachment goes to `error`

Lower-layer errors (libvirt, subprocess, database) are converted at the adapter that calls them.
These classes carry no HTTP: the API edge (api/faults.py) maps each to a status and a compute
API fault name, as httpx maps its transport errors at the boundary.
"""

from __future__ import annotations


class AttachfsError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ClientError(AttachfsError):
    pass


class BadRequest(ClientError):
    pass


class Unauthorized(ClientError):
    pass


class Forbidden(ClientError):
    pass


class NotFound(ClientError):
    pass


class NotAcceptable(ClientError):
    def __init__(self, message: str, asked: str = "") -> None:
        super().__init__(message)
        self.asked = asked  # the version the client asked for


class Conflict(ClientError):
    pass


class Duplicate(Conflict):
    """A unique constraint refused the write: another request got there first."""


class ServiceUnavailable(ClientError):
    """A service the API must ask (Keystone, the share service) did not answer: retry later."""


class BackendError(AttachfsError):
    """A step on the host or in a storage backend failed."""


class TemporaryError(BackendError):
    pass


class PermanentError(BackendError):
    pass


class NoFreeSlot(PermanentError):
    """The running guest has no free hot-plug slot left for another device."""
