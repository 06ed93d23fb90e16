"""Configuration: one TOML file (see etc/attachfs.toml.sample), every key optional.

Precedence: built-in defaults < config file < command-line flags. Paths left empty are derived
from `state_dir`, so `attachfs serve --state-dir DIR` works with no file at all.
"""

from __future__ import annotations

import functools
import socket
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from attachfs.core.rules import SHARE_SERVICE_PROTOCOLS, ShareProtocol
from attachfs.errors import BadRequest

# the VM transports of core.rules.Transport
TransportName = Literal["virtiofs", "9p", "nfs", "direct"]
OFFERED_TRANSPORTS: tuple[TransportName, ...] = ("virtiofs", "9p", "nfs", "direct")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ApiConfig(_Section):
    listen: str = "127.0.0.1:8774"
    # noauth: token "user:project[:role,role]"; any other token is default_user/default_project.
    # keystone: tokens validated by keystonemiddleware (section [keystone_authtoken]).
    auth_strategy: Literal["noauth", "keystone"] = "noauth"
    default_user: str = "demo"
    default_project: str = "demo"
    policy_file: str = ""
    # true: attach/detach also on running servers (hot plug). false: the strict 2.97 rule,
    # 409 unless the server is stopped.
    hot_plug: bool = True
    max_attachments_per_server: int = Field(default=32, ge=1, le=256)
    # `attachfs api` only: processes sharing the port (uvicorn workers), nothing but the
    # database between them; more than 1 wants PostgreSQL (docs/hosts.md).
    workers: int = Field(default=1, ge=1, le=64)


class ServiceCredentials(_Section):
    """How attachfs logs in to Keystone as its service user (keystoneauth option names)."""

    auth_url: str = ""
    auth_type: str = "password"
    username: str = ""
    password: str = ""
    project_name: str = "service"
    user_domain_name: str = "Default"
    project_domain_name: str = "Default"


class KeystoneAuthtokenConfig(ServiceCredentials):
    """Passed to keystonemiddleware's auth_token as its options (same names as its docs)."""

    model_config = ConfigDict(extra="allow")
    www_authenticate_uri: str = ""
    # A service token (X-Service-Token) counts only when it holds one of these roles.
    service_token_roles_required: bool = True
    service_token_roles: list[str] = Field(default_factory=lambda: ["service"])


class ManilaConfig(ServiceCredentials):
    """The shared-file-system service (storage.provider = "manila"), via openstacksdk.
    auth_type "none" with endpoint_override talks to a noauth Manila."""

    region_name: str = ""
    endpoint_override: str = ""  # e.g. http://127.0.0.1:8786/v2 (noauth Manila)
    api_version: str = "2.82"  # access rule locks need >= 2.82
    access_timeout: float = Field(default=60.0, gt=0)  # rule must be active within this
    host_address: str = "127.0.0.1"  # this host's storage-network address (NFS ip rules)
    cephx_access_to: str = ""  # cephx user for CEPHFS rules; default attachfs-<host>


class AgentConfig(_Section):
    host: str = Field(default_factory=socket.gethostname)
    poll_interval: float = Field(default=1.0, gt=0)
    resync_interval: float = Field(default=30.0, gt=0)
    stop_timeout: float = Field(default=10.0, ge=0)
    workers: int = Field(default=4, ge=1, le=64)
    # Hot detach: how long the guest gets to unmount a share (it learns of the detach from the
    # metadata service or config drive) before the device is removed anyway.
    detach_timeout: float = Field(default=10.0, ge=0)
    # How often a server's access rules are looked up in the share provider (a rule removed
    # behind attachfs's back is granted again); each look is one call per share.
    access_check_interval: float = Field(default=60.0, gt=0)
    # A step that fails temporarily is retried after retry_base * 2^(n-1) s, at most
    # retry_cap s, and after retry_attempts failures the attachment (or server) is `error`.
    retry_base: float = Field(default=1.0, gt=0)
    retry_cap: float = Field(default=60.0, gt=0)
    retry_attempts: int = Field(default=8, ge=1, le=100)
    # A whole pass that fails (the database or the hypervisor is away) is tried again after
    # outage_retry_base * 2^(n-1) s, at most outage_retry_cap s, for as long as it takes:
    # an outage never ends the agent or marks anything `error`.
    outage_retry_base: float = Field(default=0.5, gt=0)
    outage_retry_cap: float = Field(default=15.0, gt=0)
    # The host's heartbeat: written every heartbeat_interval s; the API shows the host down
    # once its last one is older than down_after s (the compute service's service_down_time).
    heartbeat_interval: float = Field(default=10.0, gt=0)
    # On PostgreSQL the API rings the agents after each change (LISTEN/NOTIFY): while the
    # agent listens, its own look for work runs only every listen_poll_interval s.
    listen_poll_interval: float = Field(default=30.0, gt=0)
    down_after: float = Field(default=60.0, gt=0)
    # An attachment `attaching` or `detaching` for stall_after s does not stay silent: the agent
    # says what it is still waiting for, and the API says when its host's agent is not running.
    stall_after: float = Field(default=120.0, gt=0)
    # How this host hands shares to guests (docs/transports.md): the transports it offers,
    # and the one an attachment gets when neither the attach body nor the server's flavor
    # names one. virtiofs: hot-pluggable; 9p: at boot only (no hot plug with QEMU 7.2); nfs:
    # exported by this host's NFS-Ganesha to the guest alone ([nfs_server]); direct: a
    # built-in NFS share's own export, mounted by the guest with a rule for its address.
    share_transports: list[TransportName] = Field(
        default_factory=lambda: list(OFFERED_TRANSPORTS), min_length=1)
    share_transport: TransportName = "virtiofs"

    @model_validator(mode="after")
    def _default_offered(self) -> AgentConfig:
        if self.share_transport not in self.share_transports:
            raise ValueError(f"share_transport {self.share_transport!r} is not among "
                             f"share_transports {self.share_transports}")
        return self


