"""Queue operations without a worker: enqueue, get, kill, remove, restart, listing, stats, audit."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId

from core import journal, queue, registry, stats
from core.db import Database
from core.errors import BadArgument, Conflict, Forbidden, NotFound
from core.states import State, transition
from tests.conftest import forget_package, make_package

ADMIN = queue.operator("test")
READER = {"name": "reader", "roles": [], "perms": ["job:jobs.example.*:r"], "active": True}
DUMMY_READER = {"name": "dummies", "roles": [], "perms": ["job:jobs.example.Dummy*:r"], "active": True}
STRANGER = {"name": "stranger", "roles": [], "perms": [], "active": True}
DUMMY = "jobs.example.DummyJob"
FAIL = "jobs.example.FailJob"


@pytest.fixture
async def qdb(db: Database) -> Database:
    """The test database with the example jobs registered."""
    await registry.sync(db, registry.discover())
    return db


@pytest.fixture
async def unique_job(qdb: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The qual_name of a registered ``unique`` job class from a temporary job package."""
    package = make_package(tmp_path, monkeypatch, {"only": '''
        from __future__ import annotations

        from jobs import Job


        class OnlyOnce(Job):
            """At most one live job per argument set."""

            unique = True

            def execute(self, key: str = "a", n: int = 0) -> None:
                return None
    '''})
    await registry.sync(qdb, registry.discover([package]))
    yield f"{package}.only.OnlyOnce"
    forget_package(package)


async def running(db: Database, job: dict[str, Any]) -> dict[str, Any]:
    """``job`` claimed by a (pretend) worker."""
    now = datetime.now(timezone.utc)
    return await transition(db, job, State.RUNNING, trial=job["trial"] + 1, started_at=now,
                            locked={"worker": "w", "pid": None, "at": now, "heartbeat": now})


async def in_state(db: Database, state: State, qual_name: str = DUMMY, **options: Any) -> dict[str, Any]:
    """A job enqueued and moved through real transitions into ``state``."""
    job = await queue.enqueue(db, qual_name, {}, user=ADMIN, **options)
    if state is State.PENDING:
        return job
    job = await running(db, job)
    if state is State.RUNNING:
        return job
    now = datetime.now(timezone.utc)
    fields: dict[str, Any] = {"locked": None}
    if state is State.FAILED:
        fields.update(attempts_left=job["attempts_left"] - 1, query_at=now + timedelta(hours=1),
                      last_error={"exception": "RuntimeError", "message": "x", "traceback": None, "at": now})
    elif state is State.DEFERRED:
        fields.update(query_at=now + timedelta(hours=1))
    else:
        fields.update(finished_at=now)
    return await transition(db, job, state, **fields)


async def audit_of(db: Database, target: Any) -> list[dict[str, Any]]:
    return await db.audit.find({"target": str(target)}).sort("_id", 1).to_list()


# --- enqueue ------------------------------------------------------------------------------

async def test_enqueue_stores_a_pending_job_with_its_defaults(qdb: Database) -> None:
    job = await queue.enqueue(qdb, DUMMY, {"sleep": 1}, user=ADMIN)

    assert isinstance(job["_id"], ObjectId)
    stored = await qdb.queue.find_one({"_id": job["_id"]})
    for doc in (job, stored):
        assert doc["qual_name"] == DUMMY
        assert doc["args"] == {"sleep": 1}
        assert doc["state"] == "pending"
        assert doc["version"] == 1
        assert doc["trial"] == 0
        assert doc["attempts"] == doc["attempts_left"] == 1
        assert doc["priority"] == 0
        assert doc["wall_time"] is None
        assert doc["error_time"] == 60.0
        assert doc["enqueued"]["username"] == "test"
        assert doc["enqueued"]["parent_id"] is None and doc["enqueued"]["child_id"] is None
        assert doc["enqueued"]["hostname"]
        assert doc["locked"] is None and doc["result"] is None and doc["last_error"] is None
        assert doc["killed_at"] is None and doc["removed_at"] is None
        assert doc["prog"] == {"value": 0.0, "message": None}
        assert doc["query_at"] <= datetime.now(timezone.utc)
    assert await qdb.journal.count_documents({}) == 0


