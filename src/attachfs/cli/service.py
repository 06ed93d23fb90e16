"""Service commands: run the parts of attachfs on this host (serve, api, agent) and list the
guest images it can boot. They read the configuration; they never talk HTTP."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from attachfs.cli.apiclient import CliError
from attachfs.cli.options import (
    ConfigFile,
    DbUrl,
    Dest,
    Fmt,
    ImagesDir,
    Listen,
    LogLevel,
    StateDir,
    handled,
)
from attachfs.cli.output import OutputFormat, listing
from attachfs.config import Config

DEFAULT_IMAGES = Path("/var/lib/attachfs/images")

image_app = typer.Typer(help="Guest boot images on this host.", no_args_is_help=True)


def _config(config: Path | None, overrides: dict[str, Any]) -> Config:
    from attachfs.config import load_config
    from attachfs.errors import AttachfsError

    try:
        cfg = load_config(config, {k: str(v) if isinstance(v, Path) else v
                                   for k, v in overrides.items()})
        cfg.listen_address()
    except AttachfsError as exc:
        raise CliError(exc.message) from None
    except ValueError:
        raise CliError(f"--listen must be HOST:PORT, got '{overrides.get('api.listen')}'") \
            from None
    return cfg


def _run_service(target: Callable[[Config], None], cfg: Config) -> None:
    from attachfs.errors import AttachfsError

    try:
        target(cfg)
    except AttachfsError as exc:
        raise CliError(exc.message) from None
    except OSError as exc:
        raise CliError(f"{exc} (state dir {cfg.state_path}; run as root or pass --state-dir)") \
            from None


@handled
def serve(config: ConfigFile = None, state_dir: StateDir = None, listen: Listen = None,
          database_url: DbUrl = None, images_dir: ImagesDir = None,
          log_level: LogLevel = None) -> None:
    """Run the compute API, the agent and the metadata service in one process."""
    from attachfs import service

    _run_service(service.serve, _config(config, {
        "state_dir": state_dir, "api.listen": listen, "database_url": database_url,
        "images.dir": images_dir, "log_level": log_level}))


@handled
def api_only(config: ConfigFile = None, state_dir: StateDir = None, listen: Listen = None,
             database_url: DbUrl = None, images_dir: ImagesDir = None,
             log_level: LogLevel = None,
             workers: Annotated[int | None, typer.Option(
                 help="API processes sharing the port (with PostgreSQL).")] = None) -> None:
    """Run only the compute API (several processes can share one database)."""
    from attachfs import service

    _run_service(service.run_api, _config(config, {
        "state_dir": state_dir, "api.listen": listen, "database_url": database_url,
        "images.dir": images_dir, "log_level": log_level, "api.workers": workers}))


@handled
def agent(config: ConfigFile = None, state_dir: StateDir = None, database_url: DbUrl = None,
          images_dir: ImagesDir = None, log_level: LogLevel = None) -> None:
    """Run only the agent (reconciles servers and attachments on this host)."""
    from attachfs import service

    _run_service(service.run_agent, _config(config, {
        "state_dir": state_dir, "database_url": database_url, "images.dir": images_dir,
        "log_level": log_level}))


@image_app.command("list")
@handled
def image_list(dest: Dest = DEFAULT_IMAGES, fmt: Fmt = OutputFormat.table) -> None:
    """List the guest images under --dest (built by `make setup`: tools/build_image.py)."""
    from attachfs.virt.images import load_images

    images = load_images(dest)
    listing(["ID", "Name", "Directory", "Cmdline"],
            [[i.id, i.name, str(i.kernel.parent), i.cmdline] for i in images], fmt)


def register(app: typer.Typer) -> None:
    """Add the service commands to the `attachfs` app."""
    app.command()(serve)
    app.command("api")(api_only)
    app.command()(agent)
    app.add_typer(image_app, name="image")
