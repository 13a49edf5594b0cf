"""``GET /job/events``: the multiplexed event stream of every job, over HTTP with ``httpx`` and ``httpx-sse``.

A real server (keepalive 1 s, 4 streams per user), real workers and jobs;
faults injected with ``configureFailPoint``.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from datetime import datetime, timezone
from typing import Any, AsyncIterator

import httpx
import pytest
from bson import ObjectId
from httpx_sse import ServerSentEvent, aconnect_sse

from core import users
from core.db import Database
from handlers.app import Server
from tests.conftest import SessionAuth, wait_for

DUMMY = "jobs.example.DummyJob"
NOOP = "jobs.example.NoopJob"
FAIL = "jobs.example.FailJob"
CHATTY = "jobs.example.ChattyJob"
SUMMARY_KEYS = {"_id", "qual_name", "state", "prog", "priority", "trial", "attempts_left", "enqueued", "started_at",
                "finished_at", "runtime", "locked", "killed_at", "removed_at", "last_error", "version", "journal"}
HOST_UNREACHABLE = 6

pytestmark = pytest.mark.usefixtures("job_classes")


@pytest.fixture
async def deck(config, db, team) -> AsyncIterator[Server]:
    server = Server(dataclasses.replace(config, max_streams_per_user=4, max_streams=20), db, keepalive=1.0)
    await server.start()
    yield server
    await server.stop()


def client(server: Server, user: dict[str, Any] | None = None) -> httpx.AsyncClient:
    auth = SessionAuth(server, user) if user else None
    return httpx.AsyncClient(base_url=server.url, auth=auth, timeout=30)


@pytest.fixture
async def admin_http(deck: Server, team) -> AsyncIterator[httpx.AsyncClient]:
    async with client(deck, team["admin"]) as http:
        yield http


class Stream:
    """One open ``/job/events`` stream read in the background; ``got`` holds its events as they come."""

    def __init__(self) -> None:
        self.got: list[ServerSentEvent] = []
        self.ended = asyncio.Event()

    def jobs(self, job_id: str | None = None) -> list[dict[str, Any]]:
        return [event.json() for event in self.got
                if event.event == "job" and (job_id is None or event.json()["_id"] == job_id)]

    def kinds(self) -> list[str]:
        return [event.event for event in self.got]

    async def until(self, predicate: Any, timeout: float = 20, message: str = "events") -> None:
        await wait_for(lambda: predicate(self), timeout=timeout, message=message)


@contextlib.asynccontextmanager
async def listening(http: httpx.AsyncClient, params: dict[str, Any] | None = None,
                    headers: dict[str, str] | None = None) -> AsyncIterator[Stream]:
    """Open a stream; once it has answered, every change from then on reaches it."""
    stream = Stream()
    opened: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def read() -> None:
        try:
            async with aconnect_sse(http, "GET", "/job/events", params=params, headers=dict(headers or {})) as source:
                opened.set_result(source.response.status_code)
                async for event in source.aiter_sse():
                    assert event.data, event  # keepalives and retry come inside an event's block
                    stream.got.append(event)
        finally:
            stream.ended.set()

    task = asyncio.create_task(read())
    try:
        async with asyncio.timeout(10):
            assert await opened == 200
        yield stream
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def enqueue(http: httpx.AsyncClient, qual_name: str = NOOP, **args: Any) -> str:
    reply = await http.post("/job", json={"qual_name": qual_name, "args": args, "follow": False})
    assert reply.status_code == 200, reply.text
    return reply.json()["data"]


def final(job_id: str):
    return lambda stream: any(job["journal"] for job in stream.jobs(job_id))


async def test_a_subscriber_sees_new_state_and_progress_changes_of_a_running_job_in_order(
        deck, admin_http, worker_factory):
    await worker_factory()
    async with listening(admin_http) as stream:
        job_id = await enqueue(admin_http, DUMMY, sleep=1, loop_time=0.2)
        await stream.until(final(job_id), message="the job's final event")
    assert "reset" not in stream.kinds()  # its move to the journal deletes it from the queue: no reason to
    jobs = stream.jobs(job_id)
    assert all(set(job) == SUMMARY_KEYS for job in jobs), jobs[0]
    assert jobs[0]["state"] == "pending" and jobs[0]["journal"] is False
    assert jobs[0]["enqueued"]["username"] == "admin" and jobs[0]["qual_name"] == DUMMY
    states = [job["state"] for job in jobs]
    assert states == sorted(states, key=["pending", "running", "complete"].index), states
    assert states[-1] == "complete" and jobs[-1]["journal"] is True and jobs[-1]["prog"]["value"] == 1
    versions = [job["version"] for job in jobs]
    assert versions == sorted(set(versions)), versions  # in order, each change once
    running = [job for job in jobs if job["state"] == "running"]
    assert running[0]["locked"]["worker"] and set(running[0]["locked"]) == {"worker"}
    progress = [job["prog"]["value"] for job in running]
    assert len(set(progress)) >= 3 and progress == sorted(progress), progress  # progress updates are events
    ids = [event.id for event in stream.got]
    assert len(set(ids)) == len(ids)
    seqs = [int(event_id.split("-")[1]) for event_id in ids]
    assert seqs == sorted(seqs) and len({event_id.split("-")[0] for event_id in ids}) == 1


async def test_filters_by_state_class_and_ids_are_applied_by_the_server(deck, admin_http, worker_factory):
    await worker_factory()
    first = await enqueue(admin_http, NOOP)  # not yet run: no worker had it (started after the streams below)
    async with listening(admin_http, {"state": "complete,error"}) as finished, \
            listening(admin_http, {"qual_name": FAIL}) as failing, \
            listening(admin_http, {"ids": first}) as one, listening(admin_http) as everything:
        noop = await enqueue(admin_http, NOOP)
        fail = await enqueue(admin_http, FAIL)
        await enqueue(admin_http, NOOP)
        await everything.until(lambda s: all(final(j)(s) for j in (noop, fail)), message="both final")
        await everything.until(final(first), message="the first job's final event")
        await finished.until(lambda s: {j["_id"] for j in s.jobs()} >= {noop, fail, first})
        await failing.until(final(fail))
        await one.until(final(first))
    assert {job["state"] for job in finished.jobs()} <= {"complete", "error"}
    assert {job["qual_name"] for job in failing.jobs()} == {FAIL}
    assert failing.jobs(fail) == everything.jobs(fail)
    assert {job["_id"] for job in one.jobs()} == {first} and one.jobs(first) == everything.jobs(first)
    assert "log" not in everything.kinds() + one.kinds()


async def test_log_records_come_only_for_the_ids_asked_for_with_logs(deck, admin_http, worker_factory):
    await worker_factory()
    chatty = await enqueue(admin_http, CHATTY, lines=30)
    other = await enqueue(admin_http, CHATTY, lines=30)
    async with listening(admin_http, {"ids": chatty, "logs": "true"}) as logged, \
            listening(admin_http, {"ids": f"{chatty},{other}"}) as unlogged:
        await logged.until(final(chatty))
        await unlogged.until(lambda s: final(chatty)(s) and final(other)(s))
        # The last record was written before the job's final move.
        logs = [event.json() for event in logged.got if event.event == "log"]
    assert logs and {record["job_id"] for record in logs} == {chatty}
    total = (await admin_http.get(f"/job/log/{chatty}", params={"per_page": 1000})).json()["data"]
    assert [record["seq"] for record in logs] == [record["seq"] for record in total]  # each once, in order
    assert logs[0].keys() >= {"job_id", "seq", "created", "level", "message"}
    assert "log" not in unlogged.kinds()


@pytest.mark.parametrize("params, says", [
    ({"logs": "true"}, "logs=true needs ids"),
    ({"state": "running,asleep"}, "unknown state 'asleep'"),
    ({"state": "running,"}, "without empty ones"),
    ({"ids": "nope"}, "nope"),
    ({"ids": ",".join(str(ObjectId()) for _ in range(101))}, "at most 100 job ids"),
    ({"timeout": "-1"}, "timeout"),
    ({"timeout": "7200"}, "timeout"),
    ({"logs": "maybe"}, "logs"),
])
async def test_bad_arguments_are_400_with_a_message(deck, admin_http, params, says):
    reply = await admin_http.get("/job/events", params=params)
    assert reply.status_code == 400, reply.text
    assert says in reply.json()["error"]


async def test_a_reader_sees_the_jobs_it_may_read_and_a_stranger_none(deck, admin_http, team, worker_factory):
    await worker_factory()
    async with client(deck, team["reader"]) as reader_http, client(deck, team["stranger"]) as stranger_http:
        async with listening(reader_http) as reader, listening(stranger_http, {"timeout": "30"}) as stranger, \
                listening(stranger_http, {"ids": "0" * 24, "logs": "true"}) as stranger_logs:
            job_id = await enqueue(admin_http, NOOP)
            await reader.until(final(job_id))
            # Both subscribers were handed the same changes at the same moment: whatever the stranger was
            # given, it has been written before the reader's final event was.
            await reader.until(final(job_id), timeout=1)
        assert stranger.got == [] and stranger_logs.got == []


async def test_a_stream_ends_after_its_timeout(deck, admin_http):
    loop = asyncio.get_running_loop()
    started = loop.time()
    core4 = deck.url.replace("/api/v1", "/core4/api/v1") + "/job/events"
    async with aconnect_sse(admin_http, "GET", core4, params={"timeout": "1.5"}) as source:
        assert source.response.status_code == 200
        assert [event async for event in source.aiter_sse()] == []
    assert 1.4 < loop.time() - started < 6


async def test_resume_with_last_event_id_gets_exactly_the_missed_events(deck, admin_http, worker_factory):
    await worker_factory()
    async with listening(admin_http) as always:
        async with listening(admin_http) as early:
            first = await enqueue(admin_http, NOOP)
            await early.until(final(first))
        last = early.got[-1].id
        later = [await enqueue(admin_http, NOOP) for _ in range(3)]
        await always.until(lambda s: all(final(j)(s) for j in later))
        async with listening(admin_http, headers={"Last-Event-ID": last}) as resumed:
            missed = [event for event in always.got if int(event.id.split("-")[1]) > int(last.split("-")[1])]
            await resumed.until(lambda s: len(s.got) >= len(missed))
            # A few more, live after the replay: none lost, none twice.
            more = await enqueue(admin_http, NOOP)
            await resumed.until(final(more))
            await always.until(final(more))
    assert [(e.id, e.event, e.data) for e in resumed.got] == [(e.id, e.event, e.data) for e in always.got
                                                               if int(e.id.split("-")[1]) > int(last.split("-")[1])]
    assert {job["_id"] for job in resumed.jobs()} == {*later, more}
    # The query parameter does the same as the header (for clients that cannot set one).
    async with listening(admin_http, {"last_event_id": last, "ids": later[0]}) as by_argument:
        await by_argument.until(final(later[0]))
    assert by_argument.jobs() == always.jobs(later[0])


async def test_an_unknown_or_too_old_last_event_id_gets_reset(deck, admin_http):
    for stale in ("00000000-1", "garbage", f"{deck.services.events.nonce}-999999"):
        async with listening(admin_http, headers={"Last-Event-ID": stale}) as stream:
            await stream.until(lambda s: s.got, message="a reset")
        assert stream.kinds()[0] == "reset" and "Last-Event-ID" in stream.got[0].json()["reason"]
    deck.services.events.ring_events = 3
    async with listening(admin_http) as stream:
        await enqueue(admin_http, NOOP)
        await stream.until(lambda s: s.got)
    old = stream.got[0].id
    for _ in range(4):
        await enqueue(admin_http, NOOP)
    async with listening(admin_http, headers={"Last-Event-ID": old}) as resumed:
        await resumed.until(lambda s: s.got)
    assert resumed.kinds()[0] == "reset", resumed.kinds()


async def test_a_slow_subscriber_gets_reset_and_the_server_holds_a_bounded_buffer(deck, admin_http, db: Database):
    events = deck.services.events
    events.queue_size, events.queue_bytes = 100, 512 * 1024
    held: list[int] = []
    async with admin_http.stream("GET", "/job/events") as response:  # read nothing for now
        assert response.status_code == 200
        now = datetime.now(timezone.utc)
        pad = "x" * 4000
        for number in range(2000):  # 2,000 changes of ~4 kB: more than the sockets' buffers take
            await db.queue.insert_one({
                "_id": ObjectId(), "qual_name": NOOP, "state": "pending", "version": 1, "priority": 0, "trial": 0,
                "attempts_left": 1, "enqueued": {"at": now, "username": "admin"},
                "prog": {"value": 0.0, "message": pad}, "query_at": datetime(2100, 1, 1, tzinfo=timezone.utc)})
            if number % 50 == 0:
                held.append(events.queued_bytes)
        await wait_for(lambda: events.seq >= 2000, timeout=30, message="the hub to see every insert")
        held.append(events.queued_bytes)
        assert max(held) <= events.queue_bytes, held
        assert events.ring_held <= events.ring_bytes
        # Now read: what was sent before the client fell behind, then a reset, then live events again.
        kinds: list[str] = []
        async with asyncio.timeout(30):
            async for line in response.aiter_lines():
                if line.startswith("event: "):
                    kinds.append(line[7:])
                    if kinds[-1] == "reset":
                        job_id = await enqueue(admin_http, NOOP)
                if line.startswith("data: ") and kinds[-1] == "job" and "reset" in kinds \
                        and json.loads(line[6:])["_id"] == job_id:
                    break
    assert kinds.count("reset") == 1 and kinds.index("reset") < 2000, kinds.count("job")


async def test_200_jobs_enqueued_at_once_all_appear_within_seconds(deck, admin_http):
    async with listening(admin_http, {"state": "pending"}) as stream:
        reply = await admin_http.post("/job/batch", json={"jobs": [{"qual_name": NOOP} for _ in range(200)]})
        assert reply.status_code == 200, reply.text
        ids = set(reply.json()["data"])
        await stream.until(lambda s: {job["_id"] for job in s.jobs()} >= ids, timeout=5, message="200 jobs")
    assert "reset" not in stream.kinds()


async def test_a_reopened_change_stream_gives_reset(deck, admin_http, db: Database):
    async def fail_point(mode: Any, **data: Any) -> None:
        await db.client.admin.command({"configureFailPoint": "failCommand", "mode": mode, "data": data})

    hub = deck.hub
    async with listening(admin_http) as stream:
        opened = hub.streams_opened
        try:
            await fail_point("alwaysOn", failCommands=["getMore"], errorCode=HOST_UNREACHABLE)
            await wait_for(lambda: hub.failures >= 1, timeout=20, message="the stream to fail")
        finally:
            await fail_point("off")
        await wait_for(lambda: hub.live and hub.streams_opened > opened, timeout=20, message="a reopen")
        await stream.until(lambda s: "reset" in s.kinds(), message="a reset")
        job_id = await enqueue(admin_http, NOOP)
        await stream.until(lambda s: s.jobs(job_id), message="live events again")
    assert "change stream" in stream.got[stream.kinds().index("reset")].json()["reason"]


async def test_without_credentials_401_and_past_the_stream_cap_429(deck, admin_http):
    async with client(deck) as anonymous:
        reply = await anonymous.get("/job/events")
    assert reply.status_code == 401 and reply.headers["WWW-Authenticate"].startswith("Basic")
    async with listening(admin_http), listening(admin_http), listening(admin_http), listening(admin_http):
        reply = await admin_http.get("/job/events")
        assert reply.status_code == 429 and "open streams" in reply.json()["error"]
    async with listening(admin_http, {"timeout": "0.5"}) as stream:
        await asyncio.wait_for(stream.ended.wait(), 10)  # its slot is free again



async def test_rights_are_checked_again_at_keepalives(deck, admin_http, db: Database, team, worker_factory):
    await worker_factory()
    events = deck.services.events
    async with client(deck, team["reader"]) as reader_http:
        async with listening(reader_http) as reader:
            await users.change_access(db, "reader", revoke=["job:jobs.example.*:r"], actor="test")
            # At its next keepalive the stream goes on with the rights as they are now: none.
            await wait_for(lambda: all(not s.user["perms"] for s in events._subscribers), timeout=10,
                           message="the rights to be read again")
            async with listening(admin_http) as witness:
                job_id = await enqueue(admin_http, NOOP)
                await witness.until(final(job_id))
            assert reader.jobs() == []
            await users.set_active(db, "reader", False, actor="test")  # disabled: the stream ends
            await asyncio.wait_for(reader.ended.wait(), 10)


async def test_a_job_deleted_from_the_queue_without_reaching_the_journal_gives_reset(deck, admin_http, db: Database):
    async with listening(admin_http) as stream:
        job_id = await enqueue(admin_http, NOOP)
        await stream.until(lambda s: s.jobs(job_id))
        await db.queue.delete_one({"_id": ObjectId(job_id)})  # as a batch that failed half-way is undone
        await stream.until(lambda s: "reset" in s.kinds(), message="a reset")
    assert "without reaching the journal" in stream.got[-1].json()["reason"]
