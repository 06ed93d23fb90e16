"""Client commands: `server …` and `share …`, like the openstack CLI's, over HTTP.

They call the compute API (microversion 2.97) at --url with the noauth token --token through
`apiclient.Api`; nothing here touches the database or the host.
"""

from __future__ import annotations

import base64
import enum
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from attachfs.cli import output
from attachfs.cli.apiclient import (
    DEFAULT_TOKEN,
    DEFAULT_URL,
    GONE,
    Api,
    CliError,
    attachment_settled,
    poll,
    server_reached,
)
from attachfs.cli.options import Fmt, ServerRef, ShareRef, Timeout, Wait, handled
from attachfs.cli.output import OutputFormat, listing, note, show

server_app = typer.Typer(help="Servers (VMs).", no_args_is_help=True)
share_app = typer.Typer(help="Built-in shares (os-filesystem).", no_args_is_help=True)
server_add_app = typer.Typer(help="Attach something to a server.", no_args_is_help=True)
server_remove_app = typer.Typer(help="Detach something from a server.", no_args_is_help=True)
server_share_app = typer.Typer(help="Shares attached to a server (2.97).", no_args_is_help=True)
server_app.add_typer(server_add_app, name="add")
server_app.add_typer(server_remove_app, name="remove")
server_app.add_typer(server_share_app, name="share")


class Scope(enum.StrEnum):
    instance = "instance"
    project = "project"
    global_ = "global"


@dataclass
class Settings:
    """The global client options (--url, --token), kept on the Typer context."""

    url: str
    token: str


def api(ctx: typer.Context) -> Api:
    settings = ctx.find_object(Settings) or Settings(DEFAULT_URL, DEFAULT_TOKEN)
    client = Api(settings.url, settings.token)
    ctx.call_on_close(client.close)
    return client


def register(app: typer.Typer) -> None:
    """Add the client commands to the `attachfs` app."""
    app.add_typer(server_app, name="server")
    app.add_typer(share_app, name="share")


# ---- servers -----------------------------------------------------------------------------
def _wait(what: str, fetch: Callable[[], Any], done: Callable[[Any], str | None],
          timeout: float, finished: Callable[[Any], str]) -> Any:
    """Poll with a spinner on stderr; say what was reached, or raise CliError."""
    with output.spinner(f"Waiting for {what}") as update:
        result = poll(fetch, done, timeout, what, update)
    note(finished(result))
    return result


def _wait_server(client: Api, sid: str, target: str | object, timeout: float,
                 label: str) -> Any:
    goal = "deleted" if target is GONE else str(target)
    return _wait(f"server {label} to be {goal}", lambda: client.get_server(sid),
                 server_reached(target, label), timeout, lambda _: f"Server {label} is {goal}.")


def _image_names(client: Api) -> dict[str, str]:
    try:
        return {i["id"]: i["name"] for i in client.list_images()}
    except CliError:
        return {}


def _show_server(client: Api, server: dict[str, Any], fmt: OutputFormat) -> None:
    if fmt == OutputFormat.json:
        show(server, fmt)
        return
    view = {k: v for k, v in server.items() if k != "links"}
    show(view, fmt, output.server_formatters(_image_names(client)))


@server_app.command("create")
@handled
def server_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="New server name.", show_default=False)],
    image: Annotated[str, typer.Option(help="Image name or ID.", show_default=False)],
    flavor: Annotated[str, typer.Option(help="Flavor name or ID.", show_default=False)],
    user_data: Annotated[Path | None, typer.Option(help="File passed as user data.")] = None,
    prop: Annotated[list[str] | None, typer.Option(
        "--property", help="Metadata KEY=VALUE (repeatable).")] = None,
    wait: Wait = False, timeout: Timeout = 300.0, fmt: Fmt = OutputFormat.table,
) -> None:
    """Create (and boot) a server."""
    spec: dict[str, Any] = {"name": name, "imageRef": image, "flavorRef": flavor}
    metadata: dict[str, str] = {}
    for item in prop or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CliError(f"--property expects KEY=VALUE, got '{item}'")
        metadata[key] = value
    if metadata:
        spec["metadata"] = metadata
    if user_data is not None:
        try:
            spec["user_data"] = base64.b64encode(user_data.read_bytes()).decode()
        except OSError as exc:
            raise CliError(f"cannot read --user-data: {exc}") from None
    client = api(ctx)
    sid = client.create_server(spec)["id"]
    server = (_wait_server(client, sid, "ACTIVE", timeout, name) if wait
              else client.get_server(sid))
    _show_server(client, server, fmt)