async def test_enqueue_options_override_the_class_defaults(qdb: Database) -> None:
    job = await queue.enqueue(qdb, "jobs.example.DeferJob", {"until": 2}, user=ADMIN, attempts=3,
                              priority=-5, wall_time=2, error_time=0, defer_max=10.5)

    assert job["attempts"] == job["attempts_left"] == 3
    assert job["priority"] == -5
    assert job["wall_time"] == 2.0 and isinstance(job["wall_time"], float)
    assert job["error_time"] == 0.0
    assert job["defer_time"] == 1.0, "DeferJob's own default"
    assert job["defer_max"] == 10.5


async def test_enqueue_of_an_unknown_qual_name_is_not_found(qdb: Database) -> None:
    with pytest.raises(NotFound, match="unknown job 'jobs.example.Nothing'"):
        await queue.enqueue(qdb, "jobs.example.Nothing", user=ADMIN)
    with pytest.raises(NotFound):
        await queue.enqueue(qdb, "os.system", {"command": "true"}, user=ADMIN)
    assert await qdb.queue.count_documents({}) == 0


async def test_enqueue_with_bad_args_is_a_bad_argument(qdb: Database) -> None:
    with pytest.raises(BadArgument, match="'sleep' must be a number"):
        await queue.enqueue(qdb, DUMMY, {"sleep": "long"}, user=ADMIN)
    with pytest.raises(BadArgument, match="unknown 'nap'"):
        await queue.enqueue(qdb, DUMMY, {"nap": 1}, user=ADMIN)
    assert await qdb.queue.count_documents({}) == 0


@pytest.mark.parametrize(("options", "named"), [
    ({"colour": "red"}, "colour"),
    ({"attempts": 0}, "attempts"),
    ({"attempts": 1.5}, "attempts"),
    ({"attempts": True}, "attempts"),
    ({"wall_time": -1}, "wall_time"),
    ({"wall_time": 0}, "wall_time"),
    ({"priority": "x"}, "priority"),
    ({"error_time": None}, "error_time"),
    ({"defer_max": float("nan")}, "defer_max"),
], ids=["unknown", "attempts-0", "attempts-fraction", "attempts-bool", "wall_time-negative",
        "wall_time-zero", "priority-text", "error_time-none", "defer_max-nan"])
async def test_enqueue_with_a_bad_option_names_it(qdb: Database, options: dict[str, Any], named: str) -> None:
    with pytest.raises(BadArgument, match=f"'{named}'"):
        await queue.enqueue(qdb, DUMMY, {}, user=ADMIN, **options)
    assert await qdb.queue.count_documents({}) == 0


async def test_enqueue_accepts_a_whole_float_for_an_integer_option(qdb: Database) -> None:
    job = await queue.enqueue(qdb, DUMMY, {}, user=ADMIN, attempts=2.0)
    assert job["attempts"] == 2 and isinstance(job["attempts"], int)


# --- permissions --------------------------------------------------------------------------

async def test_a_reader_may_get_but_not_enqueue_kill_remove_or_restart(qdb: Database) -> None:
    pending = await in_state(qdb, State.PENDING)
    killed = await in_state(qdb, State.KILLED)

    with pytest.raises(Forbidden, match="'reader' may not execute jobs.example.DummyJob"):
        await queue.enqueue(qdb, DUMMY, {}, user=READER)
    with pytest.raises(Forbidden):
        await queue.kill(qdb, pending["_id"], user=READER)
    with pytest.raises(Forbidden):
        await queue.remove(qdb, pending["_id"], user=READER)
    with pytest.raises(Forbidden):
        await queue.restart(qdb, killed["_id"], user=READER)

    assert (await queue.get(qdb, str(pending["_id"]), user=READER))["state"] == "pending"
    assert (await queue.get(qdb, str(killed["_id"]), user=READER))["journal"] is True
    assert await qdb.queue.count_documents({}) == 1
    assert (await qdb.queue.find_one({"_id": pending["_id"]}))["version"] == 1


