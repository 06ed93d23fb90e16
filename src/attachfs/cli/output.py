"""Rendering: Field/Value tables for one resource, column tables for lists, or JSON.

Tables and progress go through Rich; JSON and raw text are written to stdout as they are
(no colour, no wrapping) so that scripts can parse them.
"""

from __future__ import annotations

import contextlib
import enum
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import typer
from rich import box
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text


class OutputFormat(enum.StrEnum):
    table = "table"
    json = "json"


def _console(stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    tty = stream.isatty()
    # Piped output is not cut to 80 columns: a table line stays one line.
    return Console(file=stream, width=None if tty else 250, highlight=False)


def format_value(value: Any) -> str:
    """A cell: scalars as they are, dicts as k='v' pairs, lists one item per line."""
    if value is None:
        return "None"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={format_value(v)!r}" if isinstance(v, str) else
                         f"{k}={format_value(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return "\n".join(format_value(v) for v in value)
    return str(value)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    sys.stdout.flush()


def print_text(text: str) -> None:
    sys.stdout.write(text)
    if text and not text.endswith("\n"):
        sys.stdout.write("\n")
    sys.stdout.flush()


def show(data: dict[str, Any], fmt: OutputFormat,
         formatters: dict[str, Callable[[Any], str]] | None = None) -> None:
    """One resource: a Field/Value table (sorted by field, as the openstack CLI does) or JSON."""
    if fmt == OutputFormat.json:
        print_json(data)
        return
    formatters = formatters or {}
    table = Table("Field", "Value", box=box.SQUARE, show_lines=False)
    for key in sorted(data):
        value = data[key]
        cell = formatters[key](value) if key in formatters else format_value(value)
        table.add_row(Text(key), Text(cell))
    _console().print(table)


def listing(columns: Sequence[str], rows: Sequence[Sequence[Any]], fmt: OutputFormat) -> None:
    """Several resources: a column table, or JSON (a list of objects keyed by column name)."""
    if fmt == OutputFormat.json:
        print_json([dict(zip(columns, row, strict=True)) for row in rows])
        return
    table = Table(*columns, box=box.SQUARE)
    for row in rows:
        table.add_row(*(Text(format_value(v)) for v in row))
    _console().print(table)


def server_formatters(images: dict[str, str]) -> dict[str, Callable[[Any], str]]:
    """How `server show` prints the nested fields (images: id -> name)."""

    def image(value: dict[str, Any]) -> str:
        ident = str(value.get("id"))
        return f"{images[ident]} ({ident})" if ident in images else ident

    def flavor(value: dict[str, Any]) -> str:
        if "original_name" not in value:
            return format_value(value)
        return (f"{value['original_name']} (vcpus={value.get('vcpus')}, "
                f"ram={value.get('ram')} MiB)")

    def shares(value: list[dict[str, Any]]) -> str:
        return "\n".join(f"{s['share_id']} status={s['status']} tag={s['tag']}" for s in value)

    return {"image": image, "flavor": flavor, "os-extended-shares:shares_attached": shares}


def note(message: str) -> None:
    """A human-facing remark (what was done): stderr, so stdout stays parseable."""
    typer.secho(message, err=True, fg=typer.colors.GREEN)


def error(message: str) -> None:
    typer.secho(message, err=True, fg=typer.colors.RED)


@contextlib.contextmanager
def spinner(description: str) -> Iterator[Callable[[str], None]]:
    """A transient spinner on stderr; yields a function that shows the latest status.

    Only on a terminal: piped or captured stderr gets no animation frames.
    """
    console = _console(stderr=True)
    if not console.is_terminal:
        yield lambda _status: None
        return
    columns = (SpinnerColumn(), TextColumn("{task.description}"),
               TextColumn("[dim]{task.fields[status]}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(description, total=None, status="")

        def update(status: str) -> None:
            progress.update(task, status=status)

        yield update
