"""Idempotent enqueue: ``POST /job`` with an ``Idempotency-Key`` header or ``key`` field, and ``enqueue --key``."""
from __future__ import annotations

import asyncio
import dataclasses
import json
from datetime import timedelta
from typing import Any, AsyncIterator, Callable

import httpx
import pytest
from click.testing import Result

from core.config import Config, load
from core.db import Database
from core.errors import ConfigError
from handlers.app import Server
from tests.test_cli_jobs import ok, run  # noqa: F401  (fixtures)

DUMMY = "jobs.example.DummyJob"


@pytest.fixture
def http(team_clients, job_classes) -> httpx.AsyncClient:
    return team_clients["admin"]


def data(reply: httpx.Response, status: int = 200) -> Any:
    body = reply.json()
    assert (reply.status_code, body["code"]) == (status, status), reply.text
    return body.get("data", body)


async def enqueue(http: httpx.AsyncClient, key: str | None = "k-1", *, header: bool = True,
                  **args: Any) -> httpx.Response:
    body = {"qual_name": DUMMY, "args": args or {"message": "hi"}, "follow": False}
    if key is not None and not header:
        body["key"] = key
    return await http.post("/job", json=body, headers={"Idempotency-Key": key} if key is not None and header else {})


async def test_a_repeat_replies_the_first_job_s_id_with_200_and_a_replayed_header(http, db: Database) -> None:
    first = await enqueue(http)
    job_id = data(first)
    assert "Idempotent-Replayed" not in first.headers

    for header in (True, False):  # the key field is the same key as the header
        again = await enqueue(http, header=header)
        assert data(again) == job_id
        assert again.headers["Idempotent-Replayed"] == "true"
    assert [str(i) for i in await db.queue.distinct("_id")] == [job_id]
    # Only the real enqueue is audited.
    assert await db.audit.count_documents({"action": "job.enqueue"}) == 1


async def test_other_arguments_under_a_used_key_are_a_409_naming_the_first_job(http, db: Database) -> None:
    job_id = data(await enqueue(http, message="a"))

    body = data(await enqueue(http, message="b"), 409)
    assert job_id in body["error"] and body["details"] == {"job_id": job_id}
    reply = await http.post("/job", json={"qual_name": DUMMY, "args": {"message": "a"}, "follow": False,
                                          "priority": 7}, headers={"Idempotency-Key": "k-1"})
    assert data(reply, 409)["details"] == {"job_id": job_id}
    assert await db.queue.count_documents({}) == 1


async def test_twenty_concurrent_identical_requests_make_one_job(http, db: Database) -> None:
    replies = await asyncio.gather(*(enqueue(http, "burst") for _ in range(20)))

    ids = {data(reply) for reply in replies}
    assert len(ids) == 1
    assert sum("Idempotent-Replayed" not in reply.headers for reply in replies) == 1
    assert await db.queue.count_documents({}) == 1
    assert await db.audit.count_documents({"action": "job.enqueue"}) == 1


async def test_each_user_has_keys_of_its_own(team_clients, job_classes, db: Database) -> None:
    mine = data(await enqueue(team_clients["admin"], "shared"))
    theirs = data(await enqueue(team_clients["executor"], "shared", message="other"))

    assert mine != theirs
    assert await db.queue.count_documents({}) == 2
    assert data(await enqueue(team_clients["executor"], "shared", message="other")) == theirs


@pytest.mark.parametrize(("body", "headers", "message"), [
    ({"key": ""}, {}, "1 to 200 printable characters"),
    ({"key": "x" * 201}, {}, "1 to 200 printable characters"),
    ({"key": "tab\there"}, {}, "1 to 200 printable characters"),
    ({"key": 5}, {}, "argument 'key': expected"),
    ({"key": "a"}, {"Idempotency-Key": "b"}, "header and the key field differ"),
    ({}, {"Idempotency-Key": ""}, "1 to 200 printable characters"),
], ids=["empty", "too-long", "control", "number", "both-differ", "empty-header"])
async def test_a_bad_key_is_a_400_and_enqueues_nothing(http, db: Database, body: dict[str, Any],
                                                       headers: dict[str, str], message: str) -> None:
    reply = await http.post("/job", json={"qual_name": DUMMY, "follow": False, **body}, headers=headers)
    assert message in data(reply, 400)["error"]
    assert await db.queue.count_documents({}) == 0


