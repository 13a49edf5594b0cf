"""The registry: discovering job classes, their argument schemas, syncing them, who offers them, checking arguments."""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Optional

import pytest
from pymongo import AsyncMongoClient

from core import queue, registry
from core.config import Config
from core.db import Database
from core.errors import BadArgument, NotFound
from core.worker import Worker
import jobs.example
from jobs import Job
from jobs.example import DeferJob, DummyJob
from tests.conftest import make_package, wait_for

ADMIN = queue.operator("test")
EXAMPLES = {f"jobs.example.{name}" for name in jobs.example.__all__}

GOOD_MODULE = '''
from __future__ import annotations

from typing import Any, Optional

import jobs.example
from jobs import Job
from jobs.example import DummyJob  # imported, so not this module's job


class Flexible(Job):
    """Takes typed, optional and extra arguments."""

    author = "tests"
    tags = ("demo", "flexible")
    attempts = 4
    schedule = "0 6 * * *"

    def execute(self, name: str, count: int = 2, ratio: Optional[float] = None,
                label: str | None = "x", items: list[str] | None = None, options: dict[str, Any] = {},
                anything=None, untyped=5, **kwargs: Any) -> None:
        return None


class NoExecute(Job):
    """Does not override execute: not a job."""


class _Private(Job):
    def execute(self) -> None:
        return None
'''

BROKEN_MODULE = '''
raise RuntimeError("this job module is broken on purpose")
'''


@pytest.fixture
def cleanup_modules():
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith("testjobs_"):
            del sys.modules[name]


def param(entry_schema: dict[str, Any], name: str) -> dict[str, Any]:
    return next(p for p in entry_schema["params"] if p["name"] == name)


# --- discover -----------------------------------------------------------------------------

def test_discover_finds_the_example_jobs_and_not_the_base_class() -> None:
    found = registry.discover()

    assert set(found) == EXAMPLES
    assert {"jobs.example.DummyJob", "jobs.example.FailJob", "jobs.example.DeferJob",
            "jobs.example.ChattyJob", "jobs.example.StubbornJob"} <= set(found)
    assert Job not in found.values()
    assert not any(name.endswith(".Job") for name in found)
    assert found["jobs.example.DummyJob"] is DummyJob


def test_discover_loads_configured_packages_and_skips_a_broken_module(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        cleanup_modules: None) -> None:
    package = make_package(tmp_path, monkeypatch, {"good": GOOD_MODULE, "broken": BROKEN_MODULE})

    with caplog.at_level(logging.DEBUG, logger="core.registry"):
        found = registry.discover([package])

    assert set(found) == EXAMPLES | {f"{package}.good.Flexible"}
    assert found.import_errors == [{"module": f"{package}.broken",
                                    "error": "RuntimeError: this job module is broken on purpose"}]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage() for r in errors] == [
        f"cannot import job module {package}.broken of package {package}: RuntimeError: this job module is "
        "broken on purpose; its jobs are left out"]
    assert errors[0].exc_info is None  # one line; the traceback goes to DEBUG
    [traceback] = [r for r in caplog.records if r.levelno == logging.DEBUG]
    assert "broken on purpose" in str(traceback.exc_info[1])


def test_discover_logs_and_skips_a_package_that_does_not_exist(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="core.registry"):
        found = registry.discover(["no_such_package_here"])

    assert set(found) == EXAMPLES
    assert found.import_errors == [{"module": "no_such_package_here",
                                    "error": "ModuleNotFoundError: No module named 'no_such_package_here'"}]
    assert [r.getMessage() for r in caplog.records] == [
        "cannot import job package no_such_package_here: ModuleNotFoundError: No module named "
        "'no_such_package_here'; its jobs are left out"]


def test_discover_records_a_broken_subpackage_once_and_can_stay_quiet(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        cleanup_modules: None) -> None:
    package = make_package(tmp_path, monkeypatch, {"good": GOOD_MODULE})
    (tmp_path / package / "sub").mkdir()
    (tmp_path / package / "sub" / "__init__.py").write_text("import no_such_dependency\n")

    with caplog.at_level(logging.DEBUG, logger="core.registry"):
        found = registry.discover([package], log_errors=False)

    assert f"{package}.good.Flexible" in found
    assert found.import_errors == [{"module": f"{package}.sub",
                                    "error": "ModuleNotFoundError: No module named 'no_such_dependency'"}]
    assert caplog.records == []


