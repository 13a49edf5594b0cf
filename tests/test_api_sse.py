"""Server-Sent Events over HTTP: follow, enqueue-and-follow, restart-and-follow, log follow, long poll.

Real server on a free port, real in-process worker, real child processes, read
with ``httpx`` and ``httpx_sse`` the way a client would.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from datetime import datetime, timezone
from typing import Any, AsyncIterator, Awaitable, Callable

import httpx
import pytest
from bson import ObjectId
from httpx_sse import EventSource, ServerSentEvent, aconnect_sse, connect_sse

from core.config import Config
from core.db import Database
from core.worker import Worker
from handlers.app import Server
from tests.conftest import wait_for

AUTH = ("admin", "hans")
DUMMY = "jobs.example.DummyJob"
CHATTY = "jobs.example.ChattyJob"

pytestmark = pytest.mark.usefixtures("admin", "job_classes")


@pytest.fixture
async def api(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    """A client authenticated as admin."""
    async with httpx.AsyncClient(base_url=server.url, auth=AUTH, timeout=30) as http:
        yield http


async def enqueue(api: httpx.AsyncClient, qual_name: str = DUMMY, **args: Any) -> str:
    """Enqueue without following; the new job's id."""
    reply = await api.post("/job", json={"qual_name": qual_name, "args": args, "follow": False})
    assert reply.status_code == 200, reply.text
    return reply.json()["data"]


async def sse(source: EventSource) -> AsyncIterator[ServerSentEvent]:
    """The stream's events, each of which must carry data (a block without any is a bug of the server)."""
    async for event in source.aiter_sse():
        assert event.data, event
        yield event


async def events_of(api: httpx.AsyncClient, method: str, url: str, *, deadline: float = 30,
                    **kwargs: Any) -> list[ServerSentEvent]:
    """Every event of one stream, until the server ends it (which must happen within ``deadline`` s)."""
    events: list[ServerSentEvent] = []
    async with asyncio.timeout(deadline):
        async with aconnect_sse(api, method, url, **kwargs) as source:
            assert source.response.status_code == 200, await source.response.aread()
            async for event in sse(source):
                events.append(event)
    return events


def kinds(events: list[ServerSentEvent]) -> list[str]:
    return [event.event for event in events]


def log_seqs(events: list[ServerSentEvent]) -> list[int]:
    """The ``seq`` of every log event, as its id (``<version>.<seq>``) and its data say."""
    logs = [event for event in events if event.event == "log"]
    from_ids = [int(event.id.split(".")[1]) for event in logs]
    assert from_ids == [event.json()["seq"] for event in logs]
    return from_ids


def close_of(events: list[ServerSentEvent]) -> dict[str, Any]:
    """The data of the close event, which must be the last and only one."""
    assert kinds(events).count("close") == 1 and events[-1].event == "close", kinds(events)
    return events[-1].json()


def assert_counts_match(events: list[ServerSentEvent]) -> None:
    close = close_of(events)
    assert close["events"] == {"state": kinds(events).count("state"), "log": kinds(events).count("log")}


# --- the wire -----------------------------------------------------------------------------

async def test_follow_sends_event_stream_headers_and_retry_first(api: httpx.AsyncClient) -> None:
    job_id = await enqueue(api)  # no worker: it stays pending

    lines: list[str] = []
    async with api.stream("GET", f"/job/follow/{job_id}") as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        assert response.headers["Cache-Control"] == "no-cache"
        assert response.headers["X-Accel-Buffering"] == "no"
        async with asyncio.timeout(10):
            async for line in response.aiter_lines():
                lines.append(line)
                if line.startswith("data: "):
                    break

    assert lines == ["retry: 2000", "id: 1.0", "event: state", lines[-1]]  # retry in the first event's block


