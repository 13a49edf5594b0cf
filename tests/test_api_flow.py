"""Pause, resume, worker tags and concurrency limits over HTTP."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import httpx
import pytest

from core.db import Database

DUMMY = "jobs.example.DummyJob"
NOOP = "jobs.example.NoopJob"


async def enqueue(http: httpx.AsyncClient, **fields: Any) -> httpx.Response:
    return await http.post("/job", json={"qual_name": NOOP, "follow": False, **fields})


async def test_pause_and_resume_the_queue_as_admin_shown_in_stats_registry_and_detail(
        db: Database, job_classes: Any, team_clients: dict[str | None, httpx.AsyncClient]) -> None:
    admin = team_clients["admin"]
    reply = await admin.put("/job/pause", json={"wait": 0})
    assert reply.status_code == 200, reply.text
    assert reply.json()["data"]["flow"] == {"all": True, "classes": [], "version": 1}
    job_id = (await enqueue(admin)).json()["data"]
    detail = (await admin.get(f"/job/{job_id}")).json()["data"]
    assert detail["state"] == "pending" and detail["waiting_for"] == ["the queue is paused"]
    assert (await admin.get("/job/stats")).json()["data"]["paused"] == {"all": True, "classes": []}

    await admin.put("/job/resume", json={"wait": 0})
    await admin.put("/job/pause", json={"qual_name": NOOP, "wait": 0})
    detail = (await admin.get(f"/job/{job_id}")).json()["data"]
    assert detail["waiting_for"] == [f"{NOOP} is paused"]
    listed = {entry["_id"]: entry for entry in (await admin.get("/job/list", params={"per_page": 100})).json()["data"]}
    assert listed[NOOP]["paused"] is True and listed[DUMMY]["paused"] is False
    await admin.put("/job/resume", params={"qual_name": NOOP, "wait": 0})
    assert (await admin.get(f"/job/{job_id}")).json()["data"]["waiting_for"] == []
    actions = [entry["action"] for entry in await db.audit.find({"action": {"$regex": "^queue"}}).to_list()]
    assert actions == ["queue.pause", "queue.resume", "queue.pause", "queue.resume"]


async def test_pause_rights_reader_none_executor_its_classes_only(
        job_classes: Any, team_clients: dict[str | None, httpx.AsyncClient]) -> None:
    reader, executor = team_clients["reader"], team_clients["executor"]
    assert (await reader.put("/job/pause", json={"qual_name": NOOP, "wait": 0})).status_code == 403
    assert (await executor.put("/job/pause", json={"wait": 0})).status_code == 403  # the whole queue: admins
    assert (await executor.put("/job/pause", json={"qual_name": "other.Job", "wait": 0})).status_code == 403
    reply = await executor.put("/job/pause", json={"qual_name": NOOP, "wait": 0})
    assert reply.status_code == 200 and reply.json()["data"]["flow"]["classes"] == [NOOP]
    assert (await team_clients[None].put("/job/pause")).status_code == 401


@pytest.mark.parametrize("body", [{"wait": -1}, {"wait": 61}, {"wait": "soon"}, {"qual_name": ""},
                                  {"qual_name": "x" * 201}])
async def test_bad_pause_arguments_are_400(job_classes: Any, team_clients: dict[str | None, httpx.AsyncClient],
                                           body: dict[str, Any]) -> None:
    reply = await team_clients["admin"].put("/job/pause", json=body)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]


async def test_a_job_requiring_tags_no_live_worker_has_says_so_in_detail_and_stats(
        db: Database, job_classes: Any, team_clients: dict[str | None, httpx.AsyncClient]) -> None:
    admin = team_clients["admin"]
    await db.worker.insert_one({"_id": "w:1:aa", "host": "h", "tags": ["gpu"],
                                "heartbeat": datetime.now(timezone.utc)})
    needs_eu = (await enqueue(admin, requires=["gpu", "eu"])).json()["data"]
    needs_gpu = (await enqueue(admin, requires=["gpu"])).json()["data"]
    assert (await admin.get(f"/job/{needs_eu}")).json()["data"]["waiting_for"] == ["no live worker has tags eu, gpu"]
    assert (await admin.get(f"/job/{needs_gpu}")).json()["data"]["waiting_for"] == []
    assert (await admin.get("/job/stats")).json()["data"]["unrunnable"] == [
        {"requires": ["eu", "gpu"], "jobs": 1, "reason": "no live worker has tags eu, gpu"}]


@pytest.mark.parametrize("fields", [{"requires": "gpu"}, {"requires": ["no space"]}, {"requires": [1]},
                                    {"max_parallel": 0}, {"max_parallel": 1.5}, {"max_parallel": "x"}])
async def test_bad_limits_and_tags_are_400_and_enqueue_nothing(
        db: Database, job_classes: Any, team_clients: dict[str | None, httpx.AsyncClient],
        fields: dict[str, Any]) -> None:
    reply = await enqueue(team_clients["admin"], **fields)
    assert reply.status_code == 400, reply.text
    assert await db.queue.count_documents({}) == 0


async def test_enqueue_options_max_parallel_and_requires_are_stored(
        db: Database, job_classes: Any, team_clients: dict[str | None, httpx.AsyncClient]) -> None:
    reply = await enqueue(team_clients["admin"], max_parallel=3, requires=["gpu", "eu", "gpu"])
    job = (await team_clients["admin"].get(f"/job/{reply.json()['data']}")).json()["data"]
    assert job["max_parallel"] == 3 and job["requires"] == ["eu", "gpu"]