def test_discover_lists_jobs_once_when_jobs_is_also_configured() -> None:
    assert set(registry.discover(["jobs", "jobs"])) == EXAMPLES


# --- schema -------------------------------------------------------------------------------

def test_schema_comes_from_the_signature_and_type_hints_of_execute() -> None:
    assert registry.schema(DummyJob) == {"params": [
        {"name": "sleep", "type": "float", "nullable": False, "required": False, "default": 3},
        {"name": "loop_time", "type": "float", "nullable": False, "required": False, "default": 0.5},
        {"name": "message", "type": "str", "nullable": False, "required": False, "default": "dummy"},
    ], "extra": False}
    assert registry.schema(DeferJob) == {"params": [
        {"name": "until", "type": "int", "nullable": False, "required": False, "default": 3},
    ], "extra": False}


def test_schema_of_postponed_annotations_optional_unions_and_kwargs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cleanup_modules: None) -> None:
    package = make_package(tmp_path, monkeypatch, {"good": GOOD_MODULE})
    cls = registry.discover([package])[f"{package}.good.Flexible"]

    spec = registry.schema(cls)

    assert spec["extra"] is True
    assert [p["name"] for p in spec["params"]] == ["name", "count", "ratio", "label", "items", "options",
                                                   "anything", "untyped"]
    assert param(spec, "name") == {"name": "name", "type": "str", "nullable": False, "required": True}
    assert param(spec, "count") == {"name": "count", "type": "int", "nullable": False, "required": False,
                                    "default": 2}
    assert param(spec, "ratio") == {"name": "ratio", "type": "float", "nullable": True, "required": False,
                                    "default": None}
    assert param(spec, "label") == {"name": "label", "type": "str", "nullable": True, "required": False,
                                    "default": "x"}
    assert param(spec, "items")["type"] == "list" and param(spec, "items")["nullable"] is True
    assert param(spec, "options")["type"] == "dict" and param(spec, "options")["nullable"] is False
    assert param(spec, "anything")["type"] == "any"
    assert param(spec, "untyped") == {"name": "untyped", "type": "any", "nullable": False,
                                      "required": False, "default": 5}


def test_schema_keeps_resolvable_hints_when_another_hint_cannot_be_resolved() -> None:
    # ``Later`` is only known to type checkers (a TYPE_CHECKING import), so
    # typing.get_type_hints fails for execute as a whole.
    class Mixed(Job):
        def execute(self, count: "int", when: "Later" = None) -> None:  # noqa: F821
            return None

    spec = registry.schema(Mixed)

    assert param(spec, "count")["type"] == "int"
    assert param(spec, "when")["type"] == "any"
    assert param(spec, "when")["nullable"] is True


def test_schema_leaves_out_defaults_that_are_not_json() -> None:
    class Odd(Job):
        def execute(self, marker: object = object()) -> None:
            return None

    [entry] = registry.schema(Odd)["params"]
    assert entry == {"name": "marker", "type": "any", "nullable": False, "required": False}


# --- sync ---------------------------------------------------------------------------------

async def test_sync_writes_an_entry_per_class(db: Database) -> None:
    classes = registry.discover()

    assert await registry.sync(db, classes) == {"valid": len(EXAMPLES), "invalidated": 0}

    entries = await registry.list_entries(db)
    assert [e["_id"] for e in entries] == sorted(EXAMPLES)
    dummy = await registry.get_valid(db, "jobs.example.DummyJob")
    assert dummy["qual_name"] == "jobs.example.DummyJob"
    assert dummy["doc"].startswith("Sleeps for a while")
    assert dummy["author"] == "jobdeck"
    assert dummy["schema"] == registry.schema(DummyJob)
    assert dummy["valid"] is True
    assert dummy["unique"] is False
    assert dummy["defaults"]["attempts"] == 1 and dummy["defaults"]["wall_time"] is None
    assert (await registry.get_valid(db, "jobs.example.DeferJob"))["defaults"]["defer_time"] == 1.0


