"""The core4 job API walkthrough (``reference/core4-job-api-walkthrough.txt``), run as it is written.

Only the base URL, the credentials and the qual_name differ from the text:
the class is ``tests.jobs.QuickDummyJob``, a ``DummyJob`` whose clock runs
twenty times as fast, so the text's 60 s jobs take 3 s each.
The steps use the synchronous ``requests`` library, exactly as a core4 client
would, so they run in a thread while the server and a worker run in the
test's event loop. Each step's reply is checked right after it.
"""
from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest
from requests import get, post, put

from core import registry
from core.db import Database
from core.job import Job
from core.worker import Worker
from handlers.app import Server

QUAL_NAME = "tests.jobs.QuickDummyJob"
HEX_ID = re.compile(r"^[0-9a-f]{24}$")


def events_in(chunks: list[bytes]) -> list[tuple[str, dict[str, Any]]]:
    """(event, data) of every event in a streamed body.

    Iterating a ``requests`` response yields chunks of bytes, not lines, so
    the chunks are joined before the text is split into events.
    """
    events = []
    for block in b"".join(chunks).decode("utf-8").split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith(":"))
        if "event" in fields:
            events.append((fields["event"], json.loads(fields["data"])))
    return events


def assert_followed_to_completion(events: list[tuple[str, dict[str, Any]]], job_id: str, *,
                                  states: bool = True) -> None:
    """A whole follow stream of ``job_id``: its states (if wanted), its log lines, and close: complete."""
    kinds = [kind for kind, _ in events]
    assert set(kinds) == ({"state", "log", "close"} if states else {"log", "close"}), kinds
    assert kinds[-1] == "close" and kinds.count("close") == 1
    assert all(data["_id"] == job_id for kind, data in events if kind == "state")
    assert all(data["job_id"] == job_id for kind, data in events if kind == "log")
    seqs = [data["seq"] for kind, data in events if kind == "log"]
    assert seqs == list(range(1, len(seqs) + 1))
    assert events[-1][1] == {"state": "complete",
                             "events": {"state": kinds.count("state"), "log": kinds.count("log")}}