async def test_the_same_key_in_header_and_field_is_one_key(http, db: Database) -> None:
    reply = await http.post("/job", json={"qual_name": DUMMY, "follow": False, "key": "same"},
                            headers={"Idempotency-Key": "same"})
    job_id = data(reply)
    again = await http.post("/job/enqueue", json={"qual_name": DUMMY, "follow": False, "key": "same"})
    assert data(again) == job_id and again.headers["Idempotent-Replayed"] == "true"
    assert await db.queue.count_documents({}) == 1


async def test_a_batch_refuses_a_key(http, db: Database) -> None:
    for kwargs in ({"headers": {"Idempotency-Key": "b"}}, {}):
        body = {"jobs": [{"qual_name": DUMMY}]} | ({} if kwargs else {"key": "b"})
        reply = await http.post("/job/batch", json=body, **kwargs)
        assert "idempotency keys are for single enqueues" in data(reply, 400)["error"]
    assert await db.queue.count_documents({}) == 0


async def test_a_repeat_that_follows_streams_the_first_job(http, db: Database) -> None:
    job_id = data(await enqueue(http, "follow-me"))
    body = {"qual_name": DUMMY, "args": {"message": "hi"}}
    async with http.stream("POST", "/job", json=body, headers={"Idempotency-Key": "follow-me"}) as reply:
        assert reply.status_code == 200 and reply.headers["Idempotent-Replayed"] == "true"
        async for line in reply.aiter_lines():
            if line.startswith("data:"):
                assert json.loads(line[5:])["_id"] == job_id
                break
    assert await db.queue.count_documents({}) == 1


@pytest.fixture
async def two_hour_server(config: Config, db: Database, team) -> AsyncIterator[Server]:
    http = Server(dataclasses.replace(config, idempotency_hours=2.0), db)
    await http.start()
    yield http
    await http.stop()


async def test_idempotency_hours_is_how_long_a_key_holds(two_hour_server: Server, team, job_classes,
                                                         db: Database) -> None:
    token, _ = await two_hour_server.auth.issue_token(team["admin"])
    async with httpx.AsyncClient(base_url=two_hour_server.url, timeout=30,
                                 headers={"Authorization": f"Bearer {token}"}) as http:
        data(await enqueue(http, "two-hours"))
    guard = await db.enqueue_keys.find_one({})
    assert abs(guard["expires"] - guard["at"] - timedelta(hours=2)) < timedelta(seconds=1)


@pytest.mark.parametrize("value", ["0", "-1", "x"])
def test_idempotency_hours_must_be_a_positive_number(value: str) -> None:
    with pytest.raises(ConfigError, match="JOBDECK_IDEMPOTENCY_HOURS"):
        load(env={"JOBDECK_IDEMPOTENCY_HOURS": value})
    assert load(env={}).idempotency_hours == 24.0


def test_enqueue_key_twice_enqueues_once_and_says_so(run: Callable[..., Result], config: Config) -> None:  # noqa: F811
    first = ok(run("enqueue", DUMMY, "message=hi", "--key", "nightly")).strip()
    again = run("enqueue", DUMMY, "message=hi", "--key", "nightly")
    assert ok(again).strip() == first
    assert "was used already" in again.stderr and first in again.stderr

    other = run("enqueue", DUMMY, "message=other", "--key", "nightly")
    assert other.exit_code != 0 and first in other.output
    assert json.loads(ok(run("queue", "--json")))["total_count"] == 1
    assert run("enqueue", "--from", "-", "--key", "k", input="").exit_code == 2  # keys are for one job


async def test_the_openapi_document_shows_the_key_the_replayed_header_and_the_409(http) -> None:
    operation = (await http.get("/openapi.json")).json()["paths"]["/job"]["post"]
    header = [p for p in operation["parameters"] if p["in"] == "header" and p["name"] == "Idempotency-Key"]
    assert header and header[0]["schema"]["maxLength"] == 200
    assert "key" in operation["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert "Idempotent-Replayed" in operation["responses"]["200"]["headers"]
    assert "409" in operation["responses"] and "Idempotent-Replayed: true" in operation["description"]