async def test_sync_without_a_provider_adds_and_revalidates_but_never_invalidates(db: Database) -> None:
    classes = registry.discover()
    await registry.sync(db, classes)
    fewer = {name: cls for name, cls in classes.items() if name != "jobs.example.FailJob"}

    assert await registry.sync(db, fewer) == {"valid": len(EXAMPLES) - 1, "invalidated": 0}

    assert "jobs.example.FailJob" in [e["_id"] for e in await registry.list_entries(db)]
    await queue.enqueue(db, "jobs.example.FailJob", user=ADMIN)
    await db.registry.update_one({"_id": "jobs.example.FailJob"}, {"$set": {"valid": False}})
    with pytest.raises(NotFound, match=r"'jobs.example.FailJob' is no longer available: no worker or server"):
        await queue.enqueue(db, "jobs.example.FailJob", user=ADMIN)
    assert "jobs.example.FailJob" in [e["_id"] for e in await registry.list_entries(db, valid_only=False)]

    assert await registry.sync(db, classes) == {"valid": len(EXAMPLES), "invalidated": 0}
    await queue.enqueue(db, "jobs.example.FailJob", user=ADMIN)


async def test_sync_of_a_job_package_publishes_its_schema_tags_and_defaults(
        db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cleanup_modules: None) -> None:
    package = make_package(tmp_path, monkeypatch, {"good": GOOD_MODULE, "broken": BROKEN_MODULE})
    await registry.sync(db, registry.discover([package]))

    entry = await registry.get_valid(db, f"{package}.good.Flexible")

    assert entry["tags"] == ["demo", "flexible"]
    assert entry["schedule"] == "0 6 * * *"
    assert entry["defaults"]["attempts"] == 4
    assert entry["schema"]["extra"] is True
    job = await queue.enqueue(db, f"{package}.good.Flexible", {"name": "n", "whatever": [1]}, user=ADMIN)
    assert job["tags"] == ["demo", "flexible"]
    assert job["attempts"] == job["attempts_left"] == 4


async def test_get_valid_rejects_unknown_and_malformed_qual_names(db: Database) -> None:
    await registry.sync(db, registry.discover())

    with pytest.raises(NotFound, match="unknown job 'jobs.example.Nope'"):
        await registry.get_valid(db, "jobs.example.Nope")
    for bad in (None, "", 42, ["jobs.example.DummyJob"]):
        with pytest.raises(BadArgument, match="qual_name"):
            await registry.get_valid(db, bad)


# --- check_args ---------------------------------------------------------------------------

class Typed(Job):
    """A job with one argument of each kind."""

    def execute(self, name: str, count: int = 1, ratio: float = 0.5, flag: bool = False,
                maybe: Optional[int] = None, either: int | None = 3, nothing: str = None,
                items: list = [], options: dict = {}, anything: Any = None) -> None:
        return None


class Open(Job):
    def execute(self, count: int = 1, **kwargs: Any) -> None:
        return None


TYPED = {"_id": "tests.Typed", "schema": registry.schema(Typed)}
OPEN = {"_id": "tests.Open", "schema": registry.schema(Open)}


def test_check_args_accepts_well_typed_arguments() -> None:
    args = {"name": "n", "count": 2, "ratio": 1, "flag": True, "maybe": None, "either": None,
            "nothing": None, "items": [1, "a"], "options": {"k": 1}, "anything": {"x": [None]}}
    assert registry.check_args(TYPED, args) == args
    assert registry.check_args(TYPED, {"name": "n", "ratio": 0.25, "maybe": 7})["maybe"] == 7


def test_check_args_takes_none_as_no_arguments() -> None:
    assert registry.check_args(OPEN, None) == {}
    with pytest.raises(BadArgument, match="missing 'name'"):
        registry.check_args(TYPED, None)


