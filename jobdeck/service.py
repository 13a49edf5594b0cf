"""Commands that run jobdeck: ``up``, ``serve`` and ``db``."""
from __future__ import annotations

import asyncio
import signal
import threading

import click

from core import users
from core.config import Config
from core.db import Database
from core.embedded import EmbeddedServer, database_url, find_running
from core.errors import ConfigError
from handlers.app import Server
from jobdeck.cli import cli, config_option, load_config, setup_logging

__all__ = ["up", "serve", "db"]


async def _wait_for_signal() -> int:
    """Wait for SIGINT or SIGTERM; return the signal's number."""
    loop = asyncio.get_running_loop()
    received: asyncio.Future[int] = loop.create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda s=sig: received.done() or received.set_result(s))
    try:
        return await received
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _run_server(config: Config, url: str) -> None:
    db = Database.connect(url, config.database)
    try:
        await db.setup(log_retention_days=config.log_retention_days)
        generated = await users.bootstrap_admin(db, config.admin_password)
        if generated:
            click.secho(f"Created user 'admin' with password: {generated}\n"
                        "It is shown only this once. Change it with: jobdeck user passwd admin",
                        fg="yellow", err=True)
        server = Server(config, db)
        await server.start()
        click.echo(f"jobdeck serving {server.url} (database {config.database} at {url})", err=True)
        sig = await _wait_for_signal()
        click.echo(f"received {signal.Signals(sig).name}, stopping", err=True)
        await server.stop()
    finally:
        await db.close()


@cli.command()
@config_option
def up() -> None:
    """Run everything: the embedded database (unless mongo_url is set) and the server.

    Stops cleanly on Ctrl-C or SIGTERM, the embedded database last. Data is
    kept in data_dir and survives restarts. On the very first start an
    'admin' user is created with $JOBDECK_ADMIN_PASSWORD or a generated
    password, printed once.
    """
    _serve()


@cli.command()
@config_option
def serve() -> None:
    """Run the HTTP API server only (database and workers run elsewhere).

    Without mongo_url it uses the embedded database of data_dir if one runs
    (e.g. 'jobdeck db' in another terminal), else starts one for itself.
    """
    _serve()


def _serve() -> None:
    config = load_config()
    setup_logging(config)
    with database_url(config) as url:
        asyncio.run(_run_server(config, url))


@cli.command()
@config_option
def db() -> None:
    """Run the embedded database alone, in the foreground, and print its URL.

    Other jobdeck commands with the same data_dir find and use it.
    """
    config = load_config()
    setup_logging(config)
    running = find_running(config.data_dir)
    if running:
        raise ConfigError(f"an embedded database already runs for {config.data_dir}: "
                          f"{running.url} (pid {running.pid})")
    server = EmbeddedServer(config.data_dir)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    url = server.start()
    try:
        click.echo(url)
        click.echo(f"embedded database running (pid {server.pid}, data in {server.storage}); "
                   "Ctrl-C stops it", err=True)
        while not stop.is_set() and server.process is not None and server.process.poll() is None:
            stop.wait(0.5)
    finally:
        server.stop()
