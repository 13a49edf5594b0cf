"""State transitions: the TRANSITIONS table, compare-and-set races, and journal moves (with and without transactions)."""
from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from typing import Any

import pytest

from core import queue, registry, states
from core.db import Database
from core.errors import Conflict
from core.states import FINAL, TRANSITIONS, State, transition

ADMIN = queue.operator("test")
ALLOWED = [(source, to) for source, targets in TRANSITIONS.items() for to in sorted(targets, key=list(State).index)]
FORBIDDEN = [(source, to) for source in State for to in State if to not in TRANSITIONS[source]]


def _ids(pairs: list[tuple[State, State]]) -> list[str]:
    return [f"{source}->{to}" for source, to in pairs]


@pytest.fixture(params=[True, False], ids=["transactions", "fallback"])
async def tdb(request: pytest.FixtureRequest, db: Database) -> Database:
    """The test database, once with transactions (the normal case) and once forced without."""
    assert db.transactions, "the embedded server runs transactions; the fallback is forced below"
    db.transactions = request.param
    await registry.sync(db, registry.discover())
    return db


@pytest.fixture
async def rdb(db: Database) -> Database:
    """The test database with the registry synced (transactions on)."""
    await registry.sync(db, registry.discover())
    return db


def _fields_for(to: State) -> dict[str, Any]:
    now = datetime.now(timezone.utc)
    if to is State.RUNNING:
        return {"locked": {"worker": "w", "pid": None, "at": now, "heartbeat": now}}
    if to in FINAL:
        return {"finished_at": now, "locked": None}
    return {"locked": None}


async def job_in(db: Database, state: State) -> dict[str, Any]:
    """A real enqueued job, driven through allowed transitions into ``state``; returns it as last written."""
    job = await queue.enqueue(db, "jobs.example.DummyJob", {"sleep": 0}, user=ADMIN)
    if state is State.PENDING:
        return job
    job = await transition(db, job, State.RUNNING, trial=1, **_fields_for(State.RUNNING))
    if state is State.RUNNING:
        return job
    return await transition(db, job, state, **_fields_for(state))


async def stored(db: Database, job_id: Any) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    return await db.queue.find_one({"_id": job_id}), await db.journal.find_one({"_id": job_id})


# --- the table ----------------------------------------------------------------------------

def test_table_covers_every_state_and_final_states_have_no_way_out() -> None:
    assert set(TRANSITIONS) == set(State)
    for state in FINAL:
        assert TRANSITIONS[state] == frozenset()
    for state in states.LIVE:
        assert State.KILLED in TRANSITIONS[state], f"a {state} job must be killable"
    assert states.is_final("complete") and not states.is_final("pending")


@pytest.mark.parametrize(("source", "to"), ALLOWED, ids=_ids(ALLOWED))
async def test_allowed_transition_succeeds_and_bumps_version_by_one(
        tdb: Database, source: State, to: State) -> None:
    job = await job_in(tdb, source)
    fields = {**_fields_for(to), "prog": {"value": 0.5, "message": "half"}}

    after = await transition(tdb, job, to, **fields)

    assert after["state"] == to.value
    assert after["version"] == job["version"] + 1
    assert after["prog"] == {"value": 0.5, "message": "half"}
    in_queue, in_journal = await stored(tdb, job["_id"])
    if to in FINAL:
        assert in_queue is None, "a finished job leaves the queue"
        assert in_journal is not None
        kept = in_journal
    else:
        assert in_journal is None
        kept = in_queue
    assert kept["state"] == to.value
    assert kept["version"] == job["version"] + 1
    assert kept["prog"] == {"value": 0.5, "message": "half"}
    assert kept["qual_name"] == "jobs.example.DummyJob"


@pytest.mark.parametrize(("source", "to"), FORBIDDEN, ids=_ids(FORBIDDEN))
async def test_forbidden_transition_raises_conflict_and_changes_nothing(
        rdb: Database, source: State, to: State) -> None:
    job = await job_in(rdb, source)
    before = await stored(rdb, job["_id"])

    with pytest.raises(Conflict, match=f"is {source.value}; it cannot become {to.value}"):
        await transition(rdb, job, to, **_fields_for(to))

    assert await stored(rdb, job["_id"]) == before


# --- compare-and-set --------------------------------------------------------------------

async def test_transition_from_a_stale_read_raises_conflict(tdb: Database) -> None:
    read = await job_in(tdb, State.PENDING)
    await transition(tdb, read, State.RUNNING, **_fields_for(State.RUNNING))

    with pytest.raises(Conflict, match="changed meanwhile"):
        await transition(tdb, read, State.KILLED, **_fields_for(State.KILLED))

    in_queue, in_journal = await stored(tdb, read["_id"])
    assert in_queue["state"] == "running" and in_queue["version"] == 2
    assert in_journal is None