async def test_a_job_the_caller_may_not_read_is_not_found_like_a_missing_one(qdb: Database) -> None:
    job = await in_state(qdb, State.PENDING)

    with pytest.raises(NotFound, match=f"no job {job['_id']}"):
        await queue.get(qdb, str(job["_id"]), user=STRANGER)
    with pytest.raises(NotFound):
        await queue.get(qdb, str(job["_id"]), user={**ADMIN, "active": False})
    for action in (queue.kill, queue.remove, queue.restart):
        with pytest.raises(NotFound):
            await action(qdb, str(job["_id"]), user=STRANGER)


async def test_a_caller_who_knew_the_job_and_lost_the_right_to_read_it_is_forbidden(qdb: Database) -> None:
    job = await in_state(qdb, State.PENDING)

    await queue.require_readable(qdb, str(job["_id"]), user=READER)
    with pytest.raises(Forbidden, match="'stranger' may not read"):
        await queue.require_readable(qdb, str(job["_id"]), user=STRANGER)
    finished = await in_state(qdb, State.KILLED)
    with pytest.raises(Forbidden):
        await queue.require_readable(qdb, finished["_id"], user=STRANGER)


async def test_an_executor_of_matching_jobs_may_enqueue_and_kill_them(qdb: Database) -> None:
    runner = {"name": "runner", "roles": [], "perms": ["job:jobs.example.Dummy*:x"], "active": True}
    job = await queue.enqueue(qdb, DUMMY, {}, user=runner)

    assert job["enqueued"]["username"] == "runner"
    assert (await queue.kill(qdb, job["_id"], user=runner))["state"] == "killed"
    with pytest.raises(Forbidden):
        await queue.enqueue(qdb, FAIL, {}, user=runner)


# --- uniqueness ---------------------------------------------------------------------------

async def test_a_unique_job_refuses_a_second_live_job_with_the_same_args(qdb: Database, unique_job: str) -> None:
    first = await queue.enqueue(qdb, unique_job, {"key": "k", "n": 1}, user=ADMIN)

    with pytest.raises(Conflict, match="unique") as caught:
        await queue.enqueue(qdb, unique_job, {"n": 1, "key": "k"}, user=ADMIN)
    assert caught.value.details["job_id"] == str(first["_id"])

    other = await queue.enqueue(qdb, unique_job, {"key": "k", "n": 2}, user=ADMIN)
    assert other["_id"] != first["_id"]
    assert await qdb.queue.count_documents({}) == 2


async def test_a_database_with_the_old_partial_unique_index_gets_the_sparse_one_and_stays_unique(
        qdb: Database, unique_job: str) -> None:
    """The embedded server reads the whole queue for a query on a partial index (0.9 s with 20,000 queued,
    against 3 ms on a sparse one): a database made before gets the sparse index at its next start."""
    await qdb.queue.drop_index("unique_key")
    await qdb.queue.create_index([("unique_key", 1)], name="unique_key", unique=True,
                                 partialFilterExpression={"unique_key": {"$exists": True}})
    first = await queue.enqueue(qdb, unique_job, {"key": "k"}, user=ADMIN)
    await qdb.setup(log_retention_days=1)
    index = (await qdb.queue.index_information())["unique_key"]
    assert index.get("sparse") and index.get("unique") and "partialFilterExpression" not in index
    with pytest.raises(Conflict) as caught:
        await queue.enqueue(qdb, unique_job, {"key": "k"}, user=ADMIN)
    assert caught.value.details["job_id"] == str(first["_id"])
    await queue.enqueue(qdb, "jobs.example.DummyJob", {}, user=ADMIN)  # jobs without a key: many
    await queue.enqueue(qdb, "jobs.example.DummyJob", {}, user=ADMIN)


async def test_a_unique_job_may_be_enqueued_again_once_the_first_has_finished(
        qdb: Database, unique_job: str) -> None:
    first = await queue.enqueue(qdb, unique_job, {"key": "k"}, user=ADMIN)
    await queue.kill(qdb, first["_id"], user=ADMIN)

    second = await queue.enqueue(qdb, unique_job, {"key": "k"}, user=ADMIN)

    assert second["_id"] != first["_id"]
    with pytest.raises(Conflict) as caught:
        await queue.enqueue(qdb, unique_job, {"key": "k"}, user=ADMIN)
    assert caught.value.details["job_id"] == str(second["_id"])


