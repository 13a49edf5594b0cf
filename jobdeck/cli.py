"""The ``jobdeck`` console script: the command group with every command registered."""
from __future__ import annotations

from jobdeck import audit, flow, jobs, schedules, service, tokens, users  # noqa: F401  (each registers its commands)
from jobdeck.command import cli

__all__ = ["cli", "main"]


def main() -> None:
    """Entry point of the ``jobdeck`` console script."""
    cli(prog_name="jobdeck")