@pytest.mark.parametrize(("first", "second"), [
    (State.RUNNING, State.RUNNING),   # two workers claim the same job
    (State.RUNNING, State.KILLED),    # a claim races a kill
    (State.KILLED, State.KILLED),     # two kills: two journal moves
], ids=["claim-claim", "claim-kill", "kill-kill"])
async def test_of_two_racing_transitions_exactly_one_wins(
        tdb: Database, first: State, second: State) -> None:
    read = await job_in(tdb, State.PENDING)

    results = await asyncio.gather(
        transition(tdb, read, first, **_fields_for(first), by="one"),
        transition(tdb, read, second, **_fields_for(second), by="two"),
        return_exceptions=True)

    winners = [r for r in results if isinstance(r, dict)]
    losers = [r for r in results if isinstance(r, BaseException)]
    assert len(winners) == 1, results
    assert len(losers) == 1 and isinstance(losers[0], Conflict), results
    winner = winners[0]
    in_queue, in_journal = await stored(tdb, read["_id"])
    kept = in_journal if State(winner["state"]) in FINAL else in_queue
    assert kept["by"] == winner["by"]
    assert kept["version"] == 2
    if State(winner["state"]) in FINAL:
        assert in_queue is None
    else:
        assert in_journal is None


async def test_many_concurrent_claims_of_one_job_have_one_winner(tdb: Database) -> None:
    read = await job_in(tdb, State.PENDING)

    results = await asyncio.gather(
        *(transition(tdb, read, State.RUNNING, by=n) for n in range(8)), return_exceptions=True)

    winners = [r for r in results if isinstance(r, dict)]
    assert len(winners) == 1
    assert all(isinstance(r, Conflict) for r in results if r is not winners[0])
    assert (await tdb.queue.find_one({"_id": read["_id"]}))["by"] == winners[0]["by"]


# --- journal moves ------------------------------------------------------------------------

async def test_final_transition_moves_the_whole_document_to_the_journal(tdb: Database) -> None:
    job = await job_in(tdb, State.RUNNING)

    after = await transition(tdb, job, State.COMPLETE, result={"answer": 42},
                             finished_at=datetime.now(timezone.utc), locked=None)

    assert await tdb.queue.count_documents({}) == 0
    journaled = await tdb.journal.find_one({"_id": job["_id"]})
    assert journaled["result"] == {"answer": 42}
    assert journaled["state"] == "complete"
    assert journaled["version"] == after["version"] == 3
    assert journaled["args"] == {"sleep": 0}
    assert journaled["enqueued"]["username"] == "test"


async def stranded(db: Database, *, also_in_journal: bool) -> dict[str, Any]:
    """A finished job whose move to the journal a crash interrupted (left in ``queue``)."""
    job = await job_in(db, State.RUNNING)
    now = datetime.now(timezone.utc)
    # What the fallback path has written when it dies after its first step
    # (and, with also_in_journal, after its second).
    await db.queue.update_one({"_id": job["_id"]}, {"$set": {"state": "complete", "finished_at": now,
                                                             "result": 1, "locked": None},
                                                    "$inc": {"version": 1}})
    left = await db.queue.find_one({"_id": job["_id"]})
    if also_in_journal:
        await db.journal.insert_one(left)
    return left


@pytest.mark.parametrize("also_in_journal", [False, True], ids=["queue-only", "queue-and-journal"])
async def test_complete_moves_finishes_a_stranded_move_and_is_idempotent(
        rdb: Database, also_in_journal: bool) -> None:
    left = await stranded(rdb, also_in_journal=also_in_journal)
    live = await rdb.queue.find_one({"_id": (await job_in(rdb, State.PENDING))["_id"]})

    assert await states.complete_moves(rdb) == 1

    assert await rdb.queue.find_one({"_id": left["_id"]}) is None
    assert await rdb.journal.find_one({"_id": left["_id"]}) == left
    assert await rdb.queue.find_one({"_id": live["_id"]}) == live, "live jobs stay where they are"
    assert await rdb.journal.count_documents({}) == 1

    assert await states.complete_moves(rdb) == 0
    assert await rdb.journal.find_one({"_id": left["_id"]}) == left
    assert await rdb.queue.count_documents({}) == 1


async def test_complete_moves_with_nothing_stranded_does_nothing(rdb: Database) -> None:
    await job_in(rdb, State.RUNNING)
    await job_in(rdb, State.KILLED)
    queued, journaled = await rdb.queue.count_documents({}), await rdb.journal.count_documents({})

    assert await states.complete_moves(rdb) == 0

    assert (await rdb.queue.count_documents({}), await rdb.journal.count_documents({})) == (queued, journaled)


@pytest.mark.parametrize("also_in_journal", [False, True], ids=["queue-only", "queue-and-journal"])
async def test_a_stranded_final_job_is_never_reported_as_live(rdb: Database, also_in_journal: bool) -> None:
    left = await stranded(rdb, also_in_journal=also_in_journal)

    found, journaled = await queue.find(rdb, left["_id"])
    assert found["state"] == "complete"
    assert journaled is True

    job = await queue.get(rdb, str(left["_id"]), user=ADMIN)
    assert job["state"] == "complete"
    assert job["journal"] is True

    with pytest.raises(Conflict, match="finished as complete"):
        await queue.kill(rdb, left["_id"], user=ADMIN)
    with pytest.raises(Conflict, match="finished as complete"):
        await queue.remove(rdb, left["_id"], user=ADMIN)
    with pytest.raises(Conflict):
        await queue.restart(rdb, left["_id"], user=ADMIN)


async def test_fallback_move_leaves_the_job_in_exactly_one_collection(db: Database) -> None:
    await registry.sync(db, registry.discover())
    db.transactions = False
    jobs = [await job_in(db, State.PENDING) for _ in range(5)]

    await asyncio.gather(*(transition(db, job, State.KILLED, **_fields_for(State.KILLED)) for job in jobs))

    assert await db.queue.count_documents({}) == 0
    assert await db.journal.count_documents({"state": "killed"}) == 5
