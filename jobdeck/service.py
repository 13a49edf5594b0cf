"""Commands that run jobdeck: ``up``, ``serve``, ``worker`` and ``db``."""
from __future__ import annotations

import asyncio
import dataclasses
import signal
import time
from typing import Any, Awaitable, Callable

import click
from pymongo.errors import PyMongoError

from core import flow, registry, users
from core.config import Config
from core.db import Database
from core.embedded import database_url, shared_server, starting_note
from core.errors import BadArgument, DatabaseUnavailable
from core.scheduler import Scheduler
from core.startup import redact_url
from core.worker import Worker
from handlers.app import Server, listen, tls_context
from jobdeck.command import cli, config_option, load_config, setup_logging

__all__ = ["up", "serve", "worker", "db"]


class _Signals:
    """SIGINT/SIGTERM on the running loop: the first asks to stop, the second to hurry."""

    def __init__(self, *, runs_jobs: bool) -> None:
        self.runs_jobs = runs_jobs
        self.stop = asyncio.Event()
        self.hurry = asyncio.Event()
        self.loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.loop.add_signal_handler(sig, self._received, sig)

    def _received(self, sig: signal.Signals) -> None:
        if self.stop.is_set():
            click.echo(f"received {sig.name} again: stopping running jobs now", err=True)
            self.hurry.set()
        else:
            hint = " (again to stop running jobs now)" if self.runs_jobs else ""
            click.echo(f"received {sig.name}: stopping{hint}", err=True)
            self.stop.set()


async def _run(config: Config, url: str, *, http: bool, slots: int | None) -> None:
    """Serve HTTP and/or run a worker until a signal; then stop in order."""
    signals = _Signals(runs_jobs=bool(slots))
    db = Database.connect(url, config.database)
    try:
        await db.setup(log_retention_days=config.log_retention_days,
                       audit_retention_days=config.audit_retention_days)
        classes = registry.discover(config.job_packages, paths=config.job_paths)
        server = worker = scheduler = None
        # serve offers its job classes itself; up's worker offers them as it starts.
        as_server = registry.Provider.server(config.port) if http and not slots else None
        if http:
            # Registered before the server answers, so that a first request finds them.
            await _retried("registering the job classes", lambda: registry.sync(db, classes, provider=as_server))
            generated = await users.bootstrap_admin(db, config.admin_password)
            if generated:
                click.secho(f"Created user 'admin' with password: {generated}\n"
                            "It is shown only this once. Change it with: jobdeck user passwd admin",
                            fg="yellow", err=True)
            server = Server(config, db, job_import_errors=classes.import_errors)
            await server.start()
            click.echo(f"jobdeck serving {server.url} (database {config.database} at {redact_url(url)})", err=True)
            click.echo(f"dashboard: {server.dashboard_url} (API docs: {server.dashboard_url}docs)", err=True)
            # Every server runs one; the holder of the scheduler lease enqueues the schedules' ticks.
            scheduler = Scheduler(db, lease_seconds=config.scheduler_lease_seconds)
            scheduler.start()
        if slots:
            worker = Worker(db, config, classes=classes, slots=slots, import_errors=classes.import_errors,
                            kill_grace=config.kill_grace_seconds, shutdown_grace=config.shutdown_grace_seconds)
            await worker.start()
            click.echo(f"worker {worker.id} running {slots} slots for {len(classes)} job classes", err=True)
        await signals.stop.wait()
        if scheduler is not None:
            await scheduler.stop()  # gives its lease up: another server takes over at once
        if worker is not None:
            stopping = asyncio.create_task(worker.stop())
            hurry = asyncio.create_task(signals.hurry.wait())
            await asyncio.wait({stopping, hurry}, return_when=asyncio.FIRST_COMPLETED)
            if not stopping.done():
                worker.hurry()
            await stopping
            hurry.cancel()
        if server is not None:
            await server.stop()
        if as_server is not None:
            await _retried("withdrawing the server's offer", lambda: registry.withdraw(db, as_server.id))
    finally:
        await db.close()