async def test_follow_sends_state_first_then_numbered_logs_then_close_with_counts(
        api: httpx.AsyncClient, worker: Worker) -> None:
    job_id = await enqueue(api, sleep=1, loop_time=0.2)

    events = await events_of(api, "GET", f"/job/follow/{job_id}")

    assert events[0].event == "state" and events[0].json()["_id"] == job_id
    assert set(kinds(events)) == {"state", "log", "close"}
    seqs = log_seqs(events)
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) >= 5
    ids = [tuple(int(part) for part in event.id.split(".")) for event in events]
    assert ids == sorted(ids)  # <version>.<seq> never goes back
    assert all(event.json()["version"] == version
               for event, (version, _) in zip(events, ids) if event.event == "state")
    assert close_of(events)["state"] == "complete"
    assert_counts_match(events)
    assert events[-2].event == "state" and events[-2].json()["state"] == "complete"
    assert events[-2].json()["journal"] is True


async def test_every_log_record_is_sent_exactly_once_in_order(api: httpx.AsyncClient, worker: Worker) -> None:
    job_id = await enqueue(api, CHATTY, lines=5000)

    events = await events_of(api, "GET", f"/job/follow/{job_id}", deadline=40)

    assert log_seqs(events) == list(range(1, 5001))
    assert [event.json()["message"] for event in events if event.event == "log"] == [
        f"line {number}" for number in range(1, 5001)]
    assert close_of(events) == {"state": "complete",
                                "events": {"state": kinds(events).count("state"), "log": 5000}}


async def test_following_a_finished_job_sends_state_whole_log_close_and_ends(
        api: httpx.AsyncClient, worker: Worker) -> None:
    job_id = await enqueue(api, sleep=0.3, loop_time=0.1)
    live = await events_of(api, "GET", f"/job/follow/{job_id}")
    assert close_of(live)["state"] == "complete"

    events = await events_of(api, "GET", f"/job/follow/{job_id}", deadline=5)  # ends by itself

    assert kinds(events) == ["state"] + ["log"] * len(log_seqs(live)) + ["close"]
    assert events[0].json()["state"] == "complete" and events[0].json()["journal"] is True
    assert [event.json() for event in events if event.event == "log"] == [
        event.json() for event in live if event.event == "log"]
    assert close_of(events) == {"state": "complete", "events": {"state": 1, "log": len(log_seqs(live))}}


# --- resuming -----------------------------------------------------------------------------

async def test_reconnect_with_last_event_id_sends_only_what_was_not_seen(
        api: httpx.AsyncClient, worker: Worker) -> None:
    job_id = await enqueue(api, sleep=2, loop_time=0.2)

    first: list[ServerSentEvent] = []
    async with aconnect_sse(api, "GET", f"/job/follow/{job_id}") as source:
        async for event in sse(source):
            first.append(event)
            if kinds(first).count("log") == 3:
                break  # the client goes away mid-job
    assert kinds(first)[-1] == "log" and "close" not in kinds(first)

    rest = await events_of(api, "GET", f"/job/follow/{job_id}", headers={"Last-Event-ID": first[-1].id})

    seen = log_seqs(first)
    assert seen == [1, 2, 3]
    assert log_seqs(rest) == list(range(4, 4 + len(log_seqs(rest))))
    assert len(log_seqs(rest)) >= 5
    assert close_of(rest)["state"] == "complete"
    assert_counts_match(rest)


