"""Job commands: enqueue, queue, journal, show, follow, log, kill, restart, remove, jobs, stats, workers.

They act on MongoDB directly through the same core functions as the HTTP
API, as an admin operator (``cli:<login>`` in the audit trail).
"""
from __future__ import annotations

import contextlib
import json
import sys
from datetime import datetime, timedelta
from typing import Any, AsyncIterator

import click
from pymongo.errors import PyMongoError

from core import counts, journal, logs, queue, registry, retention, stats
from core.config import Config
from core.db import Database
from core.encoding import dumps
from core.errors import BadArgument, JobdeckError
from core.follow import Event, follow, wait_for
from core.hub import Hub
from jobdeck.command import actor, cli, config_option, load_config, run_with_database
from jobdeck.follow import Printer, exit_code
from jobdeck.output import cell, print_json, print_table

__all__ = ["parse_job_args"]

_JOB_COLUMNS = ["_id", "qual_name", "state", "priority", "trial", "attempts_left", "progress", "enqueued_at"]
_JOURNAL_COLUMNS = ["_id", "qual_name", "state", "trial", "runtime", "finished_at", "removed"]


def _user() -> dict[str, Any]:
    return queue.operator(actor())


def parse_job_args(items: tuple[str, ...], entry: dict[str, Any]) -> dict[str, Any]:
    """Job arguments from one JSON object, or ``NAME=VALUE`` pairs read by the schema of the
    registry ``entry`` (``registry.args_from_text``)."""
    if len(items) == 1 and items[0].lstrip().startswith("{"):
        try:
            value = json.loads(items[0])
        except ValueError as exc:
            raise BadArgument(f"job arguments are not valid JSON: {exc}") from None
        if not isinstance(value, dict):
            raise BadArgument("job arguments must be a JSON object")
        return value
    texts: dict[str, str] = {}
    for item in items:
        key, eq, text = item.partition("=")
        if not eq or not key:
            raise BadArgument(f"bad job argument {item!r}: expected NAME=VALUE (or one JSON object)")
        texts[key] = text
    return registry.args_from_text(entry, texts)


async def _register(db: Database, config: Config) -> registry.Discovery:
    """Register the classes of the configured job packages, offering none (see ``core.registry``).

    So that an enqueue never depends on a worker having started first. Prints
    the job modules that cannot be imported here; a failed write is only a
    warning (the registry is used as it is).
    """
    found = registry.discover(config.job_packages, paths=config.job_paths, log_errors=False)
    for failure in found.import_errors:
        click.echo(f"warning: cannot import job module {failure['module']}: {failure['error']}", err=True)
    try:
        await registry.sync(db, found)
    except PyMongoError as exc:
        click.echo(f"warning: cannot register the job classes found here ({exc}); "
                   "using the registry as it is", err=True)
    return found


def _row(job: dict[str, Any]) -> dict[str, Any]:
    prog = job.get("prog") or {}
    return {**job, "progress": f"{(prog.get('value') or 0) * 100:.0f}%",
            "enqueued_at": (job.get("enqueued") or {}).get("at"),
            "removed": bool(job.get("removed_at"))}


@contextlib.asynccontextmanager
async def _hub(db: Database) -> AsyncIterator[Hub]:
    """A change-stream hub for this command's duration."""
    hub = Hub(db)
    await hub.start()
    try:
        yield hub
    finally:
        await hub.stop()


async def _follow(db: Database, job_id: Any, *, as_json: bool) -> str:
    """Follow a job to its end, printing for people (or nothing with ``as_json``); return the final state."""
    printer = Printer()
    final = "error"
    async with _hub(db) as hub:
        async for event in follow(db, job_id, user=_user(), hub=hub):
            if event is None:
                continue
            if event.kind == "close":
                final = event.data["state"]
            if not as_json:
                printer.show(event)
    return final


