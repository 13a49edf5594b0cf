"""The registry: discovering job classes, their argument schemas, syncing them, checking arguments."""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, Optional

import pytest

from core import queue, registry
from core.db import Database
from core.errors import BadArgument, NotFound
import jobs.example
from jobs import Job
from jobs.example import DeferJob, DummyJob
from tests.conftest import make_package

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

    with caplog.at_level(logging.ERROR, logger="core.registry"):
        found = registry.discover([package])

    assert set(found) == EXAMPLES | {f"{package}.good.Flexible"}
    messages = [r.getMessage() for r in caplog.records]
    assert f"cannot import job module {package}.broken" in messages
    broken = next(r for r in caplog.records if r.getMessage().endswith(".broken"))
    assert "broken on purpose" in str(broken.exc_info[1])


def test_discover_logs_and_skips_a_package_that_does_not_exist(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="core.registry"):
        found = registry.discover(["no_such_package_here"])

    assert set(found) == EXAMPLES
    assert "cannot import job package no_such_package_here" in [r.getMessage() for r in caplog.records]


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


async def test_sync_marks_vanished_classes_invalid_and_enqueue_refuses_them(db: Database) -> None:
    classes = registry.discover()
    await registry.sync(db, classes)
    fewer = {name: cls for name, cls in classes.items() if name != "jobs.example.FailJob"}

    assert await registry.sync(db, fewer) == {"valid": len(EXAMPLES) - 1, "invalidated": 1}

    entry = await db.registry.find_one({"_id": "jobs.example.FailJob"})
    assert entry["valid"] is False
    assert "jobs.example.FailJob" not in [e["_id"] for e in await registry.list_entries(db)]
    assert "jobs.example.FailJob" in [e["_id"] for e in await registry.list_entries(db, valid_only=False)]
    with pytest.raises(NotFound, match=r"'jobs.example.FailJob' is no longer available"):
        await queue.enqueue(db, "jobs.example.FailJob", user=ADMIN)
    await queue.enqueue(db, "jobs.example.DummyJob", user=ADMIN)

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