async def test_resume_after_a_server_restart_loses_and_repeats_nothing(
        config: Config, db: Database, server: Server, api: httpx.AsyncClient, worker: Worker) -> None:
    job_id = await enqueue(api, sleep=2, loop_time=0.2)

    first: list[ServerSentEvent] = []
    with contextlib.suppress(httpx.TransportError):  # the server goes away under the client
        async with asyncio.timeout(10), aconnect_sse(api, "GET", f"/job/follow/{job_id}") as source:
            async for event in sse(source):
                first.append(event)
                if kinds(first).count("log") == 3:
                    await server.stop()
    assert "close" not in kinds(first) and log_seqs(first)[:3] == [1, 2, 3]
    await wait_for(lambda: server.hub.subscribers == 0, timeout=5, message="the old server's follower to end")

    restarted = Server(config, db)
    await restarted.start()
    try:
        assert restarted.port != server.port
        async with httpx.AsyncClient(base_url=restarted.url, auth=AUTH, timeout=30) as again:
            rest = await events_of(again, "GET", f"/job/follow/{job_id}", headers={"Last-Event-ID": first[-1].id})
    finally:
        await restarted.stop()

    seqs = log_seqs(first) + log_seqs(rest)
    assert seqs == list(range(1, len(seqs) + 1)) and len(log_seqs(rest)) >= 5
    assert close_of(rest)["state"] == "complete"


# --- quiet streams, removal ---------------------------------------------------------------

async def test_a_lease_renewal_alone_sends_no_state_event(db: Database, api: httpx.AsyncClient) -> None:
    job_id = await enqueue(api)  # pending, and nobody runs it: only this test writes it
    writes = [{"$set": {"locked": {"worker": "w1", "heartbeat": datetime.now(timezone.utc)}}},
              {"$set": {"locked.heartbeat": datetime.now(timezone.utc)}},  # a renewal: not news
              {"$set": {"prog": {"value": 0.5, "message": "half"}}}]

    states = []
    async with asyncio.timeout(10), aconnect_sse(api, "GET", f"/job/follow/{job_id}") as source:
        async for event in sse(source):
            states.append(event.json())
            if len(states) == 1:
                for write in writes:  # as a worker writes: one version per write
                    await db.queue.update_one({"_id": ObjectId(job_id)}, {**write, "$inc": {"version": 1}})
            if len(states) == 3:
                break

    assert [state["version"] for state in states] == [1, 2, 4]
    assert states[1]["locked"]["worker"] == "w1" and states[2]["prog"]["message"] == "half"


async def test_a_silent_stream_sends_keepalive_comments(config: Config, db: Database,
                                                        api: httpx.AsyncClient) -> None:
    job_id = await enqueue(api)  # pending, and nobody runs it
    quick = Server(config, db, keepalive=0.3)
    await quick.start()
    try:
        async with httpx.AsyncClient(base_url=quick.url, auth=AUTH, timeout=30) as http:
            async with http.stream("GET", f"/job/follow/{job_id}") as response:
                started = time.monotonic()
                async with asyncio.timeout(10):
                    async for line in response.aiter_lines():
                        if line == ": keepalive":
                            break
                waited = time.monotonic() - started
    finally:
        await quick.stop()
    assert 0.2 < waited < 5


async def test_without_change_streams_followers_poll_and_still_get_keepalives(
        config: Config, db: Database, api: httpx.AsyncClient) -> None:
    job_id = await enqueue(api)
    polling_db = Database.connect(config.mongo_url, config.database)
    await polling_db.setup(log_retention_days=1)
    polling_db.change_streams = False  # as on a standalone server
    slow = Server(config, polling_db, keepalive=0.3)
    await slow.start()
    seen: list[str] = []
    try:
        async with httpx.AsyncClient(base_url=slow.url, auth=AUTH, timeout=30) as http:
            async with http.stream("GET", f"/job/follow/{job_id}") as response:
                async with asyncio.timeout(20):
                    async for line in response.aiter_lines():
                        seen.append(line)
                        if line == ": keepalive" and seen.count(": keepalive") == 1:
                            assert (await api.put(f"/job/kill/{job_id}")).status_code == 200
    finally:
        await slow.stop()
        await polling_db.close()
    assert ": keepalive" in seen
    assert seen[-2].startswith("data: ") and '"state": "killed"' in seen[-2]


