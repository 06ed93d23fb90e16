"""attachfs's credentials for the share service (Manila): its own, from [manila], and a
requester's token carried as it came in (storage/manila.py sends both)."""

from __future__ import annotations

from typing import Any

from keystoneauth1 import exceptions as ks_exc
from keystoneauth1 import loading, noauth, plugin
from keystoneauth1 import session as ks_session

from attachfs.config import ManilaConfig
from attachfs.errors import BadRequest


class UserToken(plugin.BaseAuthPlugin):
    """The requester's token as it came in; endpoints are found with the service's auth (its
    catalog, or the configured endpoint override)."""

    def __init__(self, token: str, project_id: str, service_auth: plugin.BaseAuthPlugin) -> None:
        super().__init__()
        self.token, self.project_id, self.service_auth = token, project_id, service_auth

    def get_token(self, session: ks_session.Session) -> str | None:
        return self.token

    def get_endpoint(self, session: ks_session.Session, **kwargs: Any) -> str | None:
        return self.service_auth.get_endpoint(session, **kwargs)

    def get_endpoint_data(self, session: ks_session.Session, **kwargs: Any) -> Any:
        return self.service_auth.get_endpoint_data(session, **kwargs)

    def get_project_id(self, session: ks_session.Session) -> str | None:
        return self.project_id

    def invalidate(self) -> bool:
        return False  # a user's token cannot be renewed here


def service_auth(cfg: ManilaConfig) -> plugin.BaseAuthPlugin:
    """attachfs's own credentials for the share service, from [manila]."""
    if cfg.auth_type in ("none", "noauth"):
        return noauth.NoAuth(endpoint=cfg.endpoint_override or None)
    try:
        loader: Any = loading.get_plugin_loader(cfg.auth_type)
        known = {opt.dest for opt in loader.get_options()}
        values = {"auth_url": cfg.auth_url, "username": cfg.username, "password": cfg.password,
                  "project_name": cfg.project_name, "user_domain_name": cfg.user_domain_name,
                  "project_domain_name": cfg.project_domain_name}
        return loader.load_from_options(**{k: v for k, v in values.items() if k in known and v})
    except (ks_exc.ClientException, ValueError) as exc:
        raise BadRequest(f"invalid [manila] auth settings (auth_type {cfg.auth_type}): {exc}") \
            from exc