class LibvirtConfig(_Section):
    uri: str = "qemu:///system"
    spare_root_ports: int = Field(default=8, ge=0, le=30)
    # Several agents on one libvirtd (hosts simulated on one machine, docs/hosts.md): each
    # names its guests' domains after its host, so a server moved between two of them may
    # have a domain on both while the first host is failed.
    domains_per_host: bool = False


class StorageConfig(_Section):
    # Where shares other than the built-in ones come from: "manila", or none ("local"). The
    # built-in shares and the [[static_shares]] below are always there besides.
    provider: Literal["local", "manila"] = "local"
    root: str = ""  # built-in shares live here; default STATE/shares
    mount_root: str = ""  # host mounts handed to guests; default STATE/mounts
    # Built-in shares are sparse ext4 images of their size: the largest one a tenant may ask
    # for (a larger request, or one above the storage filesystem's free space, is a 400).
    max_share_gib: int = Field(default=1024, ge=1, le=16384)
    # How this host mounts NFS exports: "kernel" (its NFSv4.1 client), "fuse" (attachfs's own
    # FUSE client, for kernels with none), "auto" (the kernel's when it has one).
    nfs_client: Literal["auto", "kernel", "fuse"] = "auto"
    # Seconds a host mount (ceph-fuse, NFS) may take to reach its servers; then `error`.
    mount_timeout: float = Field(default=30.0, gt=0, le=600)