@pytest.mark.parametrize(("args", "expected"), [
    ({}, r"missing 'name'"),
    ({"name": "n", "colour": "red"}, r"unknown 'colour' \(accepted: name, count, ratio"),
    ({"name": 5}, r"'name' must be a string, got 5"),
    ({"name": "n", "count": True}, r"'count' must be an integer, got True"),
    ({"name": "n", "count": 1.5}, r"'count' must be an integer, got 1.5"),
    ({"name": "n", "count": "1"}, r"'count' must be an integer, got '1'"),
    ({"name": "n", "ratio": False}, r"'ratio' must be a number, got False"),
    ({"name": "n", "ratio": "0.5"}, r"'ratio' must be a number, got '0.5'"),
    ({"name": "n", "flag": 1}, r"'flag' must be a boolean, got 1"),
    ({"name": "n", "count": None}, r"'count' must be an integer, got None"),
    ({"name": None}, r"'name' must be a string, got None"),
    ({"name": "n", "items": {"a": 1}}, r"'items' must be a list"),
    ({"name": "n", "options": [1]}, r"'options' must be an object"),
], ids=["missing", "unknown", "str", "bool-is-not-int", "float-is-not-int", "text-is-not-int",
        "bool-is-not-float", "text-is-not-float", "int-is-not-bool", "none-not-nullable",
        "none-for-required", "list", "dict"])
def test_check_args_names_the_bad_argument(args: dict[str, Any], expected: str) -> None:
    with pytest.raises(BadArgument, match=expected) as caught:
        registry.check_args(TYPED, args)
    assert str(caught.value).startswith("bad arguments for tests.Typed: ")


def test_check_args_reports_every_problem_at_once() -> None:
    with pytest.raises(BadArgument) as caught:
        registry.check_args(TYPED, {"count": "x", "flag": "no", "extra": 1})
    message = str(caught.value)
    for part in ("missing 'name'", "unknown 'extra'", "'count' must be an integer", "'flag' must be a boolean"):
        assert part in message


@pytest.mark.parametrize("args", [[1, 2], "name=n", 3, ("name",)], ids=["list", "text", "int", "tuple"])
def test_check_args_refuses_args_that_are_not_an_object(args: Any) -> None:
    with pytest.raises(BadArgument, match="args must be an object"):
        registry.check_args(TYPED, args)


def test_check_args_with_kwargs_accepts_extras_but_still_checks_known_ones() -> None:
    assert registry.check_args(OPEN, {"count": 3, "anything": "goes", "more": [1]}) == {
        "count": 3, "anything": "goes", "more": [1]}
    with pytest.raises(BadArgument, match="'count' must be an integer, got 'x'"):
        registry.check_args(OPEN, {"count": "x", "other": 1})


def test_check_args_refuses_values_that_are_not_json() -> None:
    with pytest.raises(BadArgument, match="args must be JSON"):
        registry.check_args(TYPED, {"name": "n", "anything": {1, 2}})
    with pytest.raises(BadArgument, match="args must be JSON"):
        registry.check_args(OPEN, {"when": object()})


# --- offers: who offers a class, and when it becomes unavailable ---------------------------

ACME_MODULE = '''
from jobs import Job


class Report(Job):
    """Writes the monthly report (only some workers have this package)."""

    def execute(self, month: int = 1) -> dict:
        return {"month": month}
'''


@pytest.fixture
def acme(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cleanup_modules: None) -> str:
    """A job package only some workers have: its ``Report`` class's qual_name."""
    return f"{make_package(tmp_path, monkeypatch, {'report': ACME_MODULE})}.report.Report"


