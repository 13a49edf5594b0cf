"""Showing a followed job in a terminal: a progress bar, state changes and log lines."""
from __future__ import annotations

import shutil
import sys
from typing import Any

import click

from core.encoding import isotime
from core.follow import Event

__all__ = ["Printer", "EXIT_CODES", "exit_code"]

#: How ``follow`` (and ``enqueue --follow``) exit, by final state.
EXIT_CODES = {"complete": 0, "error": 1, "killed": 3, "inactive": 4, "removed": 5}


def exit_code(final: str) -> int:
    """The exit code for a job that ended in ``final``."""
    return EXIT_CODES.get(final, 1)


class Printer:
    """Prints events for people: log lines, state changes, a live progress bar on a terminal."""

    def __init__(self, *, show_states: bool = True, stream: Any = None) -> None:
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.show_states = show_states
        self.state: str | None = None
        self.progress: tuple[float, str | None] | None = None
        self.bar_shown = False
        self.job: dict[str, Any] | None = None

    def _echo(self, text: str) -> None:
        self._clear_bar()
        click.echo(text, file=self.stream)
        self._draw_bar()

    def _clear_bar(self) -> None:
        if self.tty and self.bar_shown:
            click.echo("\r\033[K", nl=False, file=self.stream)
            self.bar_shown = False

    def _draw_bar(self) -> None:
        if not (self.tty and self.progress and self.state == "running"):
            return
        value, message = self.progress
        width = max(10, min(40, shutil.get_terminal_size().columns - 40))
        filled = int(round(value * width))
        text = f"[{'#' * filled}{'-' * (width - filled)}] {value * 100:5.1f}% {message or ''}"
        click.echo("\r" + text[:shutil.get_terminal_size().columns - 1], nl=False, file=self.stream)
        self.bar_shown = True

    def show(self, event: Event) -> None:
        """Print one event."""
        if event.kind == "log":
            record = event.data
            line = f"{isotime(record['created'])[11:23]} {record['level']:<7} {record['message']}"
            self._echo(line)
            if record.get("exception"):
                self._echo(record["exception"].rstrip())
        elif event.kind == "state":
            job = self.job = event.data
            if job["state"] != self.state and self.show_states:
                detail = f" (trial {job['trial']})" if job["state"] == "running" else ""
                self._echo(f"--- {job['_id']} {job['state']}{detail}")
            self.state = job["state"]
            prog = job.get("prog") or {}
            progress = (float(prog.get("value") or 0), prog.get("message"))
            if progress != self.progress:
                self.progress = progress
                if self.tty:
                    self._clear_bar()
                    self._draw_bar()
                elif self.state == "running" and progress[0] > 0:
                    self._echo(f"--- progress {progress[0] * 100:.0f}% {progress[1] or ''}".rstrip())
        elif event.kind == "close":
            self._clear_bar()
            self.finish(event.data["state"])

    def finish(self, final: str) -> None:
        """Print the outcome (and the traceback of a failed job)."""
        job = self.job or {}
        runtime = f" after {job['runtime']:.1f} s" if job.get("runtime") is not None else ""
        click.echo(f"=== {job.get('_id', 'job')} {final}{runtime}", file=self.stream)
        error = job.get("last_error") or {}
        if final != "complete" and error.get("traceback"):
            click.echo(error["traceback"].rstrip(), file=self.stream)
        elif final != "complete" and error.get("message"):
            click.echo(f"{error.get('exception')}: {error['message']}", file=self.stream)