_option_flags = [
    click.option("--attempts", type=int, help="Starts allowed before the job ends 'error'."),
    click.option("--priority", type=int, help="Higher runs first."),
    click.option("--wall-time", type=float, help="Seconds a run may take before it is killed."),
    click.option("--error-time", type=float, help="Seconds before a failed job is retried."),
    click.option("--defer-time", type=float, help="Seconds before a deferred job runs again."),
    click.option("--defer-max", type=float, help="Seconds after the first start when deferring ends 'inactive'."),
    click.option("--max-parallel", type=int, help="At most this many jobs of the class run at once, everywhere."),
    click.option("--require", "requires", multiple=True, metavar="TAG",
                 help="A worker tag the job needs (repeat for more): only workers with all of them run it."),
]


def _with(options: list[Any]):
    def decorate(command: Any) -> Any:
        for option in reversed(options):
            command = option(command)
        return command
    return decorate


@cli.command()
@click.argument("qual_name", required=False)
@click.argument("args", nargs=-1)
@_with(_option_flags)
@click.option("--in", "delay", type=float, metavar="SECONDS",
              help="Start no earlier than SECONDS from now (the first start only).")
@click.option("--at", "run_at", metavar="TIME",
              help="Start no earlier than TIME, ISO 8601; without a zone UTC (the first start only).")
@click.option("--from", "source", type=click.File("r", encoding="utf-8"), metavar="FILE",
              help="Enqueue the jobs of FILE ('-': stdin), one JSON object a line: "
                   '{"qual_name": ..., "args": {...}, <options>}. Prints their ids.')
@click.option("--follow", "-f", "follow_", is_flag=True,
              help="Show progress and log lines until the job ends; the exit code says how it ended.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the job as JSON (at its end with --follow); with --from a list of the ids.")
@click.option("--key", metavar="KEY",
              help="Idempotency key: an enqueue with a KEY used within idempotency_hours enqueues nothing "
                   "and prints the first job (other arguments: an error naming it).")
@config_option
def enqueue(qual_name: str | None, args: tuple[str, ...], follow_: bool, as_json: bool, source: Any,
            key: str | None, **options: Any) -> None:
    """Enqueue job QUAL_NAME with ARGS (NAME=VALUE pairs, or one JSON object); or the jobs of a file.

    \b
    Examples:
      jobdeck enqueue jobs.example.DummyJob sleep=2 --follow
      jobdeck enqueue jobs.example.DummyJob '{"sleep": 2, "message": "hi"}' --priority 5
      jobdeck enqueue jobs.example.DummyJob --in 600
      jobdeck enqueue jobs.example.DummyJob sleep=2 --key nightly-2026-11-24
      jobdeck enqueue --from jobs.jsonl

    With --from, every line is read first (a line that is not a JSON object
    enqueues nothing); then they go in batches of 1,000, each all or none. A
    refused line stops there: the batches before it stay enqueued (their ids
    are printed), nothing from its batch on is. The option flags, --in and
    --at apply to every line that does not set them itself.

    With --key, a second enqueue with the same KEY (by the same operator)
    within idempotency_hours enqueues nothing: it prints the first job's id
    (or follows it) and says on stderr that it was a repeat; with other
    arguments or options it fails naming the first job.
    """
    given = {k: list(v) if isinstance(v, tuple) else v for k, v in options.items() if v is not None and v != ()}
    if source is not None:
        if qual_name is not None or follow_ or key is not None:
            raise click.UsageError("--from takes neither QUAL_NAME, ARGS, --follow nor --key")
        _enqueue_from(source, given, as_json)
        return
    if qual_name is None:
        raise click.UsageError("give QUAL_NAME, or --from FILE")

    config = load_config()

    async def work(db: Database) -> tuple[dict[str, Any], str | None]:
        await _register(db, config)
        job_args = parse_job_args(args, await registry.get_valid(db, qual_name))
        if key is None:
            job = await queue.enqueue(db, qual_name, job_args, user=_user(), **given)
        else:
            job, new = await queue.enqueue_keyed(db, key, qual_name, job_args, user=_user(),
                                                 keep=timedelta(hours=config.idempotency_hours), **given)
            if not new:
                click.echo(f"key {key!r} was used already within idempotency_hours: job {job['_id']}; "
                           "nothing enqueued", err=True)
        if not follow_:
            return job, None
        final = await _follow(db, job["_id"], as_json=as_json)
        return await queue.get(db, job["_id"], user=_user()), final

    job, final = run_with_database(config, work)
    if as_json:
        print_json(job)
    elif not follow_:
        click.echo(str(job["_id"]))
    if final is not None:
        sys.exit(exit_code(final))