@pytest.fixture
async def workers(db: Database, config: Config) -> AsyncIterator[Callable[..., Awaitable[Worker]]]:
    """``await workers(classes)`` starts a worker offering ``classes`` (stopped at teardown unless stopped).

    ``app``: the worker gets a client of its own with this appName, for a
    fail point to aim at (any fail point is switched off at teardown).
    """
    started: list[Worker] = []
    clients: list[Database] = []

    async def start(classes: dict[str, Any], *, app: str | None = None, lease_seconds: float = 5.0) -> Worker:
        handle = db
        if app is not None:
            # A quick monitor: after an error like ShutdownInProgress the driver pauses the pool until
            # the monitor sees the server again (10 s by default).
            handle = Database(AsyncMongoClient(config.mongo_url, appname=app, tz_aware=True, tzinfo=timezone.utc,
                                               w="majority", serverSelectionTimeoutMS=5000,
                                               heartbeatFrequencyMS=500), config.database)
            clients.append(handle)
        settings = dataclasses.replace(config, job_start="spawn", lease_seconds=lease_seconds,
                                       heartbeat_seconds=0.2)
        worker = Worker(handle, settings, classes=classes, slots=1, kill_grace=0.2, shutdown_grace=0.2,
                        poll_seconds=0.2)
        await worker.start()
        started.append(worker)
        return worker

    yield start
    await db.client.admin.command({"configureFailPoint": "failCommand", "mode": "off"})
    for worker in started:
        if not worker._stopping:
            await worker.stop()
    for handle in clients:
        await handle.close()


async def entry_of(db: Database, qual_name: str) -> dict[str, Any]:
    return await db.registry.find_one({"_id": qual_name})


async def workers_of(db: Database, qual_name: str) -> list[str]:
    """The ids of the live workers ``list_entries`` says offer ``qual_name``."""
    entries = {e["_id"]: e for e in await registry.list_entries(db, valid_only=False)}
    return sorted(w["id"] for w in entries[qual_name]["workers"])


async def test_a_second_worker_without_a_package_leaves_the_first_workers_classes_valid(
        db: Database, acme: str, workers: Any, caplog: pytest.LogCaptureFixture) -> None:
    package = acme.split(".")[0]
    first = await workers(registry.discover([package]))
    second = await workers(registry.discover())

    assert (await entry_of(db, acme))["valid"] is True
    job = await queue.enqueue(db, acme, {"month": 3}, user=ADMIN)
    assert job["state"] == "pending"
    assert await workers_of(db, acme) == [first.id]
    assert await workers_of(db, "jobs.example.DummyJob") == sorted([first.id, second.id])

    with caplog.at_level(logging.WARNING, logger="core.registry"):
        await first.stop()

    assert (await entry_of(db, acme))["valid"] is False
    with pytest.raises(NotFound, match="is no longer available"):
        await queue.enqueue(db, acme, user=ADMIN)
    assert [r.getMessage() for r in caplog.records] == [
        f"job class {acme} is no longer available: {first.id} withdrew the last offer of it; enqueue refuses "
        "it until a process with the class offers it again"]
    assert await workers_of(db, "jobs.example.DummyJob") == [second.id]
    await queue.enqueue(db, "jobs.example.DummyJob", {"sleep": 0}, user=ADMIN)


async def test_a_class_stays_valid_until_its_last_provider_stops(db: Database, acme: str, workers: Any) -> None:
    classes = registry.discover([acme.split(".")[0]])
    first = await workers(classes)
    second = await workers(classes)

    await first.stop()
    assert (await entry_of(db, acme))["valid"] is True
    assert await workers_of(db, acme) == [second.id]
    await queue.enqueue(db, acme, user=ADMIN)

    await second.stop()
    entry = await entry_of(db, acme)
    assert entry["valid"] is False and entry["offered_by"] == []


async def test_a_server_keeps_its_classes_offered_until_it_withdraws(db: Database, acme: str) -> None:
    classes = registry.discover([acme.split(".")[0]])
    server = registry.Provider.server(8080)
    await registry.sync(db, classes, provider=server)
    await registry.expire_offers(db, 0.001)  # a server has no heartbeat: its offer does not expire

    assert (await entry_of(db, acme))["valid"] is True
    assert await workers_of(db, acme) == []  # accepted, but no worker runs it yet
    # The same server again, now without the package: its old offer of the class goes.
    assert await registry.sync(db, registry.discover(), provider=server) == {"valid": len(EXAMPLES),
                                                                           "invalidated": 1}
    assert (await entry_of(db, acme))["valid"] is False
    assert await registry.withdraw(db, server.id) == sorted(EXAMPLES)


