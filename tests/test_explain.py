"""Every query jobdeck sends is served by an index, its sort too.

The queries are not listed here: they are recorded (PyMongo command
monitoring) while the API, the command line and a worker do their work:
login, enqueue, claim and run, kill, restart, remove, every listing, follow,
the journal sweep and export. Each recorded query shape is then explained on
the embedded server; a collection scan fails the test, naming the command
and its plan. A new query without an index fails it the same way.

What counts as an index scan is what the embedded server executes: when no
index serves a filter as a whole, it looks one top-level clause up alone and
filters the rest (as mongod's planner would also use an index on one clause
of an ``$and``). Its ``explain`` does not report that fallback (it says
``COLLSCAN``), so ``served`` explains the clauses one by one, exactly as the
server's executor tries them: top-level fields only, never the branches of a
top-level ``$and``/``$or`` (such a filter is a scan there).

A query with a sort must not sort in memory: a blocking ``SORT`` stage in its
winning plan fails the test too, unless MongoDB reads it in that order from an
index (``ordered_by``). The embedded server reports ``SORT`` for nearly every
sorted query with a filter: it walks an index in order only for a one-key sort
whose key is the whole filter, and otherwise sorts what the index bounds (a
keyset window: a page or so; for ``logs.last_seq`` a job's whole log). Those
are warned about, not failed. A sort that no index gives MongoDB either fails,
unless tolerated with a reason.
"""
from __future__ import annotations

import asyncio
import copy
import warnings
import dataclasses
import json
import os
from datetime import datetime, timedelta, timezone
from typing import Any, AsyncIterator

import httpx
import pytest
from bson import ObjectId
from click.testing import CliRunner
from pymongo import monitoring

import jobdeck.jobs  # noqa: F401  (registers the commands)
import jobdeck.users  # noqa: F401  (registers the commands)
from core import queue, registry, retention, users
from core.config import Config
from core.db import COLLECTIONS, Database
from core.worker import Worker
from handlers.app import Server
from jobdeck.cli import cli
from tests.conftest import wait_for

DUMMY = "jobs.example.DummyJob"
FAIL = "jobs.example.FailJob"
ADMIN = queue.operator("test")