async def test_a_unique_job_that_was_killed_can_be_restarted_while_none_is_live(
        qdb: Database, unique_job: str) -> None:
    first = await queue.enqueue(qdb, unique_job, {"key": "k"}, user=ADMIN)
    await queue.kill(qdb, first["_id"], user=ADMIN)
    blocker = await queue.enqueue(qdb, unique_job, {"key": "k"}, user=ADMIN)

    with pytest.raises(Conflict):
        await queue.restart(qdb, first["_id"], user=ADMIN)
    old = await qdb.journal.find_one({"_id": first["_id"]})
    assert old["enqueued"]["child_id"] is None, "a failed restart leaves no dangling link"

    await queue.kill(qdb, blocker["_id"], user=ADMIN)
    child = await queue.restart(qdb, first["_id"], user=ADMIN)
    assert child["enqueued"]["parent_id"] == first["_id"]


async def test_get_does_not_show_the_unique_key(qdb: Database, unique_job: str) -> None:
    job = await queue.enqueue(qdb, unique_job, {"key": "k"}, user=ADMIN)
    assert "unique_key" not in await queue.get(qdb, str(job["_id"]), user=ADMIN)


# --- kill and remove ----------------------------------------------------------------------

async def test_kill_of_a_pending_job_journals_it_killed(qdb: Database) -> None:
    job = await in_state(qdb, State.PENDING)

    killed = await queue.kill(qdb, str(job["_id"]), user=ADMIN)

    assert killed["state"] == "killed"
    assert await qdb.queue.find_one({"_id": job["_id"]}) is None
    stored = await qdb.journal.find_one({"_id": job["_id"]})
    assert stored["state"] == "killed"
    assert stored["killed_at"] is not None and stored["finished_at"] is not None
    assert stored["removed_at"] is None
    assert stored["version"] == 2
    fetched = await queue.get(qdb, str(job["_id"]), user=ADMIN)
    assert fetched["journal"] is True and fetched["state"] == "killed"


@pytest.mark.parametrize("state", [State.FAILED, State.DEFERRED])
async def test_kill_of_a_waiting_job_journals_it_killed(qdb: Database, state: State) -> None:
    job = await in_state(qdb, state, attempts=2)

    await queue.kill(qdb, job["_id"], user=ADMIN)

    assert (await qdb.journal.find_one({"_id": job["_id"]}))["state"] == "killed"
    assert await qdb.queue.count_documents({}) == 0


async def test_kill_of_a_running_job_marks_it_for_its_worker(qdb: Database) -> None:
    job = await in_state(qdb, State.RUNNING)

    marked = await queue.kill(qdb, job["_id"], user=ADMIN)

    assert marked["state"] == "running"
    stored = await qdb.queue.find_one({"_id": job["_id"]})
    assert stored["state"] == "running"
    assert stored["killed_at"] is not None
    assert stored["version"] == job["version"] + 1
    again = await queue.kill(qdb, job["_id"], user=ADMIN)
    assert again["killed_at"] == stored["killed_at"], "a second kill keeps the first time"


@pytest.mark.parametrize("final", [State.COMPLETE, State.ERROR, State.INACTIVE, State.KILLED])
@pytest.mark.parametrize("action", ["kill", "remove"])
async def test_kill_or_remove_of_a_finished_job_is_a_conflict_naming_its_state(
        qdb: Database, final: State, action: str) -> None:
    job = await in_state(qdb, final)

    with pytest.raises(Conflict, match=f"finished as {final.value}") as caught:
        await getattr(queue, action)(qdb, job["_id"], user=ADMIN)
    assert caught.value.details["state"] == final.value
    assert (await qdb.journal.find_one({"_id": job["_id"]}))["version"] == job["version"]


async def test_remove_of_a_pending_job_journals_it_killed_and_removed(qdb: Database) -> None:
    job = await in_state(qdb, State.PENDING)

    removed = await queue.remove(qdb, job["_id"], user=ADMIN)

    assert removed["state"] == "killed"
    stored = await qdb.journal.find_one({"_id": job["_id"]})
    assert stored["state"] == "killed"
    assert stored["removed_at"] is not None and stored["killed_at"] is not None
    assert stored["finished_at"] is not None
    assert await qdb.queue.count_documents({}) == 0
    with pytest.raises(Conflict, match=r"finished as killed \(removed\)"):
        await queue.remove(qdb, job["_id"], user=ADMIN)


