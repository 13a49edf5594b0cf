"""``POST /job/batch`` and ``delay``/``run_at`` over HTTP: all or none, errors naming the item, 503 on a failed write."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest

from core import users
from core.db import Database
from handlers.app import Server
from tests.test_queue import qdb, unique_job  # noqa: F401  (fixtures)

DUMMY = "jobs.example.DummyJob"
FAIL = "jobs.example.FailJob"


@pytest.fixture
def http(team_clients, job_classes) -> httpx.AsyncClient:
    return team_clients["admin"]


def jobs(n: int, qual_name: str = DUMMY) -> list[dict[str, Any]]:
    return [{"qual_name": qual_name, "args": {"sleep": 0.5, "message": f"job {i}"}} for i in range(n)]


def error(reply: httpx.Response, status: int) -> dict[str, Any]:
    body = reply.json()
    assert (reply.status_code, body["code"]) == (status, status), reply.text
    return body


async def nothing_written(db: Database) -> bool:
    return await db.queue.count_documents({}) == 0 and await db.audit.count_documents({"action": "job.enqueue"}) == 0


async def test_a_batch_of_1000_is_one_request_that_replies_the_ids_in_order(http, db: Database, config) -> None:
    body = json.dumps({"jobs": jobs(1000)}).encode()
    assert len(body) < config.max_body_size  # 1,000 small jobs fit the default limit

    reply = await http.post("/job/batch", content=body, headers={"Content-Type": "application/json"})

    assert reply.status_code == 200, reply.text
    ids = reply.json()["data"]
    assert len(ids) == 1000 and len(set(ids)) == 1000
    stored = await db.queue.find({}, {"args": 1, "state": 1, "enqueued": 1}).sort("_id", 1).to_list()
    assert [str(job["_id"]) for job in stored] == ids
    assert [job["args"]["message"] for job in stored] == [f"job {i}" for i in range(1000)]
    assert {(job["state"], job["enqueued"]["username"]) for job in stored} == {("pending", "admin")}
    assert await db.audit.count_documents({"action": "job.enqueue", "actor": "admin"}) == 1000


async def test_a_bad_item_is_a_400_naming_its_index_and_nothing_is_written(http, db: Database) -> None:
    batch = jobs(1000)
    batch[500] = {"qual_name": DUMMY, "args": {"sleep": "long"}}

    body = error(await http.post("/job/batch", json={"jobs": batch}), 400)

    assert body["error"].startswith("jobs[500]: bad arguments for jobs.example.DummyJob: 'sleep' must be a number")
    assert body["details"] == {"index": 500}
    assert await nothing_written(db)


async def test_more_than_1000_jobs_are_a_400_and_nothing_is_written(http, db: Database) -> None:
    body = error(await http.post("/job/batch", json={"jobs": jobs(1001)}), 400)
    assert body["error"] == "at most 1000 jobs per batch, got 1001"
    assert await nothing_written(db)


async def test_a_unique_job_twice_in_a_batch_is_a_409_and_nothing_is_written(http, db: Database,
                                                                            unique_job: str) -> None:  # noqa: F811
    batch = [{"qual_name": unique_job, "args": {"key": key}} for key in ("a", "b", "c", "b")]
    body = error(await http.post("/job/batch", json={"jobs": batch}), 409)
    assert body["error"] == f"jobs[3]: {unique_job} is unique and jobs[1] has the same arguments"
    assert body["details"] == {"index": 3, "duplicate_of": 1}
    assert await nothing_written(db)

    first = (await http.post("/job/batch", json={"jobs": batch[:3]})).json()["data"]
    body = error(await http.post("/job/batch", json={"jobs": [{"qual_name": unique_job, "args": {"key": "d"}},
                                                               batch[2]]}), 409)
    assert body["details"] == {"index": 1, "job_id": first[2]}
    assert await db.queue.count_documents({}) == 3


async def test_a_batch_needs_execute_permission_for_each_class_in_it(server: Server, db: Database,
                                                                     job_classes) -> None:
    await users.add(db, "dummies", "pw-dummies", perms=["job:jobs.example.Dummy*:x"], actor="test")
    token, _ = await server.auth.issue_token(await db.user.find_one({"name": "dummies"}))
    async with httpx.AsyncClient(base_url=server.url, headers={"Authorization": f"Bearer {token}"}) as http:
        body = error(await http.post("/job/batch", json={"jobs": jobs(2) + jobs(1, FAIL) + jobs(2)}), 403)
        assert body["error"] == "jobs[2]: user 'dummies' may not execute jobs.example.FailJob"
        assert await nothing_written(db)
        reply = await http.post("/job/batch", json={"jobs": jobs(3)})
    assert reply.status_code == 200 and len(reply.json()["data"]) == 3


async def test_a_failed_write_is_a_503_and_leaves_none_of_the_batch(http, db: Database) -> None:
    await db.client.admin.command({"configureFailPoint": "failCommand", "mode": "alwaysOn",
                                   "data": {"failCommands": ["bulkWrite", "insert"], "closeConnection": True}})
    try:
        reply = await http.post("/job/batch", json={"jobs": jobs(200)})
    finally:
        await db.client.admin.command({"configureFailPoint": "failCommand", "mode": "off"})
    assert error(reply, 503)["error"] == "the database is unavailable; try again shortly"
    assert await nothing_written(db)


def near(moment: datetime, expected: datetime, slack: float = 5.0) -> bool:
    return abs((moment - expected).total_seconds()) < slack


async def test_enqueue_and_batch_take_delay_or_run_at(http, db: Database) -> None:
    now = datetime.now(timezone.utc)
    later = (now + timedelta(hours=5)).replace(microsecond=0)
    single = (await http.post("/job", json={"qual_name": DUMMY, "follow": False, "delay": 90})).json()["data"]
    queried = (await http.post("/job/enqueue", params={"qual_name": DUMMY, "follow": "false",
                                                       "run_at": later.replace(tzinfo=None).isoformat()})
               ).json()["data"]
    batch = (await http.post("/job/batch", json={"jobs": [{"qual_name": DUMMY, "delay": 30},
                                                          {"qual_name": DUMMY, "run_at": later.isoformat()}]})
             ).json()["data"]

    stored = {str(job["_id"]): job["query_at"] for job in await db.queue.find({}).to_list()}
    assert near(stored[single], now + timedelta(seconds=90))
    assert stored[queried] == later  # naive is UTC
    assert near(stored[batch[0]], now + timedelta(seconds=30)) and stored[batch[1]] == later
    shown = (await http.get(f"/job/{single}")).json()["data"]
    assert near(datetime.fromisoformat(shown["query_at"].replace("Z", "+00:00")), now + timedelta(seconds=90))


async def test_delay_and_run_at_together_are_a_400(http, db: Database) -> None:
    both = {"delay": 5, "run_at": "2026-12-24T10:00:00Z"}
    assert error(await http.post("/job", json={"qual_name": DUMMY, "follow": False, **both}), 400)["error"] == \
        "give delay or run_at, not both"
    assert error(await http.post("/job/batch", json={"jobs": [{"qual_name": DUMMY, **both}]}), 400)["error"] == \
        "jobs[0]: give delay or run_at, not both"
    assert await nothing_written(db)


async def test_the_openapi_document_describes_the_batch_and_the_start_fields(http) -> None:
    document = (await http.get("/openapi.json")).json()
    batch = document["paths"]["/job/batch"]["post"]
    schema = batch["requestBody"]["content"]["application/json"]["schema"]["properties"]["jobs"]
    assert schema["maxItems"] == 1000 and schema["items"]["required"] == ["qual_name"]
    assert {"delay", "run_at", "priority", "args"} <= set(schema["items"]["properties"])
    assert {"400", "403", "404", "409", "413", "503"} <= set(batch["responses"])
    assert "links" not in batch["responses"]["200"]  # a link names one id, not each of a list
    enqueue = document["paths"]["/job"]["post"]
    names = {parameter["name"] for parameter in enqueue["parameters"]}
    assert {"delay", "run_at"} <= names