async def _retried(what: str, write: Callable[[], Awaitable[Any]], seconds: float = 5.0) -> None:
    """``await write()``, retried every half second for ``seconds`` on a database error; then a warning."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            await write()
            return
        except PyMongoError as exc:
            if time.monotonic() >= deadline:
                click.echo(f"warning: {what} failed ({exc}); going on without", err=True)
                return
            await asyncio.sleep(0.5)


def _main(http: bool, slots: Callable[[Config], int | None], changes: dict[str, Any] | None = None) -> None:
    config = dataclasses.replace(load_config(), **(changes or {}))
    setup_logging(config)
    if http:
        # A bad TLS certificate or a taken port fails here, before the database starts; Server.start
        # checks again (and fails the same way should another program take the port in between).
        tls_context(config)
        for sock in listen(config):
            sock.close()
    with database_url(config, announce=lambda data_dir: click.echo(
            starting_note(data_dir, temporary=False), err=True)) as url:
        asyncio.run(_run(config, url, http=http, slots=slots(config)))


@cli.command()
@config_option
def up() -> None:
    """Run everything: the embedded database (unless mongo_url is set), the server and a worker.

    Stops cleanly on Ctrl-C or SIGTERM: running jobs get shutdown_grace_seconds
    to finish (a second Ctrl-C stops them at once) and go back to the queue
    otherwise; the embedded database stops last, unless another jobdeck
    process (a separate worker or serve) still uses it: the last of them to
    exit stops it. Data is kept in data_dir.
    On the very first start an 'admin' user is created with
    $JOBDECK_ADMIN_PASSWORD or a generated password, printed once.
    """
    _main(http=True, slots=lambda config: config.worker_slots)


@cli.command()
@config_option
def serve() -> None:
    """Run the HTTP API server only (workers run elsewhere).

    Without mongo_url it uses the embedded database of data_dir if one runs
    (e.g. 'jobdeck db' in another terminal), else starts one; the last jobdeck
    process using it stops it.
    """
    _main(http=True, slots=lambda config: None)


@cli.command()
@click.option("--slots", type=click.IntRange(1, 1024), help="Jobs to run at once [default: worker_slots].")
@click.option("--tag", "tags", multiple=True, metavar="TAG",
              help="A tag of this worker (repeat for more) [default: worker_tags]: it runs jobs requiring "
                   "only tags it has.")
@click.option("--pool", help="The worker's pool [default: worker_pool].")
@click.option("--max-running", type=click.IntRange(1), help="At most this many jobs running across the workers "
              "of the pool [default: max_running, none].")
@config_option
def worker(slots: int | None, tags: tuple[str, ...], pool: str | None, max_running: int | None) -> None:
    """Run a worker: claim jobs and run each in its own child process.

    SIGTERM (or Ctrl-C) stops claiming and lets running jobs finish within
    shutdown_grace_seconds; the rest go back to pending without using an
    attempt. A second signal stops them at once.
    """
    changes: dict[str, Any] = {name: value for name, value in
                               (("worker_pool", pool), ("max_running", max_running)) if value is not None}
    if tags:
        try:
            changes["worker_tags"] = flow.check_tags(list(tags), "--tag")
        except BadArgument as exc:
            raise click.BadParameter(str(exc), param_hint="--tag") from None
    if pool is not None:
        try:
            flow.check_tags([pool], "--pool")
        except BadArgument as exc:
            raise click.BadParameter(str(exc), param_hint="--pool") from None
    _main(http=False, slots=lambda config: slots or config.worker_slots, changes=changes)


@cli.command()
@config_option
def db() -> None:
    """Run the embedded database in the foreground and print its URL.

    Other jobdeck commands with the same data_dir find and use it. Ctrl-C or
    SIGTERM stops it, unless another jobdeck process (a worker, a server)
    still uses it: then it is left running for them, and the last of them to
    exit stops it. Refuses to start if the data_dir's database already runs.
    """
    config = load_config()
    setup_logging(config)
    stopping: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda sig, _frame: stopping.append(sig))
    with shared_server(config.data_dir, exclusive=True) as shared:
        click.echo(shared.url)
        click.echo(f"embedded database running (pid {shared.pid}, data in {config.data_dir}); "
                   "Ctrl-C stops it", err=True)
        while not stopping and shared.is_running():
            time.sleep(0.2)
        if not stopping:
            raise DatabaseUnavailable(f"the embedded database stopped; see {config.data_dir}/secantusd.log")
    if shared.left_running_for:
        click.echo(f"the embedded database keeps running for {', '.join(shared.left_running_for)}; "
                   "the last of them to exit stops it", err=True)