async def test_remove_of_a_running_job_marks_it_removed_for_its_worker(qdb: Database) -> None:
    job = await in_state(qdb, State.RUNNING)

    await queue.remove(qdb, job["_id"], user=ADMIN)

    stored = await qdb.queue.find_one({"_id": job["_id"]})
    assert stored["state"] == "running"
    assert stored["killed_at"] is not None and stored["removed_at"] is not None


# --- restart ------------------------------------------------------------------------------

@pytest.mark.parametrize("state", [State.FAILED, State.DEFERRED])
async def test_restart_of_a_failed_or_deferred_job_makes_it_pending_now_under_the_same_id(
        qdb: Database, state: State) -> None:
    job = await in_state(qdb, state, attempts=3)

    restarted = await queue.restart(qdb, str(job["_id"]), user=ADMIN)

    assert restarted["_id"] == job["_id"]
    assert restarted["state"] == "pending"
    stored = await qdb.queue.find_one({"_id": job["_id"]})
    assert stored["state"] == "pending"
    assert stored["query_at"] <= datetime.now(timezone.utc)
    assert stored["attempts_left"] == job["attempts_left"]
    assert await qdb.queue.count_documents({}) == 1
    assert await qdb.journal.count_documents({}) == 0


@pytest.mark.parametrize("state", [State.KILLED, State.ERROR, State.INACTIVE])
async def test_restart_of_a_killed_error_or_inactive_job_enqueues_a_child(qdb: Database, state: State) -> None:
    old = await in_state(qdb, state, attempts=2, priority=7)

    child = await queue.restart(qdb, old["_id"], user=ADMIN)

    assert child["_id"] != old["_id"]
    assert child["state"] == "pending"
    assert child["enqueued"]["parent_id"] == old["_id"]
    assert child["args"] == old["args"]
    assert child["priority"] == 7
    assert child["attempts"] == child["attempts_left"] == 2
    assert child["trial"] == 0
    assert (await qdb.queue.find_one({"_id": child["_id"]}))["enqueued"]["parent_id"] == old["_id"]
    parent = await qdb.journal.find_one({"_id": old["_id"]})
    assert parent["enqueued"]["child_id"] == child["_id"]
    assert parent["state"] == state.value


async def test_a_second_restart_of_the_same_finished_job_is_a_conflict(qdb: Database) -> None:
    old = await in_state(qdb, State.ERROR)
    child = await queue.restart(qdb, old["_id"], user=ADMIN)

    with pytest.raises(Conflict, match="already restarted") as caught:
        await queue.restart(qdb, old["_id"], user=ADMIN)
    assert caught.value.details["job_id"] == str(child["_id"])
    assert await qdb.queue.count_documents({}) == 1


@pytest.mark.parametrize("state", [State.PENDING, State.RUNNING, State.COMPLETE])
async def test_restart_of_a_pending_running_or_complete_job_is_a_conflict(qdb: Database, state: State) -> None:
    job = await in_state(qdb, state)

    with pytest.raises(Conflict, match=f"it is {state.value}") as caught:
        await queue.restart(qdb, job["_id"], user=ADMIN)
    assert caught.value.details["state"] == state.value
    assert await qdb.queue.count_documents({}) == (0 if state is State.COMPLETE else 1)


# --- ids ----------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", ["xyz", "g" * 24, "0" * 23, "0" * 25, 123, None, ["0" * 24]],
                         ids=["short", "not-hex", "23", "25", "int", "none", "list"])
@pytest.mark.parametrize("action", ["get", "kill", "remove", "restart"])
async def test_a_malformed_job_id_is_a_bad_argument(qdb: Database, action: str, bad: Any) -> None:
    with pytest.raises(BadArgument, match="bad job id"):
        await getattr(queue, action)(qdb, bad, user=ADMIN)


