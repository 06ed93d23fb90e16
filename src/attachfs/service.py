"""Wiring: build the parts from a Config. `serve` = API + agent + metadata in one process."""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import uvicorn
from fastapi import FastAPI

from attachfs.agent.attachments import Attachments
from attachfs.agent.executor import crash_point
from attachfs.agent.reconciler import Reconciler
from attachfs.agent.runner import Agent
from attachfs.api.app import ApiState, create_app
from attachfs.api.auth import make_authenticator
from attachfs.api.policy import PolicyEnforcer
from attachfs.config import Config
from attachfs.db import doorbell
from attachfs.db.engine import Database, migrate
from attachfs.metadata.sockets import MetadataLimits, MetadataSockets
from attachfs.notify.base import make_notifier
from attachfs.notify.hub import Broadcasting, Change, EventHub
from attachfs.paths import private_dir
from attachfs.storage import mountinfo
from attachfs.storage.bind import BindConnector
from attachfs.storage.cephfs import CephFsConnector
from attachfs.storage.local import LocalShareProvider
from attachfs.storage.nfs import NfsConnector
from attachfs.storage.registry import ProviderChain, make_provider
from attachfs.virt.images import load_images
from attachfs.virt.lxc import LxcDriver
from attachfs.virt.nfs_transport import NfsTransport
from attachfs.virt.router import GuestRouter

log = logging.getLogger("attachfs")


@dataclass
class Parts:
    config: Config
    db: Database
    builtin: LocalShareProvider
    provider: ProviderChain
    # the notifications this process sends, for its API's event stream (notify/hub.py)
    hub: EventHub = field(default_factory=EventHub)


def open_parts(config: Config, prepare: bool = True) -> Parts:
    """`prepare`: migrate the schema and mount the built-in shares (once per host: an API
    worker of `attachfs api --workers N` finds them done by its parent)."""
    for path in (config.state_path, config.storage_root, config.mount_root, config.console_dir):
        private_dir(path)
    if prepare:
        migrate(config.db_url)
    db = Database(config.db_url)
    builtin = LocalShareProvider(db, config.storage_root, config.storage.max_share_gib)
    if prepare:
        builtin.mount_all()
    return Parts(config, db, builtin, make_provider(config, builtin))


def build_api(parts: Parts, wake: Callable[[], None] = lambda: None) -> FastAPI:
    """`wake`: this process's agent, if any; on PostgreSQL the other agents hear the ring
    each change's transaction sends (db/uow.py)."""
    _hear_changes(parts)
    state = ApiState(parts.config, parts.db, parts.provider, parts.builtin,
                     PolicyEnforcer(parts.config.api.policy_file), lambda host: wake(),
                     make_authenticator(parts.config), parts.hub)
    return create_app(state)


def change_delivery(parts: Parts) -> Callable[[Change], None]:
    """Where the agent's changes go for the API's event streams: on PostgreSQL to every API
    process (NOTIFY), else to this process's own API (`attachfs serve`)."""
    if doorbell.listens(parts.db):
        return lambda change: doorbell.announce(parts.db, change.to_json())
    return parts.hub.publish


def _hear_changes(parts: Parts) -> None:
    """On PostgreSQL the API's hub hears the agents' announcements (from its first listener)."""
    if not doorbell.listens(parts.db):
        return

    def start(hub: EventHub) -> doorbell.Listener:
        def heard(payload: str) -> None:
            if (change := Change.from_json(payload)) is not None:
                hub.publish(change)

        listener = doorbell.Listener(parts.db, lambda: None, channel=doorbell.CHANGES,
                                     heard=heard)
        listener.start()
        return listener

    parts.hub.fed_by(start)


def settle_heap() -> None:
    """What start-up made lives as long as the process: moved out of the garbage collector's
    sight, so that a full collection does not walk it again (~145,000 objects, ~40 ms a full
    collection, a pause in whichever request was running: measured in the API process)."""
    gc.collect()
    gc.freeze()


