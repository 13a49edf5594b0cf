"""The ``jobdeck`` command group and what its commands share: ``--config``, error reporting, the database runner.

Errors are reported in one place, ``_Group.invoke``: one line ``Error:
<message>`` on stderr, and exit code 1, or 2 for a start-up error
(``ConfigError``: a bad config file or value, a taken port, an unwritable
data_dir, a database that does not answer; see ``core.startup``).
``jobdeck --debug`` or log level DEBUG prints the traceback first.
"""
from __future__ import annotations

import asyncio
import getpass
import logging
import os
import sys
import traceback
from typing import Any, Awaitable, Callable, TypeVar

import click
from pymongo.errors import ConnectionFailure, PyMongoError

from core import config as configuration
from core.config import Config
from core.db import Database
from core.embedded import database_url, starting_note
from core.errors import ConfigError, JobdeckError

__all__ = ["cli", "config_option", "load_config", "run_with_database", "actor", "setup_logging"]

T = TypeVar("T")
_CONFIG_KEY = "jobdeck.config"
_DEBUG_KEY = "jobdeck.debug"


def _remember_config(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value:
        ctx.find_root().meta[_CONFIG_KEY] = value


def config_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--config PATH`` to a command (it is accepted on the group and on every command)."""
    return click.option(
        "--config", type=click.Path(dir_okay=False), expose_value=False, is_eager=True,
        callback=_remember_config, metavar="PATH",
        help="TOML configuration file [default: $JOBDECK_CONFIG, ./jobdeck.toml, "
             "/etc/jobdeck/jobdeck.toml].")(command)


def load_config() -> Config:
    """The configuration named by ``--config`` (or found the usual way), validated."""
    ctx = click.get_current_context()
    config = configuration.load(ctx.find_root().meta.get(_CONFIG_KEY))
    if config.log_level == "DEBUG":
        ctx.find_root().meta[_DEBUG_KEY] = True
    return config


def setup_logging(config: Config) -> None:
    """Log to stderr at the configured level."""
    logging.basicConfig(level=config.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def actor() -> str:
    """Who an operator command acts as, for the audit trail."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def run_with_database(config: Config, work: Callable[[Database], Awaitable[T]]) -> T:
    """Run ``work(db)`` on a fresh event loop with the configured database.

    Without ``mongo_url`` this uses the data_dir's running embedded server or
    starts one (before the loop starts), which is stopped afterwards unless
    another jobdeck process uses it meanwhile. Starting one is said on stderr,
    with where a running one is: a command pointed at the wrong data_dir
    would otherwise show an empty database.
    """
    with database_url(config, announce=lambda data_dir: click.echo(
            "jobdeck: " + starting_note(data_dir, temporary=True), err=True)) as url:
        async def main() -> T:
            db = Database.connect(url, config.database)
            try:
                await db.setup(log_retention_days=config.log_retention_days,
                               audit_retention_days=config.audit_retention_days)
                return await work(db)
            finally:
                await db.close()
        return asyncio.run(main())


class _StartupFailure(click.ClickException):
    """A start-up error: exit code 2."""

    exit_code = 2


class _Group(click.Group):
    """Turns jobdeck's errors into a one-line message and a non-zero exit (the traceback only when debugging)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            # One line, whatever the message holds: a service manager's log shows it whole.
            raise self._failure(ctx, _StartupFailure(" ".join(str(exc).splitlines()))) from None
        except JobdeckError as exc:
            raise self._failure(ctx, click.ClickException(str(exc))) from None
        except ConnectionFailure as exc:
            raise self._failure(ctx, click.ClickException(f"the database is unavailable: {exc}")) from None
        except PyMongoError as exc:
            raise self._failure(ctx, click.ClickException(f"database error: {exc}")) from None

    @staticmethod
    def _failure(ctx: click.Context, failure: click.ClickException) -> click.ClickException:
        """``failure``, after printing the traceback being handled if debugging."""
        if ctx.meta.get(_DEBUG_KEY) or os.environ.get(configuration.ENV_PREFIX + "LOG_LEVEL", "").upper() == "DEBUG":
            traceback.print_exc()
        return failure


def _remember_debug(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.find_root().meta[_DEBUG_KEY] = True


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, expose_value=False, is_eager=True, callback=_remember_debug,
              help="On an error, print its Python traceback too (as log level DEBUG does).")
@config_option
@click.version_option(package_name="jobdeck")
def cli() -> None:
    """jobdeck: a job management service.

    Clients enqueue jobs over HTTP and follow them live; workers run them;
    finished jobs are kept in a journal. These commands run the service and
    administer it directly on its database.

    \b
    Quick start:
      jobdeck up                      database, server and worker in one
      jobdeck user add alice --perm 'job:jobs.example.*:x'
    """

