"""The job commands: ``enqueue``, ``queue``, ``journal``, ``show``, ``follow``, ``log``, ``kill``,
``restart``, ``remove``, ``jobs``, ``stats`` and ``workers``.

Two layers:

- In-process through click's CliRunner against this test's database (no
  worker: the jobs stay pending unless a command ends them). Plain sync
  tests; the command line runs ``asyncio.run`` itself.
- End to end: one ``jobdeck up`` (embedded database, server and worker) for
  the module, driven by ``python -m jobdeck ...`` subprocesses.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import httpx
import psutil
import pytest
from bson import ObjectId
from click.testing import CliRunner, Result

import jobdeck.jobs  # noqa: F401  (registers the commands)
import jobdeck.service  # noqa: F401  (registers the commands)
import jobdeck.users  # noqa: F401  (registers the commands)
from core import queue, registry
from core.config import Config
from core.db import Database
from core.states import State, transition
from jobdeck.cli import cli
from tests.conftest import clean_env, free_port, in_database, wait_until
from tests.test_embedded import processes_using

T = TypeVar("T")
HEX_ID = re.compile(r"^[0-9a-f]{24}$")
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
EXAMPLES = {"jobs.example.DummyJob", "jobs.example.FailJob", "jobs.example.DeferJob",
            "jobs.example.ChattyJob", "jobs.example.StubbornJob"}
DUMMY = "jobs.example.DummyJob"
FAIL = "jobs.example.FailJob"


# =====================================================================================
# A. In process, through CliRunner, against the test database
# =====================================================================================

@pytest.fixture
def run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, config: Config,
        cli_env: dict[str, str]) -> Iterator[Callable[..., Result]]:
    """``run("queue", "--json")``: the real command group against this test's database.

    The database is set up and the registry synced (as ``up`` does), no
    JOBDECK_* settings or ./jobdeck.toml leak in, and the database is dropped
    afterwards.
    """
    for name in list(os.environ):
        if name.startswith("JOBDECK_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)

    async def prepare(db: Database) -> None:
        await db.setup(log_retention_days=config.log_retention_days)
        await registry.sync(db, registry.discover())
    in_database(config, prepare)

    runner = CliRunner()

    def invoke(*args: str, input: str | None = None) -> Result:
        return runner.invoke(cli, list(args), env=cli_env, prog_name="jobdeck", input=input)
    yield invoke
    in_database(config, lambda db: db.client.drop_database(config.database))


def ok(result: Result) -> str:
    assert result.exit_code == 0, f"exit {result.exit_code}: {result.output}\n{result.exception!r}"
    return result.stdout


def fails(result: Result, *fragments: str, code: int | None = None) -> str:
    """Assert a clean non-zero exit (no traceback) whose output contains every fragment."""
    assert result.exit_code != 0, result.output
    if code is not None:
        assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output, result.output
    for fragment in fragments:
        assert fragment in result.output, f"{fragment!r} not in {result.output!r}"
    return result.output


def as_json(result: Result) -> Any:
    return json.loads(ok(result))


def enqueued(run: Callable[..., Result], *args: str) -> str:
    job_id = ok(run("enqueue", *args)).strip()
    assert HEX_ID.match(job_id), job_id
    return job_id


def shown(run: Callable[..., Result], job_id: str) -> dict[str, Any]:
    return as_json(run("show", job_id, "--json"))


# --- enqueue -------------------------------------------------------------------------

def test_enqueue_prints_the_new_job_id(run: Callable[..., Result]) -> None:
    job_id = enqueued(run, DUMMY, "sleep=2", "message=hi")
    job = shown(run, job_id)
    assert job["_id"] == job_id and job["state"] == "pending" and job["journal"] is False


def test_enqueue_json_prints_one_pending_job_document(run: Callable[..., Result]) -> None:
    job = as_json(run("enqueue", DUMMY, "sleep=2", "message=hi", "--json"))
    assert HEX_ID.match(job["_id"])
    assert job["qual_name"] == DUMMY and job["state"] == "pending"
    assert job["args"] == {"sleep": 2, "message": "hi"}
    assert job["trial"] == 0 and job["attempts"] == job["attempts_left"] == 1
    assert ISO_UTC.match(job["enqueued"]["at"]) and job["enqueued"]["username"].startswith("cli")
    assert shown(run, job["_id"])["args"] == {"sleep": 2, "message": "hi"}


def test_enqueue_reads_name_value_pairs_by_the_job_s_schema(run: Callable[..., Result]) -> None:
    # message is a str: its text as it is, digits and quotes too; sleep is a float: JSON.
    job = as_json(run("enqueue", DUMMY, "message=202611", "sleep=0.5", "--json"))
    assert job["args"] == {"message": "202611", "sleep": 0.5}
    job = as_json(run("enqueue", DUMMY, 'message="quoted"', "--json"))
    assert job["args"] == {"message": '"quoted"'}


def test_enqueue_accepts_one_json_object_as_the_arguments(run: Callable[..., Result]) -> None:
    job = as_json(run("enqueue", DUMMY, '{"sleep": 0.5, "message": "from json"}', "--json"))
    assert job["args"] == {"sleep": 0.5, "message": "from json"}


def test_enqueue_options_land_in_the_job_document(run: Callable[..., Result]) -> None:
    job = as_json(run("enqueue", DUMMY, "--attempts", "3", "--priority", "7", "--wall-time", "12.5",
                      "--error-time", "4", "--defer-time", "5", "--defer-max", "600", "--json"))
    assert (job["attempts"], job["attempts_left"], job["priority"]) == (3, 3, 7)
    assert (job["wall_time"], job["error_time"], job["defer_time"], job["defer_max"]) == (12.5, 4, 5, 600)
    stored = shown(run, job["_id"])
    assert {k: stored[k] for k in ("attempts", "priority", "wall_time", "error_time", "defer_time",
                                   "defer_max")} == {"attempts": 3, "priority": 7, "wall_time": 12.5,
                                                     "error_time": 4, "defer_time": 5, "defer_max": 600}


@pytest.mark.parametrize("args, fragments", [
    ([f"{DUMMY[:-8]}NoSuchJob"], ["unknown job", "NoSuchJob"]),
    ([DUMMY, 'sleep="x"'], ["'sleep' must be a number", "'x'"]),
    ([DUMMY, "sleep=abc"], ["'sleep' must be a number", "'abc'"]),
    ([DUMMY, "colour=red"], ["unknown 'colour'", "sleep"]),
    ([DUMMY, "foo"], ["bad job argument 'foo'", "NAME=VALUE"]),
    ([DUMMY, "{bad"], ["not valid JSON"]),
    ([DUMMY, "[1, 2]"], ["bad job argument"]),
    ([DUMMY, "--attempts", "0"], ["'attempts' must be between 1"]),
    ([DUMMY, "--wall-time", "0"], ["'wall_time' must be between"]),
], ids=["unknown-qual-name", "wrong-type", "bare-word-for-float", "unknown-argument",
        "malformed-pair", "malformed-json", "json-not-object", "attempts-0", "wall-time-0"])
def test_enqueue_rejects_bad_input_with_a_message_and_enqueues_nothing(
        run: Callable[..., Result], args: list[str], fragments: list[str]) -> None:
    fails(run("enqueue", *args), *fragments, code=1)
    assert as_json(run("queue", "--json"))["total_count"] == 0


def test_enqueue_with_a_non_integer_priority_is_a_usage_error(run: Callable[..., Result]) -> None:
    fails(run("enqueue", DUMMY, "--priority", "x"), "Invalid value for '--priority'", code=2)
    assert as_json(run("queue", "--json"))["total_count"] == 0


@pytest.mark.parametrize("command", ["show", "kill", "remove", "restart", "log", "follow"])
def test_job_commands_reject_a_malformed_id(run: Callable[..., Result], command: str) -> None:
    fails(run(command, "123"), "bad job id '123'", "24 hexadecimal", code=1)


@pytest.mark.parametrize("command", ["show", "kill", "remove", "restart", "log", "follow"])
def test_job_commands_say_no_job_for_an_unknown_id(run: Callable[..., Result], command: str) -> None:
    unknown = str(ObjectId())
    fails(run(command, unknown), f"no job {unknown}", code=1)


# --- enqueue later, and many ----------------------------------------------------------

def query_at(config: Config, ids: list[str]) -> list[datetime]:
    async def read(db: Database) -> list[datetime]:
        found = {str(job["_id"]): job["query_at"] for job in await db.queue.find(
            {"_id": {"$in": [ObjectId(i) for i in ids]}}, {"query_at": 1}).to_list()}
        return [found[i] for i in ids]
    return in_database(config, read)


def test_enqueue_in_and_at_set_when_the_job_may_first_start(run: Callable[..., Result], config: Config) -> None:
    now = datetime.now(timezone.utc)
    later = (now + timedelta(days=1)).replace(microsecond=0)
    delayed = enqueued(run, DUMMY, "--in", "600")
    timed = enqueued(run, DUMMY, "--at", later.replace(tzinfo=None).isoformat())
    first, second = query_at(config, [delayed, timed])
    assert abs((first - now).total_seconds() - 600) < 10
    assert second == later  # without a zone: UTC
    fails(run("enqueue", DUMMY, "--in", "5", "--at", later.isoformat()), "give delay or run_at, not both", code=1)
    fails(run("enqueue", DUMMY, "--at", "soon"), "run_at must be an ISO 8601 time", code=1)
    fails(run("enqueue", DUMMY, "--in", "-1"), "delay must be a number of seconds from 0", code=1)
    assert as_json(run("queue", "--json"))["total_count"] == 2


def lines(*jobs: Any) -> str:
    return "".join((job if isinstance(job, str) else json.dumps(job)) + "\n" for job in jobs)


def test_enqueue_from_a_file_prints_the_ids_in_order(run: Callable[..., Result], config: Config,
                                                     tmp_path: Path) -> None:
    source = tmp_path / "jobs.jsonl"
    source.write_text(lines({"qual_name": DUMMY, "args": {"message": "one"}}, "",
                            {"qual_name": FAIL, "priority": 3}, {"qual_name": DUMMY, "delay": 60}))
    ids = ok(run("enqueue", "--from", str(source), "--priority", "1")).split()
    assert len(ids) == 3 and all(HEX_ID.match(i) for i in ids)
    jobs = [shown(run, i) for i in ids]
    assert [(job["qual_name"], job["priority"]) for job in jobs] == [(DUMMY, 1), (FAIL, 3), (DUMMY, 1)]
    assert jobs[0]["args"] == {"message": "one"}
    now = datetime.now(timezone.utc)
    assert [abs((moment - now).total_seconds()) < 60 + 10 for moment in query_at(config, ids)] == [True] * 3
    assert query_at(config, ids)[2] > now + timedelta(seconds=30)


def test_enqueue_from_stdin_with_json_prints_a_list(run: Callable[..., Result]) -> None:
    ids = as_json(run("enqueue", "--from", "-", "--json", "--in", "30",
                      input=lines({"qual_name": DUMMY}, {"qual_name": DUMMY, "run_at": "2026-01-01T00:00:00Z"})))
    assert len(ids) == 2 and all(HEX_ID.match(i) for i in ids)
    assert [job["_id"] for job in as_json(run("queue", "--json", "--sort", "_id"))["items"]] == ids


@pytest.mark.parametrize(("bad", "fragments"), [
    ("{not json", ["line 3: not valid JSON"]),
    ('["a list"]', ["line 3: expected a JSON object, got list"]),
    (json.dumps({"qual_name": DUMMY, "args": {"sleep": "long"}}), ["line 3: bad arguments", "'sleep' must be a number",
                                                                   "nothing was enqueued"]),
    (json.dumps({"qual_name": "jobs.example.Nothing"}), ["line 3: unknown job 'jobs.example.Nothing'"]),
], ids=["json", "not-an-object", "arguments", "unknown-class"])
def test_enqueue_from_a_bad_line_names_it_and_enqueues_nothing(run: Callable[..., Result], bad: str,
                                                               fragments: list[str]) -> None:
    fails(run("enqueue", "--from", "-", input=lines({"qual_name": DUMMY}, "", bad, {"qual_name": DUMMY})),
          *fragments, code=1)
    assert as_json(run("queue", "--json"))["total_count"] == 0


def test_enqueue_from_writes_batches_of_1000_and_a_bad_line_keeps_the_batches_before_it(
        run: Callable[..., Result], config: Config) -> None:
    good = [{"qual_name": DUMMY, "args": {"message": str(n)}} for n in range(1002)]
    result = run("enqueue", "--from", "-", input=lines(*good[:1001], {"qual_name": DUMMY, "colour": "red"}, good[1001]))
    output = fails(result, "line 1002: unknown field 'colour'", "the 1000 jobs of the lines before line 1001 are "
                   "enqueued", code=1)
    assert len([line for line in output.splitlines() if HEX_ID.match(line)]) == 1000
    assert in_database(config, lambda db: db.queue.count_documents({})) == 1000


def test_enqueue_from_takes_no_qual_name(run: Callable[..., Result]) -> None:
    fails(run("enqueue", DUMMY, "--from", "-", input=""), "--from takes neither QUAL_NAME", code=2)
    fails(run("enqueue"), "give QUAL_NAME, or --from FILE", code=2)


# --- queue ---------------------------------------------------------------------------

def test_queue_lists_pending_jobs_highest_priority_first(run: Callable[..., Result]) -> None:
    low = enqueued(run, DUMMY, "sleep=2")
    high = enqueued(run, FAIL, "--priority", "5")
    result = run("queue")
    lines = ok(result).splitlines()
    assert lines[0].split() == ["_ID", "QUAL_NAME", "STATE", "PRIORITY", "TRIAL", "ATTEMPTS_LEFT",
                                "PROGRESS", "ENQUEUED_AT"]
    assert [line.split()[:4] for line in lines[1:]] == [[high, FAIL, "pending", "5"],
                                                       [low, DUMMY, "pending", "0"]]
    assert "2 of 2 jobs" in result.stderr


def test_queue_json_is_one_document_with_items_and_total_count(run: Callable[..., Result]) -> None:
    first = enqueued(run, DUMMY)
    second = enqueued(run, DUMMY, "message=two")
    page = as_json(run("queue", "--json"))
    assert page["total_count"] == 2 and page["count"] == 2 and page["page"] == 0
    assert [job["_id"] for job in page["items"]] == [first, second]
    assert all(ISO_UTC.match(job["enqueued"]["at"]) for job in page["items"])


def test_queue_narrows_by_state_search_and_filter(run: Callable[..., Result]) -> None:
    dummy = enqueued(run, DUMMY)
    urgent = enqueued(run, FAIL, "--priority", "3")

    def ids(*options: str) -> list[str]:
        return [job["_id"] for job in as_json(run("queue", "--json", *options))["items"]]

    assert ids("--state", "pending") == [urgent, dummy]
    assert ids("--state", "running,failed") == []
    assert ids("--search", "Fail") == [urgent]
    assert ids("--search", "*.Dummy?ob") == [dummy]
    assert ids("--filter", '{"priority": {"$gt": 0}}') == [urgent]
    assert ids("--per-page", "1", "--page", "1") == [dummy]


@pytest.mark.parametrize("options, fragments", [
    (["--filter", '{"$where": "1"}'], ["$where"]),
    (["--filter", '{"priority": {"$function": {}}}'], ["$function"]),
    (["--filter", '{"nosuchfield": 1}'], ["unknown field 'nosuchfield'"]),
    (["--filter", "{bad"], ["--filter is not valid JSON"]),
    (["--per-page", "0"], ["per_page must be between 1 and"]),
    (["--state", "complete"], ["state 'complete' is not one of"]),
], ids=["where", "function", "unknown-field", "bad-json", "per-page-0", "final-state"])
def test_queue_rejects_unsafe_filters_and_bad_paging(run: Callable[..., Result], options: list[str],
                                                     fragments: list[str]) -> None:
    enqueued(run, DUMMY)
    fails(run("queue", *options), *fragments, code=1)


# --- show, kill, remove, restart -------------------------------------------------------

def test_show_prints_a_pending_job_for_people_and_as_json(run: Callable[..., Result]) -> None:
    job_id = enqueued(run, DUMMY, "sleep=2", "message=hi")
    text = ok(run("show", job_id))
    fields = dict(line.split(None, 1) for line in text.splitlines() if line[:1].isalpha())
    assert fields["id:"] == job_id and fields["qual_name:"] == DUMMY
    assert fields["state:"] == "pending" and fields["journal:"] == "no"
    assert json.loads(fields["args:"]) == {"sleep": 2, "message": "hi"}
    job = shown(run, job_id)
    assert job["state"] == "pending" and job["journal"] is False and job["locked"] is None
    assert "unique_key" not in job


def test_kill_of_pending_job_journals_it_and_a_second_kill_names_its_final_state(
        run: Callable[..., Result]) -> None:
    job_id = enqueued(run, DUMMY)
    assert ok(run("kill", job_id)).strip() == f"{job_id}: killed"
    job = shown(run, job_id)
    assert job["state"] == "killed" and job["journal"] is True
    assert ISO_UTC.match(job["killed_at"]) and job["removed_at"] is None
    fails(run("kill", job_id), job_id, "it has finished as killed", code=1)


def test_remove_of_several_pending_jobs_removes_each(run: Callable[..., Result]) -> None:
    first, second = enqueued(run, DUMMY), enqueued(run, FAIL)
    assert ok(run("remove", first, second)).splitlines() == [f"{first}: removed", f"{second}: removed"]
    for job_id in (first, second):
        job = shown(run, job_id)
        assert job["state"] == "killed" and job["journal"] is True and ISO_UTC.match(job["removed_at"])
    assert as_json(run("queue", "--json"))["total_count"] == 0
    fails(run("remove", first), "it has finished as killed (removed)")


def test_kill_reports_each_id_and_fails_if_any_failed(run: Callable[..., Result]) -> None:
    job_id = enqueued(run, DUMMY)
    result = run("kill", "123", job_id)
    fails(result, "123: bad job id", code=1)
    assert result.stdout.strip() == f"{job_id}: killed"


@pytest.mark.parametrize("command", ["kill", "remove"])
def test_kill_and_remove_exit_2_when_a_running_job_has_not_stopped_when_the_wait_ends(
        run: Callable[..., Result], config: Config, cli_env: dict[str, str], command: str) -> None:
    job_id = enqueued(run, DUMMY)

    async def claim(db: Database) -> None:  # a worker that then never acts (hung, or its host is cut off)
        job = await queue.get(db, job_id, user=queue.operator("test"))
        now = datetime.now(timezone.utc)
        await transition(db, job, State.RUNNING, trial=1, started_at=now,
                         locked={"worker": "w", "pid": None, "at": now, "heartbeat": now})
    in_database(config, claim)
    cli_env.update(JOBDECK_KILL_GRACE_SECONDS="0", JOBDECK_LEASE_SECONDS="1", JOBDECK_HEARTBEAT_SECONDS="0.5")

    result = run(command, job_id)

    assert result.exit_code == 2, result.output
    assert f"{job_id}: {'killed' if command == 'kill' else 'removed'} requested, but it is still running" \
        in result.stdout
    assert shown(run, job_id)["state"] == "running"


def test_restart_of_killed_job_enqueues_a_child_linked_by_parent_id(run: Callable[..., Result]) -> None:
    old = enqueued(run, DUMMY, "sleep=2", "--priority", "4")
    ok(run("kill", old))
    line = ok(run("restart", old)).strip()
    match = re.fullmatch(rf"{old} -> ([0-9a-f]{{24}})", line)
    assert match, line
    new = match.group(1)
    assert new != old
    child = shown(run, new)
    assert child["state"] == "pending" and child["enqueued"]["parent_id"] == old
    assert child["args"] == {"sleep": 2} and child["priority"] == 4
    assert shown(run, old)["enqueued"]["child_id"] == new
    fails(run("restart", old), f"already restarted as {new}", code=1)


def test_restart_json_maps_each_old_id_to_the_job_that_will_run(run: Callable[..., Result]) -> None:
    killed, pending = enqueued(run, DUMMY, "sleep=2"), enqueued(run, DUMMY)
    ok(run("kill", killed))
    result = run("restart", killed, pending, "--json")
    assert result.exit_code == 1 and f"{pending}: cannot restart" in result.stderr
    [line] = result.stdout.splitlines()
    restarted = json.loads(line)
    assert restarted["restarted"] == killed and restarted["state"] == "pending"
    assert shown(run, restarted["_id"])["enqueued"]["parent_id"] == killed


def test_restart_of_pending_job_is_refused(run: Callable[..., Result]) -> None:
    job_id = enqueued(run, DUMMY)
    fails(run("restart", job_id), "cannot restart", "it is pending", code=1)
    assert shown(run, job_id)["state"] == "pending"


# --- journal, jobs, stats, workers ----------------------------------------------------

def test_journal_lists_the_killed_jobs(run: Callable[..., Result]) -> None:
    killed, removed, pending = enqueued(run, DUMMY), enqueued(run, FAIL), enqueued(run, DUMMY)
    ok(run("kill", killed))
    ok(run("remove", removed))
    lines = ok(run("journal")).splitlines()
    assert lines[0].split() == ["_ID", "QUAL_NAME", "STATE", "TRIAL", "RUNTIME", "FINISHED_AT", "REMOVED"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(rows) == {killed, removed}
    assert rows[killed][2] == "killed" and rows[killed][-1] == "no"
    assert rows[removed][2] == "killed" and rows[removed][-1] == "yes"

    page = as_json(run("journal", "--json", "--state", "killed"))
    assert page["total_count"] == 2
    assert {job["_id"] for job in page["items"]} == {killed, removed}
    assert pending not in {job["_id"] for job in page["items"]}
    assert as_json(run("journal", "--json", "--state", "complete"))["total_count"] == 0
    only = as_json(run("journal", "--json", "--qual-name", FAIL))
    assert [job["_id"] for job in only["items"]] == [removed]


def test_jobs_lists_the_example_jobs_with_their_arguments(run: Callable[..., Result]) -> None:
    lines = ok(run("jobs")).splitlines()
    assert lines[0].split() == ["QUAL_NAME", "ARGUMENTS", "WORKERS", "DOC"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert EXAMPLES <= set(rows)
    assert "sleep: float = 3, loop_time: float = 0.5, message: str = \"dummy\"" in rows[DUMMY]
    assert "Sleeps for a while" in rows[DUMMY]
    assert " none " in rows[DUMMY]  # no worker runs here: its jobs would wait

    entries = {entry["qual_name"]: entry for entry in as_json(run("jobs", "--json"))}
    assert EXAMPLES <= set(entries)
    params = {p["name"]: p for p in entries[DUMMY]["schema"]["params"]}
    assert list(params) == ["sleep", "loop_time", "message"]
    assert params["sleep"]["type"] == "float" and params["sleep"]["default"] == 3
    assert entries[DUMMY]["valid"] is True and ISO_UTC.match(entries[DUMMY]["updated_at"])
    assert entries[DUMMY]["workers"] == []


def test_stats_json_counts_match_the_queue_and_the_journal(run: Callable[..., Result]) -> None:
    enqueued(run, DUMMY)
    enqueued(run, FAIL)
    killed = enqueued(run, DUMMY)
    ok(run("kill", killed))
    found = as_json(run("stats", "--json"))
    assert found["queue"] == {"pending": 2, "running": 0, "deferred": 0, "failed": 0}
    assert found["journal"] == {"complete": 0, "error": 0, "inactive": 0, "killed": 1}
    assert found["queue"]["pending"] == as_json(run("queue", "--json"))["total_count"]
    assert found["journal"]["killed"] == as_json(run("journal", "--json"))["total_count"]
    assert found["workers_alive"] == 0 and found["running_per_worker"] == {}
    assert found["oldest_pending_seconds"] >= 0
    assert found["finished_per_minute"]["last_minute"] == 1
    assert ok(run("stats")).splitlines()[:2] == ["queue:    pending 2  running 0  deferred 0  failed 0",
                                                "journal:  complete 0  error 0  inactive 0  killed 1"]


def test_workers_json_is_an_empty_list_without_workers(run: Callable[..., Result]) -> None:
    assert as_json(run("workers", "--json")) == []
    assert ok(run("workers")).split() == ["_ID", "ALIVE", "SLOTS", "RUNNING", "TAGS", "HEARTBEAT", "STARTED"]


# =====================================================================================
# B. End to end: `jobdeck up` and `python -m jobdeck ...` processes
# =====================================================================================

JOBDECK = [sys.executable, "-m", "jobdeck"]


class Deck:
    """One ``jobdeck up`` in its own data dir, and ``jobdeck`` commands run against it."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        port = free_port()
        self.base = f"http://127.0.0.1:{port}/api/v1"
        self.env = clean_env(JOBDECK_DATA_DIR=str(data_dir), JOBDECK_PORT=str(port),
                             JOBDECK_ADMIN_PASSWORD="hans", JOBDECK_LEASE_SECONDS="4",
                             JOBDECK_HEARTBEAT_SECONDS="1", JOBDECK_KILL_GRACE_SECONDS="1",
                             JOBDECK_SHUTDOWN_GRACE_SECONDS="5")
        self.up: subprocess.Popen[str] | None = None

    def start(self) -> None:
        """Start ``up`` unless it runs; return when GET /health answers."""
        if self.up is not None and self.up.poll() is None:
            return
        self.stderr = open(self.data_dir / "up.stderr", "a")
        self.up = subprocess.Popen(JOBDECK + ["up"], env=self.env, cwd=self.data_dir,
                                   stdout=subprocess.DEVNULL, stderr=self.stderr, text=True)

        def healthy() -> bool:
            assert self.up.poll() is None, f"jobdeck up exited with {self.up.returncode}: {self.log()}"
            try:
                return httpx.get(self.base + "/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False
        wait_until(healthy, timeout=60, message="GET /health of jobdeck up")

    def stop(self, sig: int = signal.SIGINT) -> int:
        """Signal ``up`` and return its exit code."""
        assert self.up is not None
        self.up.send_signal(sig)
        try:
            return self.up.wait(60)
        finally:
            self.stderr.close()

    def log(self) -> str:
        return (self.data_dir / "up.stderr").read_text()

    def __call__(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run ``jobdeck ARGS`` to its end."""
        return subprocess.run(JOBDECK + list(args), env=self.env, cwd=self.data_dir,
                              capture_output=True, text=True, timeout=timeout)

    def ok(self, *args: str) -> str:
        done = self(*args)
        assert done.returncode == 0, f"jobdeck {' '.join(args)}: exit {done.returncode}\n{done.stdout}{done.stderr}"
        return done.stdout

    def job(self, job_id: str) -> dict[str, Any]:
        """The job as ``jobdeck show ID --json`` prints it."""
        return json.loads(self.ok("show", job_id, "--json"))

    def running(self, *args: str) -> tuple[str, int]:
        """Enqueue a job; return its id and the pid of its process once it runs."""
        job_id = self.ok("enqueue", *args).strip()

        def started() -> int | None:
            job = self.job(job_id)
            assert job["state"] in ("pending", "running"), job
            return job["state"] == "running" and (job.get("locked") or {}).get("pid")
        pid = wait_until(started, timeout=30, interval=0.1, message=f"job {job_id} to run")
        return job_id, pid

    def close(self) -> None:
        if self.up is not None and self.up.poll() is None:
            self.up.kill()
            self.up.wait(30)
            self.stderr.close()


@pytest.fixture(scope="module")
def deck_for_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deck]:
    deck = Deck(tmp_path_factory.mktemp("deck"))
    yield deck
    deck.close()
    wait_until(lambda: not processes_using(deck.data_dir), timeout=30,
               message="no process using the data dir")


@pytest.fixture
def deck(deck_for_module: Deck) -> Deck:
    """The module's ``jobdeck up``, started (again, if a test stopped it)."""
    deck_for_module.start()
    return deck_for_module


def is_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_enqueue_follow_shows_progress_and_log_lines_and_exits_0_when_complete(deck: Deck) -> None:
    done = deck("enqueue", DUMMY, "sleep=1", "--follow")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "progress" in done.stdout and "step" in done.stdout
    last = done.stdout.strip().splitlines()[-1]
    match = re.fullmatch(r"=== ([0-9a-f]{24}) complete after [\d.]+ s", last)
    assert match, done.stdout
    job_id = match.group(1)
    assert f"{job_id} running (trial 1)" in done.stdout

    text = deck.ok("show", job_id)
    assert re.search(r"^state:\s+complete$", text, re.M) and re.search(r"^journal:\s+yes$", text, re.M)
    job = deck.job(job_id)
    assert job["state"] == "complete" and job["journal"] is True
    assert job["result"]["slept"] == 1 and job["prog"]["value"] == 1


def test_enqueue_follow_json_prints_the_final_job_document(deck: Deck) -> None:
    done = deck("enqueue", DUMMY, "sleep=0.2", "--follow", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    job = json.loads(done.stdout)
    assert job["state"] == "complete" and job["journal"] is True and job["trial"] == 1


def test_enqueue_follow_of_failing_job_prints_the_traceback_and_exits_1(deck: Deck) -> None:
    done = deck("enqueue", FAIL, "--attempts", "2", "--error-time", "0.2", "--follow")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" in done.stdout and "RuntimeError: this job fails on purpose" in done.stdout
    assert "about to fail (trial 1)" in done.stdout and "about to fail (trial 2)" in done.stdout
    job_id = re.search(r"^=== ([0-9a-f]{24}) error", done.stdout, re.M).group(1)
    job = deck.job(job_id)
    assert job["state"] == "error" and job["trial"] == 2 and job["attempts_left"] == 0
    assert job["last_error"]["exception"] == "RuntimeError"


def test_kill_ends_a_running_job_and_its_process_and_restart_makes_a_linked_child(deck: Deck) -> None:
    job_id, pid = deck.running(DUMMY, "sleep=30")
    assert not is_gone(pid)
    started = time.monotonic()
    assert deck.ok("kill", job_id).strip() == f"{job_id}: killed"
    assert time.monotonic() - started < 10
    job = deck.job(job_id)
    assert job["state"] == "killed" and job["journal"] is True and job["locked"] is None
    wait_until(lambda: is_gone(pid), timeout=5, message=f"job process {pid} to end")

    line = deck.ok("restart", job_id).strip()
    match = re.fullmatch(rf"{job_id} -> ([0-9a-f]{{24}})", line)
    assert match, line
    child_id = match.group(1)
    child = deck.job(child_id)
    assert child["enqueued"]["parent_id"] == job_id and child["args"] == {"sleep": 30}
    assert deck.job(job_id)["enqueued"]["child_id"] == child_id
    deck.ok("kill", child_id)  # the child runs 30 s: do not leave it to the next test


def test_follow_of_finished_job_prints_its_log_and_exits_with_its_final_state(deck: Deck) -> None:
    complete = deck("enqueue", DUMMY, "sleep=0.2", "--follow", "--json")
    error = deck("enqueue", FAIL, "--follow", "--json")
    assert (complete.returncode, error.returncode) == (0, 1), complete.stderr + error.stderr
    killed, _ = deck.running(DUMMY, "sleep=30")
    deck.ok("kill", killed)
    ids = {"complete": json.loads(complete.stdout)["_id"], "error": json.loads(error.stdout)["_id"],
           "killed": killed}

    for state, code, line in [("complete", 0, "step 0"), ("error", 1, "about to fail"),
                              ("killed", 3, "step 0")]:
        done = deck("follow", ids[state])
        assert done.returncode == code, f"{state}: {done.stdout}{done.stderr}"
        assert line in done.stdout
        assert re.search(rf"^=== {ids[state]} {state} after [\d.]+ s$", done.stdout, re.M), done.stdout
        if state == "error":
            assert "RuntimeError: this job fails on purpose" in done.stdout


def test_log_prints_the_lines_and_log_json_prints_records_in_seq_order(deck: Deck) -> None:
    done = deck("enqueue", DUMMY, "sleep=1", "message=logged", "--follow", "--json")
    assert done.returncode == 0, done.stderr
    job_id = json.loads(done.stdout)["_id"]

    lines = deck.ok("log", job_id).splitlines()
    assert "logged: sleeping 1 s" in lines[0]
    assert any("logged: step 1" in line for line in lines)
    assert all(re.match(r"\d\d:\d\d:\d\d\.\d{3} INFO ", line) for line in lines)

    records = [json.loads(line) for line in deck.ok("log", job_id, "--json").splitlines()]
    assert len(records) == len(lines)
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    assert all(r["job_id"] == job_id and r["trial"] == 1 and r["level"] == "INFO" for r in records)
    assert all(ISO_UTC.match(r["created"]) for r in records), records[0]
    assert [r["message"] for r in records] == [line.split(None, 2)[2] for line in lines]


def test_workers_json_shows_the_worker_of_up_alive_and_stats_runs(deck: Deck) -> None:
    workers = json.loads(deck.ok("workers", "--json"))
    assert len(workers) == 1
    worker = workers[0]
    assert worker["alive"] is True and worker["pid"] == deck.up.pid and worker["slots"] >= 1
    assert EXAMPLES <= set(worker["jobs"])
    assert ISO_UTC.match(worker["heartbeat"])

    text = deck.ok("stats")
    assert "workers alive: 1" in text and text.startswith("queue:")
    found = json.loads(deck.ok("stats", "--json"))
    assert found["workers_alive"] == 1


def test_up_stops_on_sigint_with_exit_0_and_leaves_no_process_behind(deck: Deck) -> None:
    assert deck.stop(signal.SIGINT) == 0, deck.log()
    assert not processes_using(deck.data_dir), "a jobdeck or secantusd-py process was left behind"