def build_agent(parts: Parts) -> Agent:
    from attachfs.virt.libvirt import LibvirtDriver  # libvirt only where an agent runs

    config = parts.config
    for path in (config.config_drive_dir, config.metadata_socket_dir,
                 config.container_metadata_dir):
        private_dir(path)
    vms = LibvirtDriver(config.libvirt.uri, spare_root_ports=config.libvirt.spare_root_ports,
                        owner=f"{config.agent.host}:{config.state_path}",
                        virtiofs_dir=config.virtiofs_dir,
                        scope=config.agent.host if config.libvirt.domains_per_host else None)
    containers = LxcDriver(config.container_dir) if config.containers.enabled else None
    nfs = NfsTransport(config.state_path, config.metadata_socket_dir, config.nfs_server.port) \
        if {"nfs", "direct"} & set(config.agent.share_transports) else None
    attachments = Attachments(
        config, parts.db, parts.provider,
        {c.protocol: c for c in (BindConnector(config.storage_root, config.mount_root),
                                 NfsConnector(config.mount_root, config.nfs_dir,
                                              config.storage.nfs_client,
                                              config.storage.mount_timeout),
                                 CephFsConnector(config.mount_root, config.cephfs_dir,
                                                 mount_timeout=config.storage.mount_timeout))},
        GuestRouter(vms, containers, nfs),
        MetadataSockets(parts.db, config.metadata_socket_dir, config.metadata.enabled,
                        MetadataLimits.from_config(config.metadata)),
        Broadcasting(make_notifier(config), change_delivery(parts)),
        guest_address=nfs.address if nfs is not None else None,
        release_guest=nfs.release if nfs is not None else None,
    )
    return Agent(Reconciler(config, parts.db, attachments, lambda: load_images(config.images_dir),
                            crash_after=crash_point()))


def configure_logging(config: Config) -> None:
    logging.basicConfig(level=config.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def share_state_mounts(config: Config) -> None:
    """Where an agent runs, before it mounts anything: unmounts under the state dir must reach
    the guests' copies of this mount namespace (mountinfo.make_shared)."""
    private_dir(config.state_path)
    if not mountinfo.make_shared(config.state_path):
        log.warning("%s is not a shared mount and has mounts below it: unmounts there will not "
                    "reach the mount namespaces libvirt gives guests (a FUSE client can outlive "
                    "its unmount until the guest stops); restart with nothing mounted below it, "
                    "or make it shared (mount --make-shared)", config.state_path)


def serve(config: Config) -> None:
    configure_logging(config)
    share_state_mounts(config)
    parts = open_parts(config)
    agent = build_agent(parts)
    agent_thread = threading.Thread(target=agent.run, name="agent", daemon=True)
    agent_thread.start()
    host, port = config.listen_address()
    log.info("attachfs serving the compute API on http://%s:%d/v2.1", host, port)
    # uvicorn raises the SIGTERM it caught again once it has shut down, with the handler it
    # found: the default one ended the process there, before the agent below was stopped.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    app = build_api(parts, agent.wake)
    settle_heap()
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        agent.stop()
        agent_thread.join(timeout=30)
        agent.r.metadata.close()


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


WORKER_CONFIG = "ATTACHFS_API_CONFIG"  # the configuration, as JSON, for each API worker


def run_api(config: Config) -> None:
    """The API alone: agents on the compute hosts are rung after each change (PostgreSQL) and
    look by themselves every so often. `[api] workers` > 1: that many processes share the
    port (uvicorn's workers) and nothing but the database."""
    configure_logging(config)
    parts = open_parts(config)
    host, port = config.listen_address()
    workers = config.api.workers
    log.info("attachfs API on http://%s:%d/v2.1 (%d process(es), no agent)", host, port,
             workers)
    if workers == 1:
        app = build_api(parts)
        settle_heap()
        uvicorn.run(app, host=host, port=port, log_level="warning")
        return
    parts.db.dispose()
    os.environ[WORKER_CONFIG] = config.model_dump_json()
    from uvicorn.supervisors import Multiprocess

    # The workers share one listening socket, made here with IPPROTO_TCP: asyncio sets
    # TCP_NODELAY only on connections of a socket that says so, and uvicorn's own shared
    # socket does not (measured: a keep-alive request waited ~43 ms for the delayed ACK).
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                         socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    Multiprocess(uvicorn.Config("attachfs.service:api_worker", factory=True, workers=workers,
                                log_level="warning"), sockets=[sock]).run()


def api_worker() -> FastAPI:
    """One worker of `attachfs api --workers N` (uvicorn calls it in each process)."""
    config = Config.model_validate_json(os.environ[WORKER_CONFIG])
    configure_logging(config)
    app = build_api(open_parts(config, prepare=False))
    settle_heap()
    return app


def run_agent(config: Config) -> None:
    configure_logging(config)
    share_state_mounts(config)
    parts = open_parts(config)
    agent = build_agent(parts)
    signal.signal(signal.SIGTERM, lambda *_: agent.stop())
    signal.signal(signal.SIGINT, lambda *_: agent.stop())
    try:
        agent.run()
    finally:
        agent.r.metadata.close()