class StaticShare(_Section):
    """An export the operator declares (no share service behind it): attachable like a Manila
    share. Who may mount it is the operator's to keep (an NFS export's client list, a cephx
    user's caps); attachfs does not change it."""

    id: str = Field(pattern=r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
    name: str = Field(min_length=1, max_length=255)
    protocol: str = ShareProtocol.NFS  # one of core.rules.SHARE_SERVICE_PROTOCOLS
    # NFS: host:/path or nfs://host[:port]/path. CEPHFS: mon[,mon…]:/path, as Manila gives it.
    export: str = Field(min_length=1)
    # CEPHFS: the cephx user hosts mount as, and a keyring file holding its key.
    cephx_id: str = ""
    cephx_keyring: str = ""
    size_gib: int = Field(default=1, ge=0)  # what the share API shows; the server enforces it
    project_id: str = ""  # visible to this project only; empty: to every project
    access_level: Literal["rw", "ro"] = "rw"  # "ro": the export is read-only, so are its attachments
    mount_point: str = ""  # where guests should mount it, when the operator says

    @field_validator("protocol")
    @classmethod
    def _attachable_export(cls, value: str) -> str:
        if value not in SHARE_SERVICE_PROTOCOLS:
            raise ValueError(f"must be one of {', '.join(SHARE_SERVICE_PROTOCOLS)}")
        return value


class NfsServerConfig(_Section):
    """The host's NFS-Ganesha for transport nfs (virt/ganesha.py), on 127.0.0.1 only: guests
    reach it over their own link as 169.254.169.254:2049, whatever the port here."""

    port: int = Field(default=0, ge=0, le=65535)  # 0: one chosen once and kept


class ContainersConfig(_Section):
    """Servers of a container flavor (extra spec attachfs:virt=container) run as LXC
    containers on this host (docs/transports.md)."""

    enabled: bool = True
    # Where shares without a mount point appear: /mnt/<tag> ("mnt"), or seed 000's
    # /dev/manila/<share id> ("dev-manila").
    mount_layout: Literal["mnt", "dev-manila"] = "mnt"


class MetadataConfig(_Section):
    socket_dir: str = ""  # one unix socket per server; default STATE/metadata
    # false: no metadata service at all; guests learn their shares from the config drive only
    # (servers created with config_drive true).
    enabled: bool = True
    # What one guest can make its metadata listener hold (see metadata/sockets.py): open
    # connections (more are closed unanswered), seconds for a whole request to arrive (a
    # connection that sends nothing is closed then), seconds an idle keep-alive connection
    # stays, bytes of request line + headers (more: 431) and of a body (more: 413).
    max_connections: int = Field(default=16, ge=1, le=1024)
    request_timeout: float = Field(default=5.0, gt=0, le=300)
    keep_alive_timeout: float = Field(default=5.0, ge=1, le=300)
    max_header_bytes: int = Field(default=8192, ge=1024, le=1 << 20)
    max_body_bytes: int = Field(default=65536, ge=1024, le=16 << 20)


class NotificationsConfig(_Section):
    # log: the versioned notification as a JSON log line; file: JSON lines appended to `file`;
    # messaging: oslo.messaging (messagingv2) to transport_url; noop: none.
    driver: Literal["log", "file", "messaging", "noop"] = "log"
    transport_url: str = "rabbit://guest:guest@127.0.0.1:5672/"
    file: str = ""  # default STATE/notifications.jsonl
    topic: str = "versioned_notifications"
    # As the compute service's option: instance.power_on/power_off carry the server's shares.
    include_share_mapping: bool = False


class ImagesConfig(_Section):
    dir: str = "/var/lib/attachfs/images"


@functools.lru_cache(maxsize=64)
def _resolved(path: str) -> Path:
    """A configured directory, absolute and without symlinks: resolved once (the agent asks
    for the mount root once per attachment a pass; 10,000 realpaths were ~14 % of a sweep)."""
    return Path(path).resolve()


class Config(_Section):
    state_dir: str = "/var/lib/attachfs/state"
    database_url: str = ""  # default sqlite under state_dir
    log_level: str = "INFO"
    api: ApiConfig = Field(default_factory=ApiConfig)
    keystone_authtoken: KeystoneAuthtokenConfig = Field(default_factory=KeystoneAuthtokenConfig)
    manila: ManilaConfig = Field(default_factory=ManilaConfig)
    agent: AgentConfig = Field(default_factory=AgentConfig)
    libvirt: LibvirtConfig = Field(default_factory=LibvirtConfig)
    containers: ContainersConfig = Field(default_factory=ContainersConfig)
    nfs_server: NfsServerConfig = Field(default_factory=NfsServerConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    metadata: MetadataConfig = Field(default_factory=MetadataConfig)
    images: ImagesConfig = Field(default_factory=ImagesConfig)
    notifications: NotificationsConfig = Field(default_factory=NotificationsConfig)
    static_shares: list[StaticShare] = Field(default_factory=list)

    # Derived paths -------------------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        return _resolved(self.state_dir)

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.state_path / 'attachfs.db'}"

    @property
    def storage_root(self) -> Path:
        return _resolved(self.storage.root) if self.storage.root else self.state_path / "shares"

    @property
    def mount_root(self) -> Path:
        if self.storage.mount_root:
            return _resolved(self.storage.mount_root)
        return self.state_path / "mounts"

    @property
    def metadata_socket_dir(self) -> Path:
        if self.metadata.socket_dir:
            return _resolved(self.metadata.socket_dir)
        return self.state_path / "metadata"

    @property
    def virtiofs_dir(self) -> Path:
        """The sockets and records of the virtiofsd each virtio-fs device has."""
        return self.state_path / "virtiofs"

    @property
    def cephfs_dir(self) -> Path:
        """CephFS shares' ceph-fuse mounts and their keys, one directory per share."""
        return self.state_path / "cephfs"

    @property
    def nfs_dir(self) -> Path:
        """NFS shares' host mounts (and their FUSE clients' logs), one directory per share."""
        return self.state_path / "nfs"

    @property
    def container_dir(self) -> Path:
        """LXC's path: one directory (config, root filesystem) per running container."""
        return self.state_path / "containers"

    @property
    def container_metadata_dir(self) -> Path:
        """Each container's metadata, as files it sees read-only (its config drive)."""
        return self.state_path / "container-metadata"

    @property
    def console_dir(self) -> Path:
        return self.state_path / "console"

    @property
    def config_drive_dir(self) -> Path:
        return self.state_path / "config-drive"

    @property
    def notifications_file(self) -> Path:
        if self.notifications.file:
            return _resolved(self.notifications.file)
        return self.state_path / "notifications.jsonl"

    @property
    def images_dir(self) -> Path:
        return _resolved(self.images.dir)

    def listen_address(self) -> tuple[str, int]:
        host, _, port = self.api.listen.rpartition(":")
        return host or "127.0.0.1", int(port)


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Read the TOML file (if any) and apply overrides given as dotted keys ("api.listen")."""
    data: dict[str, Any] = {}
    if path:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise BadRequest(f"cannot read config file {path}: {exc}") from exc
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise BadRequest(f"invalid configuration: {exc}") from exc