def walkthrough(base: str) -> None:
    """The walkthrough's steps in order, each followed by checks of what it returned."""
    # List Jobs
    rv = get(base + "/job/list",
             auth=("admin", "hans"))
    assert rv.status_code == 200, rv.text
    assert rv.json()["data"] and rv.json()["total_count"] >= len(rv.json()["data"])

    rv = get(base + "/job/list?page=0&search=dummy",
             auth=("admin", "hans"))
    assert rv.status_code == 200, rv.text
    found = [entry["qual_name"] for entry in rv.json()["data"]]
    assert QUAL_NAME in found and all("dummy" in name.lower() for name in found)
    assert rv.json()["page"] == 0 and rv.json()["total_count"] == len(found)

    # Enqueue Jobs: the default is to follow the new job
    rv = post(base + "/job",
              json={
                  "qual_name": QUAL_NAME,
                  "args": {"sleep": 60}
              },
              auth=("admin", "hans"), stream=True)
    assert rv.status_code == 200
    assert rv.headers["Content-Type"].startswith("text/event-stream")
    streamed = []
    for line in rv:
        streamed.append(line)
    lines = b"".join(streamed).decode("utf-8").splitlines()
    assert {"event: state", "event: log", "event: close"} <= set(lines)
    events = events_in(streamed)
    first_id = events[0][1]["_id"]  # data._id of the state event, job_id of the log records
    assert HEX_ID.match(first_id)
    assert_followed_to_completion(events, first_id)

    # Job Details
    rv = get(base + "/job/" + first_id,
             auth=("admin", "hans"))
    assert rv.status_code == 200, rv.text
    detail = rv.json()["data"]
    assert detail["_id"] == first_id and detail["state"] == "complete" and detail["journal"] is True
    assert detail["args"] == {"sleep": 60} and detail["result"]["slept"] == 60

    # Queue Listing
    rv = post(base + "/job",
              json={
                  "qual_name": QUAL_NAME,
                  "args": {"sleep": 60},
                  "follow": False
              },
              auth=("admin", "hans"), stream=True)
    assert rv.status_code == 200, rv.text
    jid = rv.json()["data"]
    assert HEX_ID.match(jid) and jid != first_id

    rv = post(base + "/job/queue",
              json={"search": "dummy"},
              auth=("admin", "hans"))
    assert rv.status_code == 200, rv.text
    assert [job["_id"] for job in rv.json()["data"]] == [jid]
    assert rv.json()["total_count"] == 1
    rv_get = get(base + "/job", auth=("admin", "hans"))
    assert [job["_id"] for job in rv_get.json()["data"]] == [jid]  # GET /job delivers the same

    # Job Control
    rv = put(base + "/job/kill/" + jid,
             auth=("admin", "hans"))
    assert rv.status_code == 200, rv.text
    # The job was running: the reply comes once its worker has stopped it, so
    # the restart below finds it killed (not still running: that would be a 409).
    assert rv.json()["data"]["_id"] == jid and rv.json()["data"]["state"] == "killed"

    rv = put(base + "/job/restart/" + jid,
             json={"follow": False},
             auth=("admin", "hans"))
    assert rv.status_code == 200, rv.text
    new_jid = rv.json()["data"]
    assert HEX_ID.match(new_jid) and new_jid != jid

    rv = get(base + "/job/" + new_jid,
             auth=("admin", "hans"))
    assert rv.status_code == 200, rv.text
    assert rv.json()["data"]["state"] in ("pending", "running")
    assert rv.json()["data"]["enqueued"]["parent_id"] == jid
    rv = get(base + "/job/" + jid,
             auth=("admin", "hans"))
    assert rv.status_code == 200, rv.text
    assert rv.json()["data"]["state"] == "killed" and rv.json()["data"]["journal"] is True
    assert rv.json()["data"]["enqueued"]["child_id"] == new_jid

    # Follow the restarted job: a GET with a JSON body, until it ends (its 60 s)
    rv = get(base + "/job/follow/" + new_jid,
             json={"follow": True},
             auth=("admin", "hans"),
             stream=True)
    assert rv.status_code == 200
    streamed = []
    for line in rv:
        streamed.append(line)
    assert_followed_to_completion(events_in(streamed), new_jid)

    # Only the log, streamed
    rv = get(base + "/job/log/" + new_jid,
             json={"follow": True},
             auth=("admin", "hans"),
             stream=True)
    assert rv.status_code == 200
    streamed = []
    for line in rv:
        streamed.append(line)
    assert_followed_to_completion(events_in(streamed), new_jid, states=False)

    # Kill and remove: the job has finished by now, so both are conflicts naming its state
    rv = put(base + "/job/kill/" + new_jid,
             auth=("admin", "hans"))
    assert rv.status_code == 409, rv.text
    assert "complete" in rv.json()["error"]
    rv = put(base + "/job/remove/" + new_jid,
             auth=("admin", "hans"))
    assert rv.status_code == 409, rv.text
    assert "complete" in rv.json()["error"]

    # The job queue is empty
    rv = get(base + "/job",
             auth=("admin", "hans"))
    assert rv.status_code == 200, rv.text
    assert rv.json()["total_count"] == 0 and rv.json()["data"] == []


@pytest.fixture
async def job_classes(db: Database) -> dict[str, type[Job]]:
    """The example jobs and ``tests.jobs``, registered (the worker runs these)."""
    found = registry.discover(["tests.jobs"])
    await registry.sync(db, found)
    return found


async def test_the_core4_walkthrough_runs_with_only_url_credentials_and_qual_name_changed(
        server: Server, admin: dict[str, Any], worker: Worker) -> None:
    await asyncio.to_thread(walkthrough, f"http://127.0.0.1:{server.port}/core4/api/v1")
