"""What the service and client commands share: option types and turning failures into exits."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, ParamSpec, TypeVar

import typer

from attachfs.cli import output
from attachfs.cli.apiclient import CliError
from attachfs.cli.output import OutputFormat

P = ParamSpec("P")
R = TypeVar("R")


def handled(func: Callable[P, R]) -> Callable[P, R]:
    """Expected failures become `Error...` on stderr and exit code 1, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except CliError as exc:
            output.error(str(exc))
            raise typer.Exit(1) from None

    return wrapper


Fmt = Annotated[OutputFormat, typer.Option("-f", "--format", case_sensitive=False,
                                           help="Output format.")]
Wait = Annotated[bool, typer.Option("--wait", help="Wait until the change is done.")]
Timeout = Annotated[float, typer.Option("--timeout", min=0, help="Seconds --wait waits.")]
ServerRef = Annotated[str, typer.Argument(help="Server name or ID.", show_default=False)]
ShareRef = Annotated[str, typer.Argument(help="Share name or ID.", show_default=False)]
ConfigFile = Annotated[Path | None, typer.Option("--config", "-c", envvar="ATTACHFS_CONFIG",
                                                 help="TOML config file (optional).")]
StateDir = Annotated[Path | None, typer.Option(help="State directory (database, shares).")]
Listen = Annotated[str | None, typer.Option(help="HOST:PORT of the API.")]
DbUrl = Annotated[str | None, typer.Option(help="SQLAlchemy URL (default: SQLite in state).")]
ImagesDir = Annotated[Path | None, typer.Option(help="Guest image catalogue directory.")]
LogLevel = Annotated[str | None, typer.Option(help="DEBUG, INFO, WARNING, ...")]
Dest = Annotated[Path, typer.Option(help="Image directory.")]