@server_app.command("list")
@handled
def server_list(ctx: typer.Context, fmt: Fmt = OutputFormat.table) -> None:
    """List servers."""
    client = api(ctx)
    servers = client.list_servers()
    images = _image_names(client) if servers else {}
    rows = [[s["id"], s["name"], s["status"], s.get("OS-EXT-STS:task_state"),
             images.get(s["image"]["id"], s["image"]["id"]),
             s["flavor"].get("original_name", s["flavor"].get("id")),
             [m["tag"] for m in s.get("os-extended-shares:shares_attached", [])]]
            for s in servers]
    listing(["ID", "Name", "Status", "Task State", "Image", "Flavor", "Shares"], rows, fmt)


@server_app.command("show")
@handled
def server_show(ctx: typer.Context, server: ServerRef, fmt: Fmt = OutputFormat.table) -> None:
    """Show a server."""
    client = api(ctx)
    _show_server(client, client.get_server(client.resolve_server(server)), fmt)


def _power(ctx: typer.Context, server: str, action: str, args: Any, wait: bool,
           timeout: float, target: str) -> None:
    client = api(ctx)
    sid = client.resolve_server(server)
    client.action(sid, action, args)
    if wait:
        _wait_server(client, sid, target, timeout, server)


@server_app.command("start")
@handled
def server_start(ctx: typer.Context, server: ServerRef, wait: Wait = False,
                 timeout: Timeout = 300.0) -> None:
    """Start a stopped server."""
    _power(ctx, server, "os-start", None, wait, timeout, "ACTIVE")


@server_app.command("stop")
@handled
def server_stop(ctx: typer.Context, server: ServerRef, wait: Wait = False,
                timeout: Timeout = 300.0) -> None:
    """Stop a server (ACPI shutdown, then power off)."""
    _power(ctx, server, "os-stop", None, wait, timeout, "SHUTOFF")


@server_app.command("reboot")
@handled
def server_reboot(ctx: typer.Context, server: ServerRef,
                  hard: Annotated[bool, typer.Option("--hard", help="Hard reboot.")] = False,
                  wait: Wait = False, timeout: Timeout = 300.0) -> None:
    """Reboot a server."""
    _power(ctx, server, "reboot", {"type": "HARD" if hard else "SOFT"}, wait, timeout, "ACTIVE")


@server_app.command("delete")
@handled
def server_delete(ctx: typer.Context, server: ServerRef, wait: Wait = False,
                  timeout: Timeout = 300.0) -> None:
    """Delete a server."""
    client = api(ctx)
    sid = client.resolve_server(server)
    client.delete_server(sid)
    if wait:
        _wait_server(client, sid, GONE, timeout, server)


@server_app.command("console")
@handled
def server_console(ctx: typer.Context, server: ServerRef,
                   lines: Annotated[int | None, typer.Option(
                       min=0, help="Only the last N lines.")] = None,
                   fmt: Fmt = OutputFormat.table) -> None:
    """Print the server's serial console log (os-getConsoleOutput)."""
    client = api(ctx)
    sid = client.resolve_server(server)
    body = client.action(sid, "os-getConsoleOutput", {} if lines is None else {"length": lines})
    if fmt == OutputFormat.json:
        output.print_json(body)
    else:
        output.print_text(body["output"])


# ---- built-in shares ---------------------------------------------------------------------
@share_app.command("create")
@handled
def share_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Share name ([A-Za-z0-9._-]).", show_default=False)],
    size: Annotated[int, typer.Option(min=1, help="Size in GiB.", show_default=False)],
    scope: Annotated[Scope, typer.Option(case_sensitive=False,
                                         help="Who may attach it.")] = Scope.instance,
    mount_point: Annotated[str | None, typer.Option(help="Guest mount point.")] = None,
    fmt: Fmt = OutputFormat.table,
) -> None:
    """Create a built-in share (PUT /os-filesystem/NAME)."""
    entry: dict[str, Any] = {"size": size, "scope": scope.value}
    if mount_point is not None:
        entry["mount_point"] = mount_point
    show(api(ctx).create_filesystem(name, entry), fmt)


