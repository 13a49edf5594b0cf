"""The round trips one job costs, counted with PyMongo's command monitoring (README: "a no-op job costs 7 writes")."""
from __future__ import annotations

import collections
import dataclasses
from typing import Any

from pymongo import monitoring

from core import queue, registry
from core.config import Config
from core.db import Database
from core.worker import Worker
from tests.conftest import wait_for

ADMIN = queue.operator("test")


class Commands(monitoring.CommandListener):
    """Counts, while ``counting``, the commands sent (round trips) and the writes they carry.

    ``counts``: commands by (command, collection); ``writes``: write
    operations by (kind, collection), also those inside one client-level
    ``bulkWrite`` command (MongoDB 8.0+, the embedded server).
    """

    def __init__(self) -> None:
        self.counts: collections.Counter[tuple[str, str]] = collections.Counter()
        self.writes: collections.Counter[tuple[str, str]] = collections.Counter()
        self.counting = False

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if not self.counting:
            return
        command, name = event.command, event.command_name
        target = command.get(name)
        self.counts[(name, target if isinstance(target, str) else "")] += 1
        if name == "bulkWrite":
            namespaces = [info["ns"].split(".", 1)[1] for info in command["nsInfo"]]
            for op in command["ops"]:
                kind = next(k for k in ("insert", "update", "delete") if k in op)
                self.writes[(kind, namespaces[op[kind]])] += 1
        elif name in ("insert", "update", "delete"):
            documents = {"insert": "documents", "update": "updates", "delete": "deletes"}[name]
            self.writes[(name, target)] += len(command.get(documents) or [None])
        elif name == "findAndModify":
            self.writes[("delete" if command.get("remove") else "update", target)] += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass

    def total(self, collections: tuple[str, ...] = ("queue", "audit", "journal", "log")) -> int:
        """Writes to these collections."""
        return sum(count for (_, target), count in self.writes.items() if target in collections)


async def test_a_noop_job_costs_seven_writes_from_enqueue_to_journal(config: Config) -> None:
    commands = Commands()
    db = Database.connect(config.mongo_url, config.database, event_listeners=[commands])
    await db.setup(log_retention_days=1)
    classes = registry.discover()
    await registry.sync(db, classes)
    # Leases renewed only long after the jobs are done: the count is the jobs' own.
    settings = dataclasses.replace(config, lease_seconds=120, heartbeat_seconds=60)
    worker = Worker(db, settings, classes=classes, slots=2, poll_seconds=60)
    jobs = 10
    try:
        commands.counting = True
        ids = [(await queue.enqueue(db, "jobs.example.NoopJob", {}, user=ADMIN))["_id"] for _ in range(jobs)]
        enqueue_writes = commands.total()
        commands.counting = False
        await worker.start()
        await wait_for(lambda: db.worker.find_one({"heartbeat": {"$ne": None}}), message="the first heartbeat")
        commands.counting = True
        await wait_for(lambda: _all_in_journal(db, ids), 60, message="the jobs to finish", interval=0.01)
        commands.counting = False
    finally:
        await worker.stop()
        await db.client.drop_database(config.database)
        await db.close()

    counts, writes = dict(commands.counts), dict(commands.writes)
    said = " ".join(f"{k}={v}" for k, v in sorted(counts.items()))
    # enqueue: the job and its audit record (one round trip where the server has client bulkWrite)
    assert enqueue_writes == 2 * jobs
    assert writes[("insert", "queue")] == writes[("insert", "audit")] == jobs
    # claim: one compare-and-set each; end: the move to the journal, one transaction of two writes
    assert writes[("update", "queue")] == jobs, said
    assert writes[("delete", "queue")] == jobs, said
    assert writes[("update", "journal")] == jobs, said  # replace, upserted
    # and each job's counted change, inserted with its enqueue and with its end (core.counts)
    assert writes[("insert", "count_changes")] == 2 * jobs, said
    folds = counts.get(("delete", "count_changes"), 0)  # the worker's folder: a transaction each
    assert counts[("commitTransaction", "")] == jobs + folds, said
    assert commands.total() == 5 * jobs, said  # and the 2 count changes above: 7 writes a job
    # the worker's heartbeat, and its session ids once each (core.db: Database.session), not per job
    assert writes.get(("update", "worker"), 0) <= 1 + len(db.sessions), said
    # no read of the log (first trials); claims from the ready list, read once
    assert ("find", "log") not in counts
    assert worker.claimer.scans <= 2  # at start, and once more when its change stream has opened
    # Each job is read back after its claim and read in its end's transaction (by _id: findAndModify
    # costs what the collection holds on the embedded server); besides, the ready list's reads and the
    # idle worker's next-due timer.
    assert 2 * jobs <= counts.get(("find", "queue"), 0) < 3 * jobs, said


async def _all_in_journal(db: Database, ids: list[Any]) -> bool:
    # Counted too, but on the journal only (the assertions above leave it out).
    return await db.journal.count_documents({"_id": {"$in": ids}}) == len(ids)
