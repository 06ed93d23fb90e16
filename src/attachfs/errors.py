"""Every error attachfs raises on purpose, in one tree.

    AttachfsError
     ├── ClientError              a request that cannot be honoured; the API answers its `code`
     │    ├── BadRequest          400 badRequest
     │    ├── Unauthorized        401 unauthorized
     │    ├── Forbidden           403 forbidden
     │    ├── NotFound            404 itemNotFound
     │    ├── NotAcceptable       406 notAcceptable (unsupported microversion)
     │    ├── Conflict            409 conflictingRequest
     │    └── ServiceUnavailable  503 serviceUnavailable (identity or share service down)
     └── BackendError             a host-side step failed (agent only; never reaches HTTP as 500)
          ├── TemporaryError      worth retrying later (a daemon restarting, a lock held)
          └── PermanentError      retrying will not help: the attachment goes to `error`

Lower-layer errors (libvirt, subprocess, database) are converted at the adapter that calls them.
"""

from __future__ import annotations


class AttachfsError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ClientError(AttachfsError):
    code = 400
    fault = "badRequest"


class BadRequest(ClientError):
    code = 400
    fault = "badRequest"


class Unauthorized(ClientError):
    code = 401
    fault = "unauthorized"


class Forbidden(ClientError):
    code = 403
    fault = "forbidden"


class NotFound(ClientError):
    code = 404
    fault = "itemNotFound"


class NotAcceptable(ClientError):
    code = 406
    fault = "notAcceptable"


class Conflict(ClientError):
    code = 409
    fault = "conflictingRequest"


class ServiceUnavailable(ClientError):
    """A service the API must ask (Keystone, the share service) did not answer: retry later."""

    code = 503
    fault = "serviceUnavailable"


class BackendError(AttachfsError):
    """A step on the host or in a storage backend failed."""


class TemporaryError(BackendError):
    pass


class PermanentError(BackendError):
    pass


class NoFreeSlot(PermanentError):
    """The running guest has no free hot-plug slot left for another device."""
