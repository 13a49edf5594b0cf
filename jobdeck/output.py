"""Output of commands: aligned tables for people, ``--json`` for scripts."""
from __future__ import annotations

from datetime import datetime
from typing import Any, Iterable, Sequence

import click

from core.encoding import dumps, isotime

__all__ = ["print_json", "print_table", "cell"]


def print_json(value: Any) -> None:
    """Print ``value`` as one JSON document (ids as hex, times ISO-8601 UTC)."""
    click.echo(dumps(value, indent=2))


def cell(value: Any) -> str:
    """One value as table text."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return isotime(value).replace("T", " ")[:19]
    if isinstance(value, (list, tuple)):
        return ",".join(cell(v) for v in value) or "-"
    return str(value)


def print_table(rows: Iterable[dict[str, Any]], columns: Sequence[str]) -> None:
    """Print ``rows`` as an aligned table of ``columns``, with a header."""
    text = [[cell(row.get(column)) for column in columns] for row in rows]
    widths = [max([len(column)] + [len(line[i]) for line in text]) for i, column in enumerate(columns)]
    click.echo("  ".join(column.upper().ljust(width) for column, width in zip(columns, widths)).rstrip())
    for line in text:
        click.echo("  ".join(value.ljust(width) for value, width in zip(line, widths)).rstrip())