async def test_a_crashed_workers_offer_expires_with_its_lease(db: Database, acme: str, workers: Any,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    classes = registry.discover([acme.split(".")[0]])
    # A worker that offered the class, then crashed: its heartbeat stops.
    crashed = registry.Provider("crashed:1:ab", "worker", "elsewhere")
    await db.worker.insert_one({"_id": crashed.id, "host": "elsewhere", "heartbeat": datetime.now(timezone.utc)})
    await registry.sync(db, classes, provider=crashed)
    assert await workers_of(db, acme) == [crashed.id]
    began = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="core.registry"):
        survivor = await workers(registry.discover(), lease_seconds=1.0)  # no acme package
        assert (await entry_of(db, acme))["valid"] is True  # starting never invalidates

        entry = await wait_for(lambda: db.registry.find_one({"_id": acme, "valid": False}), timeout=10,
                               message="the crashed worker's offer to expire")

    assert time.monotonic() - began >= 1.0
    assert entry["offered_by"] == []
    with pytest.raises(NotFound, match="is no longer available"):
        await queue.enqueue(db, acme, user=ADMIN)
    assert f"job class {acme} is no longer available: no live process offers it (the workers {crashed.id} " \
           "are gone); enqueue refuses it until a process with the class offers it again" in caplog.messages
    # The dead offers of the classes the survivor also offers went; its own stayed.
    assert [o["id"] for o in (await entry_of(db, "jobs.example.DummyJob"))["offered_by"]] == [survivor.id]


async def test_expire_offers_keeps_live_offers_heals_a_live_class_and_skips_malformed_entries(
        db: Database, acme: str) -> None:
    classes = registry.discover([acme.split(".")[0]])
    now = await db.server_time()
    live = registry.Provider("live:1:aa", "worker", "h")
    await db.worker.insert_one({"_id": live.id, "host": "h", "heartbeat": now})
    await registry.sync(db, classes, provider=live)
    await db.registry.update_one({"_id": acme}, {"$set": {"valid": False}})
    await db.registry.insert_one({"_id": "odd.Entry", "valid": True, "offered_by": [{"kind": "worker"}]})
    await db.registry.insert_one({"_id": "old.Entry", "valid": True})  # an older jobdeck's: no offers

    assert await registry.expire_offers(db, 30, now=now) == ["old.Entry"]

    assert (await entry_of(db, acme))["valid"] is True
    assert (await entry_of(db, "odd.Entry"))["valid"] is True
    assert (await entry_of(db, "old.Entry"))["valid"] is False


async def test_a_class_registered_but_offered_by_no_live_worker_is_accepted_and_waits(
        db: Database, acme: str, workers: Any) -> None:
    await registry.sync(db, registry.discover([acme.split(".")[0]]))  # the command line: offers nothing
    await workers(registry.discover())  # a worker without the package

    job = await queue.enqueue(db, acme, {"month": 2}, user=ADMIN)
    await workers(registry.discover())  # another start: still no invalidation

    assert await workers_of(db, acme) == []
    assert (await entry_of(db, acme))["valid"] is True
    await asyncio.sleep(0.5)  # a few claim rounds: no worker has the class, so none takes the job
    assert (await db.queue.find_one({"_id": job["_id"]}))["state"] == "pending"
    with pytest.raises(NotFound, match="unknown job 'testjobs_nope.Never'"):
        await queue.enqueue(db, "testjobs_nope.Never", user=ADMIN)


async def test_listing_shows_live_workers_only_and_hosts_to_admins_only(db: Database, workers: Any) -> None:
    worker = await workers(registry.discover())
    dead = registry.Provider("dead:1:ab", "worker", "gone")
    await db.worker.insert_one({"_id": dead.id, "host": "gone",
                                "heartbeat": datetime.now(timezone.utc) - timedelta(minutes=5)})
    await registry.sync(db, registry.discover(), provider=dead)
    reader = {"name": "r", "roles": [], "perms": ["job:jobs.example.*:x"], "active": True}

    admin_page = await registry.list_page(db, user=ADMIN, search="DummyJob", lease_seconds=5)
    reader_page = await registry.list_page(db, user=reader, search="DummyJob", lease_seconds=5)

    [entry] = admin_page.items
    assert entry["workers"] == [{"id": worker.id, "host": worker.host}] and "offered_by" not in entry
    assert reader_page.items[0]["workers"] == [{"id": worker.id}]
    with pytest.raises(BadArgument, match="offered_by"):
        await registry.list_page(db, user=ADMIN, filter={"offered_by.id": worker.id})