def _read_lines(source: Any, defaults: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    """(line number, job) of each non-blank line of ``source``, the flags' ``defaults`` filled in.

    Raises ``BadArgument`` naming the first line that is not a JSON object.
    """
    start = {"delay", "run_at"}
    read = []
    for number, line in enumerate(source, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError as exc:
            raise BadArgument(f"line {number}: not valid JSON: {exc}") from None
        if not isinstance(item, dict):
            raise BadArgument(f"line {number}: expected a JSON object, got {type(item).__name__}")
        kept = {k: v for k, v in defaults.items() if k not in item and not (k in start and start & item.keys())}
        read.append((number, {**kept, **item}))
    return read


def _enqueue_from(source: Any, defaults: dict[str, Any], as_json: bool) -> None:
    """``enqueue --from``: the jobs of ``source`` in batches of ``queue.MAX_BATCH``; print their ids."""
    lines = _read_lines(source, defaults)
    config = load_config()
    written: list[str] = []

    async def work(db: Database) -> None:
        await _register(db, config)
        for first in range(0, len(lines), queue.MAX_BATCH):
            batch = lines[first:first + queue.MAX_BATCH]
            try:
                jobs = await queue.enqueue_many(db, [item for _, item in batch], user=_user())
            except JobdeckError as exc:
                index = exc.details.get("index")
                if not isinstance(index, int):
                    raise
                message = str(exc).removeprefix(f"jobs[{index}]: ")
                kept = f"; the {len(written)} jobs of the lines before line {batch[0][0]} are enqueued" \
                    if written else "; nothing was enqueued"
                raise type(exc)(f"line {batch[index][0]}: {message}{kept}") from None
            ids = [str(job["_id"]) for job in jobs]
            written.extend(ids)
            if not as_json:
                click.echo("\n".join(ids))

    try:
        run_with_database(config, work)
    finally:
        if as_json:
            print_json(written)


_list_options = [
    click.option("--state", help="Only these states (comma-separated)."),
    click.option("--search", help="qual_name contains this; '*' and '?' are wildcards."),
    click.option("--filter", "filter_", help='A MongoDB-style filter as JSON, e.g. \'{"priority": {"$gt": 0}}\'.'),
    click.option("--sort", help="Sort fields, '-' for descending, e.g. '-priority,_id'."),
    click.option("--page", type=int, default=0, show_default=True, help="0-based; -1 is the last page."),
    click.option("--per-page", type=int, default=50, show_default=True),
    click.option("--json", "as_json", is_flag=True, help="Print the page as JSON."),
]
# An empty cursor is none, as in the HTTP API: a script starts its loop with an empty one.
_cursor_options = [
    click.option("--after", metavar="CURSOR", callback=lambda _ctx, _param, value: value or None,
                 help="The page after this cursor (the 'next' a page printed, on stderr or in --json)."),
    click.option("--before", metavar="CURSOR", callback=lambda _ctx, _param, value: value or None,
                 help="The page before this cursor (the 'prev' a page printed)."),
]


def _parse_filter(text: str | None) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise BadArgument(f"--filter is not valid JSON: {exc}") from None


def _print_page(page: Any, columns: list[str], as_json: bool) -> None:
    if as_json:
        _print_page_json(page)
        return
    print_table([_row(job) for job in page.items], columns)
    _print_footer(page, "jobs")


def _print_page_json(page: Any) -> None:
    """The page as one JSON document, as the HTTP API's paginated replies (``items``, ``next``, ``prev``...)."""
    print_json({**page.envelope_fields(), "items": page.items})


def _print_footer(page: Any, noun: str) -> None:
    """On stderr: where the page is, and the options that show the pages after and before it."""
    number = "?" if page.page is None else page.page + 1 if page.page_count else 0
    total = f"{page.total_count}{'' if page.total_exact else '+'}"
    click.echo(f"page {number} of {page.page_count}{'' if page.total_exact else '+'}, "
               f"{page.count} of {total} {noun}", err=True)
    for name, cursor in (("next", page.next), ("prev", page.prev)):
        if cursor:
            click.echo(f"{name}: --{'after' if name == 'next' else 'before'} {cursor}", err=True)


@cli.command("queue")
@_with(_list_options + _cursor_options)
@config_option
def queue_(state: str | None, search: str | None, filter_: str | None, sort: str | None,
           page: int, per_page: int, as_json: bool, after: str | None, before: str | None) -> None:
    """List live jobs (pending, running, deferred, failed), next to run first."""
    found = run_with_database(load_config(), lambda db: journal.list_queue(
        db, user=_user(), filter=_parse_filter(filter_), state=state, search=search, sort=sort,
        page=page, per_page=per_page, after=after, before=before))
    _print_page(found, _JOB_COLUMNS, as_json)


@cli.group("journal", invoke_without_command=True)
@_with(_list_options + _cursor_options)
@click.option("--qual-name", help="Only this job class.")
@click.option("--since", type=click.DateTime(["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"]),
              help="Finished at or after (UTC).")
@click.option("--until", type=click.DateTime(["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"]),
              help="Finished before (UTC).")
@config_option
@click.pass_context
def journal_(ctx: click.Context, state: str | None, search: str | None, filter_: str | None, sort: str | None,
             page: int, per_page: int, as_json: bool, qual_name: str | None,
             since: datetime | None, until: datetime | None, after: str | None, before: str | None) -> None:
    """List finished jobs, newest first; 'jobdeck journal export' archives them."""
    if ctx.invoked_subcommand:
        return
    found = run_with_database(load_config(), lambda db: journal.list_journal(
        db, user=_user(), filter=_parse_filter(filter_), state=state, qual_name=qual_name,
        search=search, since=since, until=until, sort=sort, page=page, per_page=per_page, after=after,
        before=before))
    _print_page(found, _JOURNAL_COLUMNS, as_json)


_DATE = click.DateTime(["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"])


@journal_.command("export")
@click.option("--until", type=_DATE, required=True, help="Finished before (UTC).")
@click.option("--since", type=_DATE, help="Finished at or after (UTC) [default: the first].")
@click.option("--output", "-o", type=click.File("w", encoding="utf-8", lazy=True), default="-",
              show_default=True, help="File to write ('-': stdout).")
@click.option("--with-logs", is_flag=True, help="Follow each job by its log records, one a line.")
@config_option
def export_(until: datetime, since: datetime | None, output: Any, with_logs: bool) -> None:
    """Write finished jobs as JSON lines, oldest first, to archive them (see journal_retention_days).

    One job a line, as --json prints it (ids as hex, times ISO-8601 UTC). With
    --with-logs each job line is followed by its log records in seq order, one
    a line: a line with "_id" is a job, a line with "job_id" and "seq" a
    record of the job above it. Streams: memory stays bounded.

    \b
    Example:
      jobdeck journal export --until 2026-01-01 --with-logs -o journal-2025.jsonl
    """
    async def work(db: Database) -> int:
        count = 0
        async for document in retention.export(db, until=until, since=since, with_logs=with_logs):
            count += "_id" in document
            output.write(dumps(document) + "\n")
        return count

    count = run_with_database(load_config(), work)
    output.flush()
    click.echo(f"exported {count} jobs", err=True)


@cli.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print the job as JSON.")
@config_option
def show(job_id: str, as_json: bool) -> None:
    """Show one job, live or finished, with its result or error."""
    config = load_config()
    job = run_with_database(config, lambda db: queue.get(db, job_id, user=_user(),
                                                         lease_seconds=config.lease_seconds))
    if as_json:
        print_json(job)
        return
    enqueued = job.get("enqueued") or {}
    lines = [
        ("id", job["_id"]), ("qual_name", job["qual_name"]), ("state", job["state"]),
        ("journal", job["journal"]), ("args", json.dumps(job.get("args") or {})),
        ("priority", job["priority"]), ("trial", f"{job['trial']} (attempts left {job['attempts_left']})"),
        ("enqueued", f"{cell(enqueued.get('at'))} by {enqueued.get('username')} on {enqueued.get('hostname')}"),
        ("parent_id", enqueued.get("parent_id")), ("child_id", enqueued.get("child_id")),
        ("started_at", job.get("started_at")), ("finished_at", job.get("finished_at")),
        ("runtime", f"{job['runtime']:.3f} s" if job.get("runtime") is not None else None),
        ("progress", f"{(job.get('prog') or {}).get('value', 0) * 100:.0f}% {(job.get('prog') or {}).get('message') or ''}"),
        ("worker", (job.get("locked") or {}).get("worker")),
        ("limits", ", ".join(filter(None, [f"max_parallel {job['max_parallel']}" if job.get("max_parallel") else "",
                                          f"requires {', '.join(job['requires'])}" if job.get("requires") else ""]))
         or None),
        ("waiting for", "; ".join(job.get("waiting_for") or []) or None),
        ("killed_at", job.get("killed_at")), ("removed_at", job.get("removed_at")),
    ]
    if job.get("result") is not None:
        lines.append(("result", json.dumps(job["result"])))
    for name, value in lines:
        click.echo(f"{name + ':':<13}{cell(value)}")
    error = job.get("last_error") or {}
    if error:
        click.echo(f"{'last_error:':<13}{error.get('exception')}: {error.get('message')}")
        if error.get("traceback"):
            click.echo(error["traceback"].rstrip())


@cli.command("follow")
@click.argument("job_id")
@config_option
def follow_(job_id: str) -> None:
    """Follow a job: progress bar and log lines until it ends; the exit code says how.

    Exit codes: 0 complete, 1 error, 3 killed, 4 inactive, 5 removed.
    """
    final = run_with_database(load_config(), lambda db: _follow(db, job_id, as_json=False))
    sys.exit(exit_code(final))


@cli.command("log")
@click.argument("job_id")
@click.option("--follow", "-f", "follow_", is_flag=True, help="Keep printing new lines until the job ends.")
@click.option("--json", "as_json", is_flag=True,
              help="Print records as JSON lines; a page as one JSON document.")
@click.option("--page", type=int, help="Only this page of records (0-based; -1 is the last).")
@click.option("--per-page", type=int, help="Records a page [default: 100].")
@_with(_cursor_options)
@config_option
def log_(job_id: str, follow_: bool, as_json: bool, page: int | None, per_page: int | None, after: str | None,
         before: str | None) -> None:
    """Print a job's log: all of it, or one page of it.

    With --page, --per-page, --after or --before only that page is printed,
    and then, on stderr, the options that print the pages after and before
    it (--after CURSOR, --before CURSOR); --json prints the page as one
    document with "items", "next" and "prev", as GET /job/log/ID replies.
    """
    ctx = click.get_current_context()
    # Given, even empty: a script's loop over the pages starts with an empty cursor.
    paged = any(ctx.get_parameter_source(name) == click.ParameterSource.COMMANDLINE
                for name in ("page", "per_page", "after", "before"))
    if follow_ and paged:
        raise click.UsageError("--follow prints the whole log: it takes no --page, --per-page, --after or --before")

    async def work(db: Database) -> Any:
        job = await queue.get(db, job_id, user=_user())
        if paged:
            return await logs.page(db, job["_id"], page=page or 0, per_page=per_page or 100, after=after,
                                   before=before)
        if follow_:
            async with _hub(db) as hub:
                async for event in follow(db, job["_id"], user=_user(), hub=hub, states=False):
                    if event is not None and event.kind == "log":
                        _print_record(event.data, as_json)
            return
        seq = 0
        while records := await logs.read(db, job["_id"], after=seq):
            for record in records:
                _print_record(record, as_json)
            seq = records[-1]["seq"]

    found = run_with_database(load_config(), work)
    if not paged:
        return
    if as_json:
        _print_page_json(found)
        return
    for record in found.items:
        _print_record(record, False)
    _print_footer(found, "records")


def _print_record(record: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(dumps(record))  # ids as hex, times as ISO-8601 UTC, like every --json
        return
    Printer(show_states=False).show(Event("log", "", record))


class _Unfinished(str):
    """A report line saying that an action was requested but has not taken effect yet."""


def _each(ids: tuple[str, ...], action: Any) -> None:
    """Apply ``action(db, id)`` to each id and report each.

    Exits 1 if any failed, else 2 if any is still under way when the wait
    ended (an ``_Unfinished`` report), else 0.
    """
    async def work(db: Database) -> int:
        code = 0
        for job_id in ids:
            try:
                report = await action(db, job_id)
            except JobdeckError as exc:
                click.echo(f"{job_id}: {exc}", err=True)
                code = 1
                continue
            click.echo(report)
            if isinstance(report, _Unfinished) and not code:
                code = 2
        return code

    code = run_with_database(load_config(), work)
    if code:
        sys.exit(code)


async def _await_end(db: Database, job_id: Any, timeout: float) -> dict[str, Any]:
    """The job once it has ended (or as it is after ``timeout`` seconds)."""
    async with _hub(db) as hub:
        return await wait_for(db, job_id, user=_user(), hub=hub, done=lambda job: job["journal"],
                              timeout=timeout)


def _stop_timeout() -> float:
    """How long a running job may take to stop: its kill grace, or its lease if its worker died."""
    config = load_config()
    return config.kill_grace_seconds + config.lease_seconds


def _stopper(stop: Any, verb: str, wait: float | None):
    """An action that kills or removes a job and, unless ``wait`` is None, waits that long for its end."""
    async def action(db: Database, job_id: str) -> str:
        job = await stop(db, job_id, user=_user())
        if wait is not None and job["state"] != "killed":
            job = await _await_end(db, job["_id"], timeout=wait)
        if job["state"] == "killed":
            return f"{job['_id']}: {verb}"
        if wait is None:
            return f"{job['_id']}: {verb} requested ({job['state']})"
        return _Unfinished(f"{job['_id']}: {verb} requested, but it is still {job['state']} after {wait:g} s")
    return action


@cli.command()
@click.argument("job_ids", nargs=-1, required=True)
@click.option("--no-wait", is_flag=True, help="Return once the kill is requested.")
@config_option
def kill(job_ids: tuple[str, ...], no_wait: bool) -> None:
    """Kill live jobs; waits until running ones have stopped (exit code 2 if one has not)."""
    _each(job_ids, _stopper(queue.kill, "killed", None if no_wait else _stop_timeout()))


@cli.command()
@click.argument("job_ids", nargs=-1, required=True)
@click.option("--no-wait", is_flag=True, help="Return once the removal is requested.")
@config_option
def remove(job_ids: tuple[str, ...], no_wait: bool) -> None:
    """Remove live jobs (journaled as killed, flagged removed); exit code 2 if a running one has not stopped."""
    _each(job_ids, _stopper(queue.remove, "removed", None if no_wait else _stop_timeout()))


@cli.command()
@click.argument("job_ids", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True,
              help='Print one JSON object per job: {"restarted": OLD_ID, "_id": ID_THAT_WILL_RUN, "state": ...}.')
@config_option
def restart(job_ids: tuple[str, ...], as_json: bool) -> None:
    """Restart jobs: failed/deferred ones now (same id); killed/error/inactive ones as a new job.

    Prints OLD_ID -> ID_THAT_WILL_RUN for each; exit code 1 if one could not be restarted.
    """
    async def action(db: Database, job_id: str) -> str:
        job = await queue.restart(db, job_id, user=_user())
        if as_json:
            return dumps({"restarted": job_id, "_id": job["_id"], "state": job["state"]})
        return f"{job_id} -> {job['_id']}"

    _each(job_ids, action)


@cli.command("jobs")
@click.option("--all", "show_all", is_flag=True, help="Also list jobs no process offers any more.")
@click.option("--json", "as_json", is_flag=True, help="Print the registry as JSON.")
@config_option
def jobs_(show_all: bool, as_json: bool) -> None:
    """List the jobs that can be enqueued, with their arguments and the live workers that run them.

    WORKERS 'none': no live worker has the class; its jobs wait until one
    comes. Job modules that cannot be imported, here or by a live worker, are
    named on stderr.
    """
    config = load_config()

    async def work(db: Database) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        await _register(db, config)
        entries = await registry.list_entries(db, valid_only=not show_all, lease_seconds=config.lease_seconds)
        return entries, await registry.worker_import_errors(db, config.lease_seconds)

    entries, broken = run_with_database(config, work)
    for failure in broken:
        click.echo(f"warning: worker {failure['worker']} cannot import job module {failure['module']}: "
                   f"{failure['error']}", err=True)
    if as_json:
        print_json(entries)
        return
    rows = [{"qual_name": e["_id"], "valid": e["valid"], "arguments": ", ".join(
        f"{p['name']}: {p['type']}" + ("" if p["required"] else f" = {json.dumps(p.get('default'))}")
        for p in e["schema"]["params"]), "doc": (e.get("doc") or "").split("\n")[0],
        "workers": ", ".join(worker["id"] for worker in e["workers"]) or "none",
        "paused": "yes" if e.get("paused") else ""} for e in entries]
    paused = ["paused"] if any(row["paused"] for row in rows) else []
    print_table(rows, ["qual_name", "arguments", "workers", *paused, "doc"] + (["valid"] if show_all else []))


@cli.command("stats")
@click.option("--json", "as_json", is_flag=True, help="Print the statistics as JSON.")
@click.option("--rebuild", is_flag=True, help="Recount every job first (reads the queue and the journal in full).")
@config_option
def stats_(as_json: bool, rebuild: bool) -> None:
    """Counts per state and class, oldest pending job, running per worker, throughput."""
    config = load_config()

    async def work(db: Any) -> dict[str, Any]:
        if rebuild:
            totals = await counts.rebuild(db)
            click.echo(f"recounted {sum(totals.values())} jobs", err=True)
        return await stats.stats(db, user=_user(), lease_seconds=config.lease_seconds)

    found = run_with_database(config, work)
    if as_json:
        print_json(found)
        return
    click.echo("queue:    " + "  ".join(f"{k} {v}" for k, v in found["queue"].items()))
    click.echo("journal:  " + "  ".join(f"{k} {v}" for k, v in found["journal"].items()))
    if found["classes"]:
        states = [state for state in (*found["queue"], *found["journal"])
                  if any(state in figures for figures in found["classes"].values())]
        print_table([{"qual_name": name, **{state: figures.get(state, 0) for state in states}}
                     for name, figures in found["classes"].items()], ["qual_name", *states])
    oldest = found["oldest_pending_seconds"]
    click.echo(f"oldest pending: {f'{oldest:.1f} s' if oldest is not None else '-'}")
    paused = found["paused"]
    if paused["all"] or paused["classes"]:
        click.echo("paused: " + ", ".join((["the whole queue"] if paused["all"] else []) + paused["classes"]))
    for group in found["unrunnable"]:
        click.echo(f"waiting: {group['jobs']} jobs requiring {', '.join(group['requires'])}: {group['reason']}")
    click.echo(f"workers alive: {found['workers_alive']}")
    for worker, count in found["running_per_worker"].items():
        click.echo(f"  {worker}: {count} running")
    rate = found["finished_per_minute"]
    click.echo(f"finished: {rate['last_minute']} in the last minute, {rate['last_hour']}/min over the last hour")


@cli.command("workers")
@click.option("--json", "as_json", is_flag=True, help="Print the workers as JSON.")
@config_option
def workers_(as_json: bool) -> None:
    """List workers with their heartbeat and running jobs."""
    config = load_config()
    found = run_with_database(config, lambda db: stats.workers(
        db, user=_user(), lease_seconds=config.lease_seconds))
    if as_json:
        print_json(found)
        return
    print_table(found, ["_id", "alive", "slots", "running", "tags", "heartbeat", "started"])