@pytest.mark.parametrize("action", ["get", "kill", "remove", "restart"])
async def test_an_unknown_job_id_is_not_found(qdb: Database, action: str) -> None:
    unknown = str(ObjectId())
    with pytest.raises(NotFound, match=unknown):
        await getattr(queue, action)(qdb, unknown, user=ADMIN)


# --- listing and stats --------------------------------------------------------------------

@pytest.fixture
async def mixed(qdb: Database) -> dict[str, list[dict[str, Any]]]:
    """3 pending DummyJobs, 1 running DummyJob, 2 pending FailJobs; 2 killed DummyJobs, 1 error FailJob."""
    made: dict[str, list[dict[str, Any]]] = {"dummy": [], "fail": [], "done": []}
    for _ in range(3):
        made["dummy"].append(await in_state(qdb, State.PENDING))
    made["dummy"].append(await in_state(qdb, State.RUNNING))
    for _ in range(2):
        made["fail"].append(await in_state(qdb, State.PENDING, FAIL))
    for _ in range(2):
        made["done"].append(await in_state(qdb, State.KILLED))
    made["done"].append(await in_state(qdb, State.ERROR, FAIL))
    return made


async def test_list_queue_filters_by_state_and_search(qdb: Database, mixed: dict[str, Any]) -> None:
    everything = await journal.list_queue(qdb, user=ADMIN, per_page=100)
    assert everything.total_count == 6
    assert all("unique_key" not in job for job in everything.items)

    pending = await journal.list_queue(qdb, user=ADMIN, state="pending", per_page=100)
    assert pending.total_count == 5
    assert {job["state"] for job in pending.items} == {"pending"}
    running = await journal.list_queue(qdb, user=ADMIN, state=["running"])
    assert [job["_id"] for job in running.items] == [mixed["dummy"][3]["_id"]]
    both = await journal.list_queue(qdb, user=ADMIN, state="pending,running")
    assert both.total_count == 6

    fails = await journal.list_queue(qdb, user=ADMIN, search="failjob")
    assert fails.total_count == 2
    assert {job["qual_name"] for job in fails.items} == {FAIL}
    assert (await journal.list_queue(qdb, user=ADMIN, search="*.Dummy*")).total_count == 4

    with pytest.raises(BadArgument, match="state 'killed' is not one of"):
        await journal.list_queue(qdb, user=ADMIN, state="killed")


async def test_list_queue_paginates_without_repeats_or_gaps(qdb: Database, mixed: dict[str, Any]) -> None:
    pages = [await journal.list_queue(qdb, user=ADMIN, page=n, per_page=4) for n in range(3)]

    assert [p.count for p in pages] == [4, 2, 0]
    assert all(p.total_count == 6 and p.page_count == 2 and p.per_page == 4 for p in pages)
    ids = [job["_id"] for p in pages for job in p.items]
    assert sorted(ids) == sorted(j["_id"] for j in mixed["dummy"] + mixed["fail"])
    last = await journal.list_queue(qdb, user=ADMIN, page=-1, per_page=4)
    assert last.page == 1 and [j["_id"] for j in last.items] == [j["_id"] for j in pages[1].items]


async def test_list_queue_shows_higher_priority_first(qdb: Database) -> None:
    low = await queue.enqueue(qdb, DUMMY, {}, user=ADMIN, priority=-1)
    high = await queue.enqueue(qdb, DUMMY, {}, user=ADMIN, priority=10)
    middle = await queue.enqueue(qdb, DUMMY, {}, user=ADMIN)

    listed = await journal.list_queue(qdb, user=ADMIN)

    assert [j["_id"] for j in listed.items] == [high["_id"], middle["_id"], low["_id"]]


async def test_listings_show_and_count_only_readable_jobs(qdb: Database, mixed: dict[str, Any]) -> None:
    live = await journal.list_queue(qdb, user=DUMMY_READER, per_page=100)
    assert live.total_count == 4
    assert {job["qual_name"] for job in live.items} == {DUMMY}
    assert (await journal.list_queue(qdb, user=DUMMY_READER, search="fail")).total_count == 0

    done = await journal.list_journal(qdb, user=DUMMY_READER, per_page=100)
    assert done.total_count == 2
    assert {job["qual_name"] for job in done.items} == {DUMMY}

    assert (await journal.list_queue(qdb, user=STRANGER)).total_count == 0
    assert (await journal.list_journal(qdb, user=STRANGER)).total_count == 0
    assert (await journal.list_queue(qdb, user=READER, per_page=100)).total_count == 6