async def test_a_different_schema_from_another_version_is_logged(db: Database,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    await registry.sync(db, registry.discover())
    await db.registry.update_one({"_id": "jobs.example.DummyJob"}, {"$set": {"schema": {"params": [],
                                                                                        "extra": True}}})
    with caplog.at_level(logging.WARNING, logger="core.registry"):
        await registry.sync(db, registry.discover(), provider=registry.Provider("w:1:aa", "worker", "h"))

    assert caplog.messages == ["job class jobs.example.DummyJob: its arguments differ from the registered ones "
                               "(another version of its code?); the w:1:aa's ones apply"]
    assert (await entry_of(db, "jobs.example.DummyJob"))["schema"] == registry.schema(DummyJob)


# --- offers under database faults -------------------------------------------------------------

async def test_a_worker_whose_offer_fails_to_be_written_retries_until_it_is_in(
        db: Database, acme: str, workers: Any, caplog: pytest.LogCaptureFixture) -> None:
    # The first update (the worker's document) goes through, the next two (its offer) fail.
    await db.client.admin.command({"configureFailPoint": "failCommand", "mode": {"skip": 1, "times": 2},
                                   "data": {"failCommands": ["update"], "appName": "offer-faults",
                                            "errorCode": 91}})
    with caplog.at_level(logging.WARNING, logger="core.worker"):
        worker = await workers(registry.discover([acme.split(".")[0]]), app="offer-faults")

    assert await workers_of(db, acme) == [worker.id]
    await queue.enqueue(db, acme, user=ADMIN)
    assert any("cannot offer its job classes in the registry" in m for m in caplog.messages)


async def test_an_offer_that_cannot_be_withdrawn_expires_once_the_worker_is_gone(
        db: Database, acme: str, workers: Any, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr("core.worker._WITHDRAW_SECONDS", 1.0)
    survivor = await workers(registry.discover(), lease_seconds=1.0)
    leaving = await workers(registry.discover([acme.split(".")[0]]), app="withdraw-faults")
    await db.client.admin.command({"configureFailPoint": "failCommand", "mode": "alwaysOn",
                                   "data": {"failCommands": ["update"], "appName": "withdraw-faults",
                                            "errorCode": 91}})
    with caplog.at_level(logging.WARNING, logger="core.worker"):
        await leaving.stop()

    assert any(f"worker {leaving.id} could not withdraw its offer" in m for m in caplog.messages)
    assert await db.worker.find_one({"_id": leaving.id}) is None
    # The offer is still there, but its worker is gone: the survivor drops it within a lease or two.
    await wait_for(lambda: db.registry.find_one({"_id": acme, "valid": False}), timeout=10,
                   message="the offer of the stopped worker to expire")
    assert [o["id"] for o in (await entry_of(db, "jobs.example.DummyJob"))["offered_by"]] == [survivor.id]


async def test_a_worker_cut_off_for_longer_than_a_lease_offers_its_classes_again(
        db: Database, acme: str, workers: Any) -> None:
    survivor = await workers(registry.discover(), lease_seconds=1.0)
    cut_off = await workers(registry.discover([acme.split(".")[0]]), app="cut-off", lease_seconds=1.0)
    await db.client.admin.command({"configureFailPoint": "failCommand", "mode": "alwaysOn",
                                   "data": {"failCommands": ["update"], "appName": "cut-off", "errorCode": 91}})
    await wait_for(lambda: db.registry.find_one({"_id": acme, "valid": False}), timeout=10,
                   message="the survivor to drop the offer of the silent worker")

    await db.client.admin.command({"configureFailPoint": "failCommand", "mode": "off"})

    await wait_for(lambda: db.registry.find_one({"_id": acme, "valid": True}), timeout=10,
                   message="the worker to offer its classes again")
    assert await workers_of(db, acme) == [cut_off.id]
    assert survivor.id in await workers_of(db, "jobs.example.DummyJob")