async def test_removing_a_followed_job_closes_its_stream_as_removed(server: Server, api: httpx.AsyncClient) -> None:
    job_id = await enqueue(api)
    follower = asyncio.create_task(events_of(api, "GET", f"/job/follow/{job_id}"))
    await wait_for(lambda: server.hub.subscribers == 1, timeout=10, message="the follower to subscribe")

    async with httpx.AsyncClient(base_url=server.url, auth=AUTH) as other:
        reply = await other.put(f"/job/remove/{job_id}")
    assert reply.status_code == 200, reply.text

    events = await follower
    states = [event.json() for event in events if event.event == "state"]
    assert states[0]["removed_at"] is None
    assert states[-1]["removed_at"] is not None and states[-1]["state"] == "killed"
    assert close_of(events)["state"] == "removed"
    assert_counts_match(events)


# --- streams that start another job -------------------------------------------------------

async def test_enqueue_with_follow_streams_the_new_job_on_the_same_response(
        api: httpx.AsyncClient, worker: Worker) -> None:
    events = await events_of(api, "POST", "/job", json={"qual_name": DUMMY, "args": {"sleep": 0.5, "loop_time": 0.1}})

    job_id = events[0].json()["_id"]
    assert events[0].event == "state" and events[0].json()["qual_name"] == DUMMY
    assert {event.json()["job_id"] for event in events if event.event == "log"} == {job_id}
    assert {event.json()["_id"] for event in events if event.event == "state"} == {job_id}
    assert log_seqs(events) == list(range(1, len(log_seqs(events)) + 1))
    assert close_of(events)["state"] == "complete"
    detail = (await api.get(f"/job/{job_id}")).json()["data"]
    assert detail["state"] == "complete" and detail["journal"] is True


async def test_restart_with_follow_streams_the_new_job(
        api: httpx.AsyncClient, worker_factory: Callable[..., Awaitable[Worker]]) -> None:
    old_id = await enqueue(api, sleep=0.3, loop_time=0.1)
    killed = await api.put(f"/job/kill/{old_id}")  # still pending: killed at once
    assert killed.json()["data"]["state"] == "killed"
    await worker_factory()

    events = await events_of(api, "PUT", f"/job/restart/{old_id}")

    new = events[0].json()
    assert new["_id"] != old_id and new["enqueued"]["parent_id"] == old_id
    assert {event.json()["job_id"] for event in events if event.event == "log"} == {new["_id"]}
    assert close_of(events)["state"] == "complete"
    old = (await api.get(f"/job/{old_id}")).json()["data"]
    assert old["state"] == "killed" and old["enqueued"]["child_id"] == new["_id"]


async def test_log_follow_sends_only_log_events_and_close(api: httpx.AsyncClient, worker: Worker) -> None:
    job_id = await enqueue(api, sleep=0.5, loop_time=0.1)

    events = await events_of(api, "GET", f"/job/log/{job_id}", params={"follow": "true"})

    assert set(kinds(events[:-1])) == {"log"}
    seqs = log_seqs(events)
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) >= 5
    assert close_of(events) == {"state": "complete", "events": {"state": 0, "log": len(seqs)}}


async def test_a_stream_with_nothing_to_send_yet_opens_at_once(api: httpx.AsyncClient) -> None:
    job_id = await enqueue(api)  # pending: no log record yet, and none coming

    started = time.monotonic()
    async with api.stream("GET", f"/job/log/{job_id}", params={"follow": "true"},
                          timeout=httpx.Timeout(30, read=5)) as response:
        opened = time.monotonic() - started
        lines = [line async for line in _first_lines(response, 1)]

    assert response.status_code == 200 and opened < 2  # not after the 15 s keepalive
    assert lines == [": keepalive"]


