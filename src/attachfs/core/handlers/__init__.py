"""Command handlers: verbs that take a command, a unit of work and the bound collaborators
(`Env`), check the rules of core/model.py and core/rules.py, and record desired state. They do
no I/O of their own: the database is behind the unit of work (db/uow.py), policy and share
look-ups behind core/ports.py. Read handlers are in queries.py.

    command          handler                     module
    CreateServer     servers.create_server       servers.py
    StartServer      servers.start_server
    StopServer       servers.stop_server
    RebootServer     servers.reboot_server
    DeleteServer     servers.delete_server
    EvacuateServer   moves.evacuate_server       moves.py (core/moves.py: who does what)
    MigrateServer    moves.migrate_server
    ConfirmMigration moves.confirm_migration
    RevertMigration  moves.revert_migration
    UnavailableAction servers.refuse_unavailable (shelve, resize, ...: 403/409)
    AttachShare      attachments.attach_share    attachments.py
    DetachShare      attachments.detach_share
    CreateShare      shares.create_share         shares.py (built-in shares)
    DeleteShare      shares.delete_share
    UpdateHost       hosts.update_host           hosts.py (os-services, os-hypervisors)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from attachfs.core import commands
from attachfs.core.handlers import attachments, hosts, moves, servers, shares
from attachfs.core.ports import Env, UnitOfWork

HANDLERS: dict[type[commands.Command], Callable[[Any, UnitOfWork, Env], Any]] = {
    commands.CreateServer: servers.create_server,
    commands.StartServer: servers.start_server,
    commands.StopServer: servers.stop_server,
    commands.RebootServer: servers.reboot_server,
    commands.DeleteServer: servers.delete_server,
    commands.EvacuateServer: moves.evacuate_server,
    commands.MigrateServer: moves.migrate_server,
    commands.ConfirmMigration: moves.confirm_migration,
    commands.RevertMigration: moves.revert_migration,
    commands.UnavailableAction: servers.refuse_unavailable,
    commands.AttachShare: attachments.attach_share,
    commands.DetachShare: attachments.detach_share,
    commands.CreateShare: shares.create_share,
    commands.DeleteShare: shares.delete_share,
    commands.UpdateHost: hosts.update_host,
}


def handle(cmd: commands.Command, uow: UnitOfWork, env: Env) -> Any:
    """Run the one handler of `cmd`."""
    return HANDLERS[type(cmd)](cmd, uow, env)