@share_app.command("list")
@handled
def share_list(ctx: typer.Context, fmt: Fmt = OutputFormat.table) -> None:
    """List the shares this project can see."""
    rows = [[e["id"], e["name"], e["size"], e["scope"], e["project"], e["status"],
             e["mount_point"]] for e in api(ctx).list_filesystems()]
    listing(["ID", "Name", "Size", "Scope", "Project", "Status", "Mount Point"], rows, fmt)


@share_app.command("show")
@handled
def share_show(ctx: typer.Context, share: ShareRef, fmt: Fmt = OutputFormat.table) -> None:
    """Show a share, its usage and the servers it is attached to."""
    client = api(ctx)
    name = client.filesystem_name(share)
    entry = client.get_filesystem(name)
    entry["instances"] = client.request("GET", f"/v2.1/os-filesystem/{name}/instances")[
        "instances"]
    show(entry, fmt, {"instances": lambda rows: "\n".join(
        f"{r['id']} status={r['status']}" for r in rows)})


@share_app.command("delete")
@handled
def share_delete(ctx: typer.Context, share: ShareRef) -> None:
    """Delete a share (it must not be attached)."""
    client = api(ctx)
    client.delete_filesystem(client.filesystem_name(share))


# ---- attachments (2.97) ------------------------------------------------------------------
def _wait_attachment(client: Api, sid: str, share_id: str, gone: bool, timeout: float,
                     label: str) -> Any:
    goal = "detached" if gone else "attached"
    return _wait(f"{label} to be {goal}", lambda: client.get_attachment(sid, share_id),
                 attachment_settled(gone, label), timeout,
                 lambda m: f"Share {label} is {goal}" + ("." if gone else f" ({m['status']})."))


@server_add_app.command("share")
@handled
def server_add_share(ctx: typer.Context, server: ServerRef, share: ShareRef,
                     tag: Annotated[str | None, typer.Option(
                         help="virtio-fs tag the guest mounts (default: the share ID).")] = None,
                     read_only: Annotated[bool, typer.Option(
                         "--read-only", help="The guest may only read the share.")] = False,
                     transport: Annotated[str | None, typer.Option(
                         help="virtiofs, 9p (stopped servers only), nfs or direct (a "
                              "built-in NFS share the guest mounts itself); default: the "
                              "server's flavor, else the host's.")] = None,
                     wait: Wait = False, timeout: Timeout = 300.0,
                     fmt: Fmt = OutputFormat.table) -> None:
    """Attach a share to a server (stopped; running too where the host hot-plugs)."""
    client = api(ctx)
    sid, share_id = client.resolve_server(server), client.resolve_share(share)
    mapping = client.attach(sid, share_id, tag, read_only, transport)
    if wait:
        mapping = _wait_attachment(client, sid, share_id, False, timeout,
                                   f"{share} on server {server}")
    show(mapping, fmt)


@server_remove_app.command("share")
@handled
def server_remove_share(ctx: typer.Context, server: ServerRef, share: ShareRef,
                        wait: Wait = False, timeout: Timeout = 300.0) -> None:
    """Detach a share from a stopped server."""
    client = api(ctx)
    sid, share_id = client.resolve_server(server), client.resolve_share(share)
    client.detach(sid, share_id)
    if wait:
        _wait_attachment(client, sid, share_id, True, timeout, f"{share} on server {server}")


@server_share_app.command("list")
@handled
def server_share_list(ctx: typer.Context, server: ServerRef,
                      fmt: Fmt = OutputFormat.table) -> None:
    """List the shares attached to a server."""
    client = api(ctx)
    mappings = client.list_attachments(client.resolve_server(server))
    names = {e["id"]: e["name"] for e in client.list_filesystems()} if mappings else {}
    rows = [[m["share_id"], names.get(m["share_id"]), m["status"], m["tag"]] for m in mappings]
    listing(["Share ID", "Name", "Status", "Tag"], rows, fmt)


@server_share_app.command("show")
@handled
def server_share_show(ctx: typer.Context, server: ServerRef, share: ShareRef,
                      fmt: Fmt = OutputFormat.table) -> None:
    """Show one share attachment of a server, and how the guest mounts it."""
    client = api(ctx)
    sid, share_id = client.resolve_server(server), client.resolve_share(share)
    mapping = client.get_attachment(sid, share_id)
    mount = client.mount_info(sid, share_id)
    mapping["mount"] = mount.pop("command")
    show(mapping, fmt)