async def test_retry_comes_with_the_first_event_when_a_keepalive_came_first(api: httpx.AsyncClient) -> None:
    job_id = await enqueue(api)  # pending: the log stream starts with a keepalive

    lines: list[str] = []
    async with asyncio.timeout(10), api.stream("GET", f"/job/log/{job_id}", params={"follow": "true"}) as response:
        async for line in response.aiter_lines():
            lines.append(line)
            if line == ": keepalive":
                assert (await api.put(f"/job/kill/{job_id}")).status_code == 200
            if line.startswith("data: "):
                break

    # One block: the keepalive line is a comment within it, not a message of its own.
    assert lines[0] == ": keepalive" and "" not in lines
    block = [line for line in lines if line != ": keepalive"]
    assert block[0] == "retry: 2000" and block[1].startswith("id: ") and block[2] == "event: close"
    assert lines.count("retry: 2000") == 1


def follow_as_the_readme_shows(url: str, job_id: str) -> list[tuple[ServerSentEvent, Any]]:
    """The README's httpx-sse example (a blocking client): every event with its data parsed as JSON."""
    events = []
    with httpx.Client(auth=AUTH, timeout=30) as client:
        with connect_sse(client, "GET", f"{url}/job/follow/{job_id}") as source:
            for event in source.iter_sse():
                events.append((event, json.loads(event.data)))
    return events


async def test_httpx_sse_reads_every_event_of_a_follow_stream_as_json(
        server: Server, api: httpx.AsyncClient, worker: Worker) -> None:
    job_id = await enqueue(api, sleep=0.3, loop_time=0.1)

    # In a thread: the blocking client must not stall the loop the server runs on.
    events = await asyncio.wait_for(asyncio.to_thread(follow_as_the_readme_shows, server.url, job_id), 30)

    assert [event.retry for event, _ in events] == [2000] + [None] * (len(events) - 1)
    assert events[0][0].event == "state" and events[0][1]["_id"] == job_id
    assert {event.event for event, _ in events} == {"state", "log", "close"}
    assert events[-1][0].event == "close" and events[-1][1]["state"] == "complete"


async def _first_lines(response: httpx.Response, count: int) -> AsyncIterator[str]:
    async for line in response.aiter_lines():
        yield line
        count -= 1
        if not count:
            return


# --- many followers -----------------------------------------------------------------------

@pytest.fixture
async def roomy(config: Config, db: Database) -> AsyncIterator[Server]:
    """A server that lets one user open 250 streams (the default is 50)."""
    http = Server(dataclasses.replace(config, max_streams_per_user=250), db)
    await http.start()
    yield http
    await http.stop()


async def test_two_hundred_followers_of_one_job_all_receive_every_event(
        roomy: Server, db: Database, api: httpx.AsyncClient,
        worker_factory: Callable[..., Awaitable[Worker]]) -> None:
    server = roomy
    job_id = await enqueue(api, sleep=1, loop_time=0.2)
    # A token: 200 first Basic logins at once would look like guessing to the throttle.
    token, _ = await server.auth.issue_token(await db.user.find_one({"name": "admin"}))

    async with httpx.AsyncClient(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=60,
                                 limits=httpx.Limits(max_connections=300)) as many:
        followers = asyncio.gather(*(events_of(many, "GET", f"/job/follow/{job_id}", deadline=60)
                                     for _ in range(200)))
        try:
            await wait_for(lambda: server.hub.subscribers == 200, timeout=30,
                           message="200 followers to subscribe")
            await worker_factory()
            streams = await followers
        finally:
            followers.cancel()

    def wire(events: list[ServerSentEvent]) -> list[tuple[str, str, str]]:
        return [(event.id, event.event, event.data) for event in events]

    assert all(wire(events) == wire(streams[0]) for events in streams)
    assert close_of(streams[0])["state"] == "complete"
    assert len(log_seqs(streams[0])) >= 5
    assert_counts_match(streams[0])