async def test_list_journal_filters_by_state_qual_name_and_search(qdb: Database, mixed: dict[str, Any]) -> None:
    everything = await journal.list_journal(qdb, user=ADMIN, per_page=100)
    assert everything.total_count == 3
    finished = [job["finished_at"] for job in everything.items]
    assert finished == sorted(finished, reverse=True), "newest first"

    assert (await journal.list_journal(qdb, user=ADMIN, state="killed")).total_count == 2
    assert (await journal.list_journal(qdb, user=ADMIN, state="error")).total_count == 1
    assert (await journal.list_journal(qdb, user=ADMIN, state="complete")).total_count == 0
    assert (await journal.list_journal(qdb, user=ADMIN, qual_name=FAIL)).total_count == 1
    assert (await journal.list_journal(qdb, user=ADMIN, search="dummy")).total_count == 2
    with pytest.raises(BadArgument, match="state 'pending' is not one of"):
        await journal.list_journal(qdb, user=ADMIN, state="pending")


async def test_stats_count_jobs_per_state_that_the_user_may_read(qdb: Database, mixed: dict[str, Any]) -> None:
    overall = await stats.stats(qdb, user=ADMIN, lease_seconds=5)

    assert overall["queue"] == {"pending": 5, "running": 1, "deferred": 0, "failed": 0}
    assert overall["journal"] == {"complete": 0, "error": 1, "inactive": 0, "killed": 2}
    assert overall["oldest_pending_seconds"] >= 0
    assert overall["running_per_worker"] == {"w": 1}
    assert overall["workers_alive"] == 0
    assert overall["finished_per_minute"]["last_minute"] == 3

    dummies = await stats.stats(qdb, user=DUMMY_READER, lease_seconds=5)
    assert dummies["queue"] == {"pending": 3, "running": 1, "deferred": 0, "failed": 0}
    assert dummies["journal"] == {"complete": 0, "error": 0, "inactive": 0, "killed": 2}
    assert dummies["finished_per_minute"]["last_minute"] == 2

    nothing = await stats.stats(qdb, user=STRANGER, lease_seconds=5)
    assert sum(nothing["queue"].values()) == sum(nothing["journal"].values()) == 0
    assert nothing["oldest_pending_seconds"] is None
    assert nothing["running_per_worker"] == {}


# --- audit --------------------------------------------------------------------------------

async def test_enqueue_kill_remove_and_restart_are_audited(qdb: Database) -> None:
    killed = await queue.enqueue(qdb, DUMMY, {}, user=ADMIN)
    await queue.kill(qdb, killed["_id"], user=ADMIN)
    removed = await queue.enqueue(qdb, DUMMY, {}, user={**ADMIN, "name": "other"})
    await queue.remove(qdb, removed["_id"], user=ADMIN)
    child = await queue.restart(qdb, killed["_id"], user=ADMIN)

    first = await audit_of(qdb, killed["_id"])
    assert [(e["action"], e["actor"]) for e in first] == [
        ("job.enqueue", "test"), ("job.kill", "test"), ("job.restart", "test")]
    assert first[0]["detail"]["qual_name"] == DUMMY
    assert first[2]["detail"]["new_id"] == str(child["_id"])
    second = await audit_of(qdb, removed["_id"])
    assert [(e["action"], e["actor"]) for e in second] == [("job.enqueue", "other"), ("job.remove", "test")]
    assert [e["action"] for e in await audit_of(qdb, child["_id"])] == ["job.enqueue"]


async def test_refused_actions_are_not_audited(qdb: Database) -> None:
    job = await queue.enqueue(qdb, DUMMY, {}, user=ADMIN)
    with pytest.raises(Forbidden):
        await queue.kill(qdb, job["_id"], user=READER)
    with pytest.raises(Conflict):
        await queue.restart(qdb, job["_id"], user=ADMIN)

    assert [e["action"] for e in await audit_of(qdb, job["_id"])] == ["job.enqueue"]
