"""The ``jobdeck`` command line: runs the service and administers it."""
__all__ = ["cli", "main"]

from jobdeck.cli import cli, main  # noqa: E402