async def test_followers_that_disconnect_leave_no_subscription_behind(server: Server,
                                                                       api: httpx.AsyncClient) -> None:
    job_id = await enqueue(api)  # pending: the streams stay open until the clients leave

    readers = []  # kept: dropping a half-read httpx stream iterator closes its connection
    async with contextlib.AsyncExitStack() as streams:
        for _ in range(20):
            source = await streams.enter_async_context(aconnect_sse(api, "GET", f"/job/follow/{job_id}"))
            readers.append(sse(source))
            assert (await anext(readers[-1])).event == "state"
        await wait_for(lambda: server.hub.subscribers == 20, timeout=10, message="20 subscriptions")

    await wait_for(lambda: server.hub.subscribers == 0, timeout=5, message="every subscription to close")


async def test_the_login_cookie_alone_is_enough_to_follow(server: Server, api: httpx.AsyncClient) -> None:
    job_id = await enqueue(api)
    await api.put(f"/job/kill/{job_id}")

    async with httpx.AsyncClient(base_url=server.url, timeout=30) as browser:
        login = await browser.post("/login", json={"username": "admin", "password": "hans"})
        assert login.status_code == 200, login.text
        assert browser.cookies.get("jobdeck_token")
        events = await events_of(browser, "GET", f"/job/follow/{job_id}")
        browser.cookies.clear()
        anonymous = await browser.get(f"/job/follow/{job_id}")

    assert kinds(events) == ["state", "close"]
    assert events[0].json()["_id"] == job_id
    assert close_of(events)["state"] == "killed"
    assert anonymous.status_code == 401


# --- long poll ----------------------------------------------------------------------------

async def test_long_poll_returns_as_soon_as_the_job_changes(
        server: Server, api: httpx.AsyncClient, worker_factory: Callable[..., Awaitable[Worker]]) -> None:
    job_id = await enqueue(api, sleep=0.3, loop_time=0.1)
    version = (await api.get(f"/job/{job_id}")).json()["data"]["version"]

    poll = asyncio.create_task(api.get(f"/job/poll/{job_id}", params={"version": version, "timeout": 10}))
    await wait_for(lambda: server.hub.subscribers == 1, timeout=10, message="the poll to wait")
    assert not poll.done()
    started = time.monotonic()
    await worker_factory()
    reply = await poll

    assert reply.status_code == 200, reply.text
    assert time.monotonic() - started < 3  # woken by the claim, not by the 10 s timeout
    assert reply.json()["data"]["version"] > version
    assert reply.json()["data"]["_id"] == job_id


async def test_a_long_poll_whose_client_leaves_drops_its_subscription_at_once(
        server: Server, api: httpx.AsyncClient) -> None:
    job_id = await enqueue(api)
    version = (await api.get(f"/job/{job_id}")).json()["data"]["version"]
    async with httpx.AsyncClient(base_url=server.url, auth=("admin", "hans")) as leaving:
        poll = asyncio.create_task(leaving.get(f"/job/poll/{job_id}", params={"version": version, "timeout": 300}))
        await wait_for(lambda: server.hub.subscribers == 1, timeout=10, message="the poll to wait")
        poll.cancel()
    await wait_for(lambda: server.hub.subscribers == 0, timeout=5, message="the poll's subscription to go")


async def test_long_poll_of_an_unchanging_job_answers_after_the_timeout(api: httpx.AsyncClient) -> None:
    job_id = await enqueue(api)
    version = (await api.get(f"/job/{job_id}")).json()["data"]["version"]

    started = time.monotonic()
    reply = await api.get(f"/job/poll/{job_id}", params={"version": version, "timeout": 1})
    waited = time.monotonic() - started

    assert reply.status_code == 200, reply.text
    assert 0.9 <= waited < 3
    assert reply.json()["data"]["version"] == version and reply.json()["data"]["state"] == "pending"


@pytest.mark.parametrize("timeout", ["0", "301"])
async def test_long_poll_timeout_outside_1_to_300_is_400(api: httpx.AsyncClient, timeout: str) -> None:
    job_id = await enqueue(api)

    reply = await api.get(f"/job/poll/{job_id}", params={"timeout": timeout})

    assert reply.status_code == 400
    assert "timeout" in reply.json()["error"]
