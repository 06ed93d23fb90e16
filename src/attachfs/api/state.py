"""What every request handler of the app shares: config, database, providers, policy, auth.

Its own module (not app.py) so that request helpers (deps.py) and routers can name it without
importing the app that includes them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from attachfs.api.auth import Authenticator
from attachfs.api.policy import PolicyEnforcer
from attachfs.config import Config
from attachfs.db.engine import Database
from attachfs.storage.base import ShareProvider
from attachfs.storage.local import LocalShareProvider


@dataclass
class ApiState:
    config: Config
    db: Database
    provider: ShareProvider  # where attached shares come from (built-in or Manila)
    builtin: LocalShareProvider  # the built-in shares of /os-filesystem
    policy: PolicyEnforcer
    wake_agent: Callable[[], None]
    authenticator: Authenticator