class Recorder(monitoring.CommandListener):
    """Keeps a copy of every command that can read documents, sent to ``database``."""

    KINDS = {"find", "aggregate", "count", "distinct", "findAndModify", "update", "delete", "bulkWrite"}

    def __init__(self, database: str) -> None:
        self.database = database
        self.commands: list[dict[str, Any]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name in self.KINDS and (event.database_name == self.database
                                                 or event.command_name == "bulkWrite"):
            self.commands.append(copy.deepcopy(dict(event.command)))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def queries(command: dict[str, Any], database: str) -> list[tuple[str, dict[str, Any], dict[str, Any] | None]]:
    """``(collection, filter, sort)`` of each query inside ``command`` (none for a change stream or an insert)."""
    name = next(iter(command))
    if name == "bulkWrite":
        namespaces = [info["ns"].split(".", 1) for info in command["nsInfo"]]
        found = []
        for op in command["ops"]:
            kind = next((k for k in ("update", "delete") if k in op), None)
            if kind and namespaces[op[kind]][0] == database:
                found.append((namespaces[op[kind]][1], op.get("filter") or {}, None))
        return found
    collection = command[name]
    if name == "find":
        return [(collection, command.get("filter") or {}, command.get("sort"))]
    if name in ("count", "distinct"):
        return [(collection, command.get("query") or {}, None)]
    if name == "findAndModify":
        return [(collection, command.get("query") or {}, command.get("sort"))]
    if name == "update":
        return [(collection, update.get("q") or {}, None) for update in command["updates"]]
    if name == "delete":
        return [(collection, delete.get("q") or {}, None) for delete in command["deletes"]]
    pipeline = command.get("pipeline") or [{}]
    if "$changeStream" in pipeline[0]:
        return []
    match = pipeline[0].get("$match")
    after = pipeline[1] if match is not None and len(pipeline) > 1 else pipeline[0]
    return [(collection, match or {}, after.get("$sort"))]


def shape(value: Any) -> Any:
    """``value`` with its data replaced by type names: one explain per query shape."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list) and all(isinstance(item, dict) for item in value):
        return [shape(item) for item in value]  # the clauses of $and/$or
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return type(value).__name__


def stages(plan: dict[str, Any]) -> list[str]:
    """The stage names of a winning plan, root first."""
    names = [plan["stage"]]
    for child in [plan.get("inputStage")] + list(plan.get("inputStages") or []):
        if child:
            names += stages(child)
    return names


async def winning_plan(db: Database, collection: str, query: dict[str, Any],
                       sort: dict[str, Any] | None) -> dict[str, Any]:
    command: dict[str, Any] = {"find": collection, "filter": query}
    if sort:
        command["sort"] = sort
    reply = await db.db.command("explain", command, verbosity="queryPlanner")
    return reply["queryPlanner"]["winningPlan"]


async def served(db: Database, collection: str, query: dict[str, Any],
                 sort: dict[str, Any] | None) -> tuple[bool, dict[str, Any]]:
    """Whether an index serves the query on the embedded server, and the plan that says so."""
    plan = await winning_plan(db, collection, query, sort)
    if "COLLSCAN" not in stages(plan):
        return True, plan
    for field, clause in query.items():  # the executor's fallback: one top-level clause alone
        if field.startswith("$") or len(query) == 1:
            continue
        alone = await winning_plan(db, collection, {field: clause}, None)
        if "COLLSCAN" not in stages(alone):
            return True, {"by the clause": field, "plan": alone}
    return False, plan


#: Scans and sorts known and reported, each with why it is tolerated for now. Remove an entry once fixed.
TOLERATED = {
    # One document per job class: reading all of it is what these queries do.
    "registry": "the registry is one document per job class (no index on valid/offered_by)",
}
#: Scans of one query shape (collection, filter shape as ``shape`` gives it), with why each is tolerated.
SHAPES_TOLERATED = {
    ("counts", "{}"): "the job counts are one small document per job class: stats reads them all",
    ("count_changes", "{}"): "the counted changes not folded yet, about a second's worth: stats and the "
                              "folders read them all",
    ("slots", "{}"): "the concurrency slots taken now, at most the sum of the limits: the reaper checks them all "
                     "once a lease",
    ("audit", "{}"): "a numbered page of the whole audit trail (GET /audit?page=3) counts it exactly, as numbered "
                     "pages of every listing do; its first page and cursor pages count at most ten pages",
}
#: Sorts no index gives, by collection, sort and the fields of the filter (the permission filter's
#: ``qual_name`` aside), with why each is tolerated for now.
SORTS_TOLERATED: dict[tuple[str, tuple[tuple[str, int], ...], frozenset[str]], str] = {
    ("audit", (("at", -1), ("_id", -1)), frozenset({"action"})): (
        "a numbered page of an action prefix alone (action=job.*&page=3) sorts the prefix's entries in memory "
        "(MongoDB too: a range on action leads its index); first and cursor pages read windows of at"),
}


def tolerated(collection: str, query: dict[str, Any], sort: dict[str, Any] | None = None) -> str | None:
    """Why a scan (or, with ``sort``, an in-memory sort) of this query is tolerated (None: it is not)."""
    if collection in TOLERATED:
        return TOLERATED[collection]
    if sort is None and (reason := SHAPES_TOLERATED.get((collection, json.dumps(shape(query))))):
        return reason
    if sort is not None:
        return SORTS_TOLERATED.get((collection, tuple(sort.items()), frozenset(query) - {"qual_name"}))
    return None


def _bound(query: dict[str, Any], field: str) -> str | None:
    """How ``query`` bounds ``field`` on an index: ``point`` (one value, or a few: ``$in``), ``range``, or None."""
    if field not in query:
        return None
    condition = query[field]
    if not (isinstance(condition, dict) and any(key.startswith("$") for key in condition)):
        return "point"
    if set(condition) <= {"$eq", "$in"}:
        return "point"
    if set(condition) <= {"$gt", "$gte", "$lt", "$lte"}:
        return "range"
    return None


def ordered_by(key: list[tuple[str, int]], query: dict[str, Any], sort: dict[str, Any]) -> bool:
    """Whether MongoDB reads ``query`` in ``sort`` order from an index on ``key``, bounded by the query.

    The index's leading fields are held to one value each (or a few with
    ``$in``, whose scans MongoDB merges in order), the sort's keys follow in
    its order (or all reversed: the index walked backwards), and the query
    bounds the index's first field (else the walk reads the whole index).
    """
    wanted = [(field, int(direction)) for field, direction in sort.items()]
    fixed = 0
    while fixed < len(key) and key[fixed][0] not in sort and _bound(query, key[fixed][0]) == "point":
        fixed += 1
    rest = [(field, int(direction)) for field, direction in key[fixed:fixed + len(wanted)]]
    reversed_ = [(field, -direction) for field, direction in wanted]
    return rest in (wanted, reversed_) and _bound(query, key[0][0]) is not None


async def index_ordering(db: Database, collection: str, query: dict[str, Any],
                         sort: dict[str, Any]) -> str | None:
    """The name of an index from which MongoDB reads ``query`` in ``sort`` order (None: there is none)."""
    async for index in await db.db[collection].list_indexes():
        if ordered_by(list(index["key"].items()), query, sort):
            return index["name"]
    return None


@dataclasses.dataclass
class Finding:
    collection: str
    query: dict[str, Any]
    sort: dict[str, Any] | None
    plan: dict[str, Any]
    #: ``scan`` (no index serves the filter) or ``sort`` (the sort is done in memory).
    kind: str = "scan"

    def __str__(self) -> str:
        return (f"{self.kind}: {self.collection}: filter {json.dumps(shape(self.query))} "
                f"sort {json.dumps(self.sort)}\n    plan {json.dumps(self.plan, default=str)}")


async def scans(db: Database, recorded: list[dict[str, Any]]) -> tuple[list[Finding], int]:
    """The recorded query shapes that no index serves, or whose sort none does, and how many shapes there were."""
    seen: set[str] = set()
    found = []
    for command in recorded:
        for collection, query, sort in queries(command, db.name):
            if collection not in COLLECTIONS:
                continue
            key = json.dumps([collection, shape(query), sort], default=str)
            if key in seen:
                continue
            seen.add(key)
            ok, plan = await served(db, collection, query, sort)
            if not ok and (reason := tolerated(collection, query)):
                warnings.warn(f"tolerated scan ({reason}): {Finding(collection, query, sort, plan)}")
            elif not ok:
                found.append(Finding(collection, query, sort, plan))
            if sort and "SORT" in stages(plan := await winning_plan(db, collection, query, sort)):
                finding = Finding(collection, query, sort, plan, kind="sort")
                if index := await index_ordering(db, collection, query, sort):
                    warnings.warn(f"sorted in memory by the embedded server only (MongoDB reads it in order "
                                  f"from index {index}): {finding}")
                elif reason := tolerated(collection, query, sort):
                    warnings.warn(f"tolerated sort ({reason}): {finding}")
                else:
                    found.append(finding)
    return found, len(seen)


# -------------------------------------------------------------------- the work that issues the queries


@pytest.fixture
async def recorded(config: Config, monkeypatch: pytest.MonkeyPatch,
                   job_classes: dict[str, Any]) -> AsyncIterator[tuple[Database, Recorder]]:
    """A database whose every client (this test's, the server's, the command line's) records its commands."""
    recorder = Recorder(config.database)
    connect = Database.connect.__func__  # type: ignore[attr-defined]

    def recording(cls: type[Database], url: str, name: str, **options: Any) -> Database:
        options["event_listeners"] = [*(options.get("event_listeners") or []), recorder]
        return connect(cls, url, name, **options)
    monkeypatch.setattr(Database, "connect", classmethod(recording))
    db = Database.connect(config.mongo_url, config.database)
    await db.setup(log_retention_days=config.log_retention_days)
    await registry.sync(db, job_classes)
    yield db, recorder
    await db.client.drop_database(config.database)
    await db.close()


async def exercise_api_and_worker(db: Database, config: Config, classes: dict[str, Any]) -> ObjectId:
    """Log in, enqueue, run, kill, restart, remove, list, follow and poll over HTTP, with a worker running;
    return the id of a finished job."""
    await users.add(db, "admin", "hans", roles=["admin"], actor="test")
    admin = await users.find(db, "admin")
    await users.add(db, "reader", "read-pw", perms=["job:jobs.example.*:r"], actor="test")
    server = Server(config, db)
    await server.start()
    worker = Worker(db, dataclasses.replace(config, heartbeat_seconds=0.3, lease_seconds=2,
                                            journal_retention_days=1),
                    classes=classes, slots=2, kill_grace=0.5, shutdown_grace=0.2, poll_seconds=0.2)
    await worker.start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http, \
                httpx.AsyncClient(base_url=server.url, timeout=30) as reader:
            assert (await reader.post("/login", json={"username": "reader", "password": "read-pw"})).status_code == 200
            # Writes with the login cookie need an Origin (CSRF): the admin sends a token instead.
            http.headers["Authorization"] = f"Bearer {(await server.auth.issue_token(admin))[0]}"
            # A few log lines: the command line reads its log by the page too.
            done = ObjectId((await http.post("/job/enqueue", json={"qual_name": DUMMY, "follow": False, "args": {
                "sleep": 0.1, "loop_time": 0.05}})).json()["data"])
            failing = ObjectId((await http.post("/job/enqueue", json={"qual_name": FAIL, "follow": False,
                                                             "attempts": 1})).json()["data"])
            slow = ObjectId((await http.post("/job/enqueue", json={"qual_name": DUMMY, "args": {"sleep": 30},
                                                          "follow": False})).json()["data"])
            waiting = ObjectId((await http.post("/job/enqueue", json={"qual_name": DUMMY, "priority": -5,
                                                             "follow": False, "delay": 3600})).json()["data"])
            await http.post("/job/batch", json={"jobs": [{"qual_name": DUMMY, "args": {"sleep": 0}}]})
            await http.get(f"/job/poll/{done}", params={"timeout": "20"})
            await wait_for(lambda: db.journal.find_one({"_id": done}), 30, message="a finished job")
            await wait_for(lambda: db.journal.find_one({"_id": failing}), 30, message="a failed job")
            await wait_for(lambda: db.queue.find_one({"_id": slow, "state": "running"}), 30,
                           message="a running job")
            async with http.stream("GET", f"/job/follow/{done}") as stream:
                async for _ in stream.aiter_lines():
                    pass
            for client in (http, reader):
                for path, params in [("/job/queue", {}), ("/job/queue", {"state": "pending", "search": "*Dummy*"}),
                                     ("/job/queue", {"sort": "-priority,_id", "page": "-1"}),
                                     ("/job/journal", {}), ("/job/journal", {"state": "complete"}),
                                     ("/job/journal", {"qual_name": DUMMY,
                                                       "since": "2020-01-01T00:00:00Z"}),
                                     ("/job/journal", {"search": "jobs.*"}),
                                     ("/job/list", {}), ("/job/stats", {}), ("/worker", {}), ("/whoami", {}),
                                     (f"/job/{done}", {}), (f"/job/detail/{done}", {}),
                                     (f"/job/log/{done}", {}), (f"/job/log/{done}", {"page": "-1"}),
                                     ("/health", {})]:
                    reply = await client.get(path, params=params)
                    assert reply.status_code < 500, (path, reply.text)
            await http.put(f"/job/kill/{slow}")
            await http.put(f"/job/remove/{waiting}")
            await http.put(f"/job/restart/{failing}", params={"follow": "false"})
            await wait_for(lambda: db.journal.find_one({"_id": slow}), 30, message="the killed job")
        await worker.sweeper.sweep()
        await asyncio.sleep(1.0)  # a few lease renewals and heartbeats
    finally:
        worker.hurry()
        await worker.stop()
        await server.stop()
    # The reaper's and the registry's periodic queries, which need a lost worker to say anything.
    await db.queue.insert_one({"qual_name": DUMMY, "state": "running", "priority": 0, "version": 1, "trial": 1,
                               "attempts_left": 1, "locked": {"worker": "gone:1", "token": "t",
                                                              "heartbeat": datetime(2020, 1, 1, tzinfo=timezone.utc),
                                                              "at": datetime(2020, 1, 1, tzinfo=timezone.utc)}})
    from core.lease import reap_expired
    await reap_expired(db, 1)
    await registry.expire_offers(db, 1)
    return done


def exercise_cli(env: dict[str, str], job_id: str) -> None:
    """The commands that read: listings (and their cursor pages), show, log, stats, workers, jobs, users, export."""
    runner = CliRunner()
    for args in (["queue"], ["queue", "--state", "pending", "--search", "*Dummy*"], ["journal"],
                 ["journal", "--since", "2020-01-01", "--qual-name", DUMMY], ["show", job_id], ["log", job_id],
                 ["stats"], ["workers"], ["jobs"], ["jobs", "--all"], ["user", "list"],
                 ["journal", "export", "--until", "2100-01-01", "--with-logs"],
                 ["journal", "export", "--since", "2024-01-01", "--until", "2100-01-01"],
                 ["enqueue", DUMMY, "sleep=0"], ["enqueue", DUMMY, "sleep=0"], ["kill", "--no-wait", job_id]):
        result = runner.invoke(cli, args, env=env, prog_name="jobdeck")
        assert result.exit_code in (0, 1), (args, result.output)
    # Cursor pages (two jobs were enqueued above): the page after a first page of one, and the page before that.
    for listing in (["queue"], ["journal"], ["log", job_id]):
        pages = [listing + ["--json", "--per-page", "1"]]
        for cursor in ("next", "prev"):
            result = runner.invoke(cli, pages[-1], env=env, prog_name="jobdeck")
            assert result.exit_code == 0, (pages[-1], result.output)
            page = json.loads(result.stdout)
            assert page[cursor], (pages[-1], f"no {cursor} page to read", page)
            pages.append(listing + ["--json", "--per-page", "1", "--after" if cursor == "next" else "--before",
                                    page[cursor]])
        result = runner.invoke(cli, pages[-1], env=env, prog_name="jobdeck")
        assert result.exit_code == 0, (pages[-1], result.output)


async def test_every_query_of_the_api_the_command_line_and_the_worker_uses_an_index(
        recorded: tuple[Database, Recorder], config: Config, cli_env: dict[str, str],
        job_classes: dict[str, Any]) -> None:
    db, recorder = recorded
    job_id = await exercise_api_and_worker(db, config, job_classes)
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBDECK_")} | cli_env
    await asyncio.to_thread(exercise_cli, env, str(job_id))
    await retention.sweep(db, 0.001)
    found, shapes = await scans(db, recorder.commands)
    assert shapes > 40, f"only {shapes} query shapes were recorded"
    assert not found, (f"{len(found)} findings in {shapes} query shapes (a scan of a collection, or a sort no "
                       "index serves):\n" + "\n".join(map(str, found)))


async def test_the_check_sees_a_query_without_an_index(recorded: tuple[Database, Recorder]) -> None:
    db, recorder = recorded
    await db.journal.find_one({"args.month": "2026-01"})
    await db.queue.find_one({"_id": 1, "state": "pending"})  # served: the _id clause alone
    found, _ = await scans(db, recorder.commands)
    assert [(f.collection, f.query) for f in found] == [("journal", {"args.month": "2026-01"})]
    assert "COLLSCAN" in str(found[0])


async def test_the_check_sees_a_sort_no_index_serves(recorded: tuple[Database, Recorder]) -> None:
    db, recorder = recorded
    await db.journal.find_one({"state": "complete"}, sort=[("runtime", -1)])  # filtered by an index, sorted in memory
    # The embedded server sorts these in memory too; MongoDB reads them in order from an index.
    await db.log.find_one({"job_id": ObjectId()}, sort=[("seq", -1)])
    await db.queue.find_one({"state": {"$in": ["pending", "failed"]}}, sort=[("priority", -1), ("_id", 1)])
    await db.journal.find_one({"finished_at": {"$lt": datetime.now(timezone.utc)}, "state": "complete"},
                              sort=[("finished_at", -1), ("_id", -1)])
    found, _ = await scans(db, recorder.commands)
    assert [(f.kind, f.collection, f.sort) for f in found] == [("sort", "journal", {"runtime": -1})]
    assert '"stage": "SORT"' in str(found[0])


def test_an_index_orders_a_query_after_the_fields_it_holds_to_one_value() -> None:
    claim = [("state", 1), ("priority", -1), ("_id", 1)]
    by_priority = {"priority": -1, "_id": 1}
    assert ordered_by(claim, {"state": "pending"}, by_priority)
    assert ordered_by(claim, {"state": {"$in": ["pending", "failed"]}, "qual_name": "x"}, by_priority)
    assert ordered_by(claim, {"state": "pending"}, {"priority": 1, "_id": -1})  # walked backwards
    assert not ordered_by(claim, {"state": "pending"}, {"_id": 1})  # priority comes between
    assert not ordered_by(claim, {"state": {"$ne": "pending"}}, by_priority)  # not a point: many orders
    assert not ordered_by(claim, {"qual_name": "x"}, by_priority)  # state not held: unordered
    assert not ordered_by([("_id", 1)], {"state": "pending"}, {"_id": 1})  # a walk of the whole index
    assert ordered_by([("finished_at", -1), ("_id", -1)], {"finished_at": {"$lt": 1}, "state": "complete"},
                      {"finished_at": -1, "_id": -1})


async def test_the_journal_sweep_and_export_use_indexes(recorded: tuple[Database, Recorder]) -> None:
    db, recorder = recorded
    now = await db.server_time()
    await db.journal.insert_many([{"qual_name": DUMMY, "state": "complete", "finished_at": now - timedelta(days=d)}
                                  for d in (400, 40, 4)])
    await retention.sweep(db, 30)
    assert [job async for job in retention.export(db, until=now, with_logs=True)]
    found, shapes = await scans(db, recorder.commands)
    assert shapes >= 4 and not found, "\n".join(map(str, found))


async def test_the_audit_trail_s_listings_use_indexes(recorded: tuple[Database, Recorder]) -> None:
    """Every filter of GET /audit and jobdeck audit (one core function), first pages, cursor pages with ties,
    pages back and numbered pages."""
    from core import audit
    db, recorder = recorded
    now = await db.server_time()
    # Three entries a second: ties on ``at``.
    await db.audit.insert_many([{"at": now - timedelta(seconds=index // 3), "action": "job.kill", "actor": "admin",
                                 "target": f"t{index % 4}", "detail": {}} for index in range(30)]
                               + [{"at": now - timedelta(minutes=index), "action": "user.add", "actor": "cli:ops",
                                   "target": "alice", "detail": {}} for index in range(5)])
    for filters in ({}, {"user": "admin"}, {"action": "job.kill"}, {"action": "job.*"}, {"target": "t1"},
                    {"since": "1h"}, {"since": "2020-01-01T00:00:00Z", "until": "1s"},
                    {"user": "admin", "action": "job.*", "target": "t2", "since": "1d"}):
        first = await audit.listing(db, by=None, per_page=4, **filters)
        assert first.items, filters
        if first.next:
            after = await audit.listing(db, by=None, per_page=4, after=first.next, **filters)
            if after.prev:
                await audit.listing(db, by=None, per_page=4, before=after.prev, **filters)
        # A numbered page counts the listing exactly: without a filter, the whole trail (tolerated above).
        await audit.listing(db, by=None, per_page=4, page=1, **filters)
        await audit.listing(db, by=None, per_page=4, page=-1, **filters)
    found, shapes = await scans(db, recorder.commands)
    assert shapes >= 10 and not found, "\n".join(map(str, found))
