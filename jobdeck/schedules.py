"""Schedule commands: ``jobdeck schedule add|list|show|pause|resume|remove``.

They act on MongoDB directly through the same core functions as the HTTP
API, as an admin operator (``cli:<login>`` in the audit trail; the ticks of a
schedule added here are enqueued as that operator).
"""
from __future__ import annotations

from typing import Any

import click

from core import queue, registry, schedules
from core.config import Config
from core.db import Database
from core.job import OPTIONS
from jobdeck.command import actor, cli, config_option, load_config, run_with_database
from jobdeck.jobs import parse_job_args
from jobdeck.output import print_json, print_table

__all__ = ["schedule"]

_COLUMNS = ["_id", "qual_name", "cron", "tz", "enabled", "source", "next_run", "last_tick", "last_job_id"]


def _user() -> dict[str, Any]:
    return queue.operator(actor())


async def _register(db: Database, config: Config) -> None:
    """Register the classes found here (offering none), as ``jobdeck enqueue`` does, and sync class schedules.

    So that a class is known, and its schedule listed, before a server ran.
    """
    found = registry.discover(config.job_packages, paths=config.job_paths, log_errors=False)
    for failure in found.import_errors:
        click.echo(f"warning: cannot import job module {failure['module']}: {failure['error']}", err=True)
    await registry.sync(db, found)
    await schedules.sync_classes(db)


def _option_flags(command: Any) -> Any:
    """``--attempts``, ``--priority``, ... : one flag per enqueue option (``core.job.OPTIONS``)."""
    for name in reversed(OPTIONS):
        flag = "--" + name.replace("_", "-")
        limits = queue.OPTION_LIMITS.get(name)
        if limits is None:  # a list option: worker tags
            command = click.option(flag, name, multiple=True, metavar="TAG",
                                   help=f"Enqueue option {name} (repeat for more).")(command)
        else:
            command = click.option(flag, name, type=int if limits[0] is int else float,
                                   help=f"Enqueue option {name} (default: the job class's).")(command)
    return command


def _show(schedule: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(schedule)
        return
    for key in ("_id", "qual_name", "cron", "tz", "args", "options", "enabled", "catch_up", "overlap", "source",
                "acts_as", "next_run", "last_tick", "last_job_id", "last_skip", "error"):
        value = schedule.get(key)
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
        click.echo(f"{key + ':':13} {'-' if value is None else value}")


@cli.group()
def schedule() -> None:
    """Schedules: jobs enqueued at each tick of a cron, exactly once per tick.

    \b
    Examples:
      jobdeck schedule add jobs.example.DummyJob '*/5 * * * *' sleep=1
      jobdeck schedule add jobs.example.DummyJob '0 3 * * *' --tz Europe/Berlin
      jobdeck schedule add jobs.example.DummyJob '* * * * * */10'   (every 10 s)
      jobdeck schedule list
      jobdeck schedule pause ID

    A sixth cron field is the second. A server ('jobdeck serve' or 'up')
    enqueues the ticks; class schedules (a job class's schedule attribute)
    are listed with source 'class'.
    """


@schedule.command("add")
@click.argument("qual_name")
@click.argument("cron")
@click.argument("args", nargs=-1)
@click.option("--tz", default="UTC", show_default=True, help="IANA time zone the cron is read in.")
@click.option("--catch-up", type=click.Choice(schedules.CATCH_UPS), default="latest", show_default=True,
              help="Ticks missed while no scheduler ran: one job for the latest, none, or all (at most 100).")
@click.option("--overlap", type=click.Choice(schedules.OVERLAPS), default="skip", show_default=True,
              help="A tick while the previous job is still live: skip it (recorded) or queue it.")
@click.option("--paused", is_flag=True, help="Add it paused ('jobdeck schedule resume' starts it).")
@_option_flags
@click.option("--json", "as_json", is_flag=True, help="Print the schedule as JSON.")
@config_option
def add(qual_name: str, cron: str, args: tuple[str, ...], tz: str, catch_up: str, overlap: str, paused: bool,
        as_json: bool, **options: Any) -> None:
    """Add a schedule of job QUAL_NAME at CRON with ARGS (NAME=VALUE pairs, or one JSON object); print its id."""
    given = {name: value for name, value in options.items() if value is not None and value != ()}
    if "requires" in given:
        given["requires"] = list(given["requires"])
    config = load_config()

    async def work(db: Database) -> dict[str, Any]:
        await _register(db, config)
        entry = await registry.get_valid(db, qual_name)
        return await schedules.add(db, user=_user(), qual_name=qual_name, cron=cron,
                                   args=parse_job_args(args, entry), tz=tz, enabled=not paused, catch_up=catch_up,
                                   overlap=overlap, **given)

    made = run_with_database(config, work)
    if as_json:
        print_json(made)
    else:
        click.echo(made["_id"])


@schedule.command("list")
@click.option("--search", help="qual_name contains this; '*' and '?' are wildcards.")
@click.option("--page", type=int, default=0, show_default=True, help="0-based; -1 is the last page.")
@click.option("--per-page", type=int, default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the schedules as JSON.")
@config_option
def list_(search: str | None, page: int, per_page: int, as_json: bool) -> None:
    """List the schedules with their next run, last tick and its job."""
    config = load_config()

    async def work(db: Database) -> Any:
        await _register(db, config)
        return await schedules.list_page(db, user=_user(), search=search, page=page, per_page=per_page)

    listed = run_with_database(config, work)
    if as_json:
        print_json(listed.items)
        return
    print_table(listed.items, _COLUMNS)
    if listed.page_count > 1:
        click.echo(f"page {listed.page} of {listed.page_count} ({listed.total_count} schedules)", err=True)


@schedule.command("show")
@click.argument("schedule_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print the schedule as JSON.")
@config_option
def show(schedule_id: str, as_json: bool) -> None:
    """Show schedule ID."""
    _show(run_with_database(load_config(), lambda db: schedules.get(db, schedule_id, user=_user())), as_json)


def _control(name: str, action: Any, summary: str) -> None:
    @schedule.command(name, help=summary)
    @click.argument("schedule_id", metavar="ID")
    @click.option("--json", "as_json", is_flag=True, help="Print the schedule as JSON.")
    @config_option
    def command(schedule_id: str, as_json: bool) -> None:
        done = run_with_database(load_config(), lambda db: action(db, schedule_id, user=_user()))
        if as_json:
            print_json(done)
        else:
            click.echo(f"{done['_id']} {name}d" if name != "remove" else f"{done['_id']} removed")


_control("pause", schedules.pause, "Pause schedule ID (class schedules too): no tick is enqueued until resumed.")
_control("resume", schedules.resume, "Resume schedule ID: ticks from now on are enqueued (the pause is not caught up).")
_control("remove", schedules.remove, "Remove schedule ID (its jobs stay; class schedules cannot be removed).")
