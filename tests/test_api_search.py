"""Listings over HTTP: wildcard searches answer at once, bad arguments are a 400, a stopped query a 503.

Jobs are made through ``core.queue`` as an operator (no worker runs): a
pending ``DummyJob`` in the queue and a killed one in the journal.
"""
from __future__ import annotations

import fnmatch
import json
import time
from typing import Any

import httpx
import pytest

from core import queue
from core.db import Database

DUMMY = "jobs.example.DummyJob"
OPERATOR = queue.operator("operator")
LISTINGS = ("/job/queue", "/job/journal", "/job/list")
# Each made the old pattern (one '.*' per star) backtrack for seconds to
# forever, stalling the whole embedded server: 13 stars took 11 s against
# 'jobs.example.DummyJob'.
SLOW_SEARCHES = ("*" * 13 + "x", "*" * 30 + "x", "*" * 13 + "Job", "*a*a*a*a*a*a*a*b", "*e*a*e*a*e*a*e*b")


@pytest.fixture
async def admin_http(db: Database, job_classes, team_clients) -> httpx.AsyncClient:
    """The admin's client, with a pending and a killed ``DummyJob``."""
    await queue.enqueue(db, DUMMY, {"sleep": 1}, user=OPERATOR)
    killed = await queue.enqueue(db, DUMMY, {"sleep": 2}, user=OPERATOR)
    await queue.kill(db, killed["_id"], user=OPERATOR)
    return team_clients["admin"]


def assert_error(reply: httpx.Response, status: int, message: str) -> None:
    """The reply is the error envelope with ``status``, and its ``error`` contains ``message``."""
    body = reply.json()
    assert (reply.status_code, body["code"]) == (status, status), body
    assert message in body["error"], body["error"]


async def qual_names(http: httpx.AsyncClient, path: str, **params: Any) -> list[str]:
    reply = await http.get(path, params={"per_page": 1000, **params})
    assert reply.status_code == 200, reply.text
    return sorted(item["qual_name"] for item in reply.json()["data"])


@pytest.mark.parametrize("search", SLOW_SEARCHES)
@pytest.mark.parametrize("path", LISTINGS)
async def test_a_search_with_many_stars_answers_at_once_and_right(admin_http, path, search):
    everything = await qual_names(admin_http, path)
    started = time.perf_counter()
    found = await qual_names(admin_http, path, search=search)
    assert time.perf_counter() - started < 5
    assert found == [name for name in everything if fnmatch.fnmatchcase(name.lower(), search.lower())]


@pytest.mark.parametrize("path", LISTINGS)
async def test_a_search_with_more_than_8_wildcards_is_400(admin_http, path):
    reply = await admin_http.get(path, params={"search": "*a" * 9})
    assert_error(reply, 400, "search: at most 8 wildcards ('*' or '?', a run of '*' counting once), got 9")


@pytest.mark.parametrize("path", ["/job/queue", "/job/journal"])
@pytest.mark.parametrize("state, message", [
    ([{}], "state {} is not one of"),
    ([["x"]], "state ['x'] is not one of"),
    ([7], "state 7 is not one of"),
])
async def test_a_state_that_is_no_name_is_400(admin_http, path, state, message):
    assert_error(await admin_http.post(path, json={"state": state}), 400, message)


@pytest.mark.parametrize("name, value", [("since", "0001-01-01T00:00:00+01:00"),
                                         ("until", "9999-12-31T23:30:00-01:00")])
async def test_a_time_that_leaves_the_range_in_utc_is_400(admin_http, name, value):
    reply = await admin_http.get("/job/journal", params={name: value})
    assert_error(reply, 400, name)
    assert_error(reply, 400, value)


@pytest.mark.parametrize("path", ["/job/queue", "/job/journal"])
@pytest.mark.parametrize("condition", [{"$gte": "0001-01-01T00:00:00+01:00"}, "9999-12-31T23:30:00-01:00",
                                       {"$in": ["0001-01-01T00:00:00+01:00"]}])
async def test_a_filter_time_that_leaves_the_range_in_utc_is_400(admin_http, path, condition):
    reply = await admin_http.get(path, params={"filter": json.dumps({"finished_at": condition})})
    assert_error(reply, 400, "filter: the time for 'finished_at': ")
    assert_error(reply, 400, "is out of range once converted to UTC")


@pytest.mark.parametrize("body", ['{"search": "Dummy\\ud800"}', '{"filter": {"qual_name": "\\ud800"}}',
                                  '{"filter": {"args.\\ud800": 1}}', '{"sort": "args.\\ud800"}',
                                  '{"qual_name": "\\udfff"}'])
async def test_a_lone_surrogate_in_a_listing_argument_is_400(admin_http, body):
    # JSON may spell one; MongoDB's encoding (UTF-8) cannot hold it. (core checks too: tests/test_listing.py)
    reply = await admin_http.post("/job/journal", content=body.encode(),
                                  headers={"Content-Type": "application/json"})
    assert_error(reply, 400, "holds a lone surrogate escape")


@pytest.fixture
async def max_time_always_times_out(db: Database) -> Any:
    """mongod's fail point: the next query that has a time limit is stopped, whatever the limit."""
    await db.client.admin.command("configureFailPoint", "maxTimeAlwaysTimeOut", mode={"times": 1})
    yield
    await db.client.admin.command("configureFailPoint", "maxTimeAlwaysTimeOut", mode="off")


async def test_a_listing_the_database_stops_is_503_with_advice(admin_http, max_time_always_times_out):
    reply = await admin_http.get("/job/journal")
    assert_error(reply, 503, "the listing took longer than 5 s and was stopped; narrow it with state, "
                             "qual_name, since/until or a search")
    assert (await admin_http.get("/job/journal")).status_code == 200
