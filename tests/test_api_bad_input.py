"""Bad input on every route: a 4xx error envelope whose ``error`` names the problem, never a 500.

Each case of ``CASES`` is one request against a fresh database that holds a
pending and a killed ``DummyJob``; besides its status and message, a refused
request must change nothing (no job enqueued, killed or restarted, no audit
entry).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from core import queue, registry
from core.db import Database
from handlers.app import ROUTES
from tests.conftest import forget_package, make_package

DUMMY = "jobs.example.DummyJob"
OPERATOR = queue.operator("operator")
UNKNOWN = "5f6252b42e84fa29038a3e3f"  # well-formed, but no such job
SHORT, NOT_HEX = "123", "z" * 24


@dataclass(frozen=True)
class Case:
    """A bad request to the route ``pattern`` of ``ROUTES``, and the answer it must get."""

    pattern: str
    method: str
    path: str  # may hold {pending} and {killed}: the ids of the test's jobs
    status: int
    message: str  # must occur in the reply's "error"
    kwargs: dict[str, Any] = field(default_factory=dict)  # params, json or content for httpx

    @property
    def id(self) -> str:
        return f"{self.method} {self.path} -> {self.status} {self.message[:40]}"


def case(pattern: str, method: str, path: str, status: int, message: str, **kwargs: Any) -> Case:
    return Case(pattern, method, path, status, message, kwargs)


def enqueue(status: int, message: str, path: str = "/job", **body: Any) -> Case:
    return case(path, "POST", path, status, message, json={"qual_name": DUMMY, "follow": False, **body})


def bad_ids(pattern: str, method: str, path: str, **kwargs: Any) -> list[Case]:
    """Malformed ids are 400 naming the id; a well-formed unknown one is 404."""
    return [case(pattern, method, path.format(id=SHORT), 400, "bad job id '123': expected 24 hexadecimal", **kwargs),
            case(pattern, method, path.format(id=NOT_HEX), 400, f"bad job id '{NOT_HEX}'", **kwargs),
            case(pattern, method, path.format(id=UNKNOWN), 404, f"no job {UNKNOWN}", **kwargs)]


def bad_filters(pattern: str, method: str, path: str) -> list[Case]:
    """Operators outside the safe subset and unknown fields are 400 naming the key."""
    filters = [({"$where": "this.state == 'pending'"}, "operator '$where' is not allowed"),
               ({"$function": {"body": "return true", "args": [], "lang": "js"}}, "operator '$function' is not allowed"),
               ({"$expr": {"$eq": ["$state", "pending"]}}, "operator '$expr' is not allowed"),
               ({"qual_name": {"$regex": "Dummy"}}, "operator '$regex' is not allowed"),
               ({"password": "x"}, "unknown field 'password'")]
    if method == "GET":  # JSON text in the query string
        return [case(pattern, method, path, 400, message, params={"filter": json.dumps(query)})
                for query, message in filters]
    return [case(pattern, method, path, 400, message, json={"filter": query}) for query, message in filters]


JSON = {"headers": {"Content-Type": "application/json"}}
NOT_JSON = {"content": b'{"qual_name": "jobs.example.DummyJob",', **JSON}

CASES: list[Case] = [
    # -- service routes: wrong methods, bad bodies
    case("/health", "DELETE", "/health", 405, "method DELETE is not allowed on /api/v1/health"),
    case("/whoami", "POST", "/whoami", 405, "method POST is not allowed on /api/v1/whoami"),
    case("/login", "POST", "/login", 400, "request body is not valid JSON", **NOT_JSON),
    case("/login", "GET", "/login", 405, "method GET is not allowed"),
    case("/logout", "GET", "/logout", 405, "method GET is not allowed"),
    case("/metrics", "POST", "/metrics", 405, "method POST is not allowed"),
    case("/openapi.json", "PUT", "/openapi.json", 405, "method PUT is not allowed"),
    case("/worker", "DELETE", "/worker", 405, "method DELETE is not allowed"),
    # -- enqueue
    case("/job", "POST", "/job", 400, "request body is not valid JSON", **NOT_JSON),
    case("/job", "POST", "/job", 400, "request body must be a JSON object, got list", json=[DUMMY]),
    case("/job", "POST", "/job", 400, "argument 'qual_name' is required", json={"follow": False}),
    case("/job", "POST", "/job", 400, "argument 'qual_name': expected a string, got 42",
         json={"qual_name": 42, "follow": False}),
    enqueue(404, "unknown job 'jobs.example.NoSuchJob'", qual_name="jobs.example.NoSuchJob"),
    enqueue(400, "argument 'args': expected a JSON object, got [1, 2]", args=[1, 2]),
    enqueue(400, "argument 'follow': expected a boolean (true/false/1/0), got 'maybe'", follow="maybe"),
    enqueue(400, "argument 'priority': expected an integer, got 'high'", priority="high"),
    enqueue(400, "option 'attempts' must be between 1 and 1000, got 0", attempts=0),
    enqueue(400, "option 'wall_time' must be between 0.001 and", wall_time=-1),
    enqueue(400, "bad arguments for jobs.example.DummyJob: unknown 'bogus'", args={"bogus": 1}),
    enqueue(400, "'sleep' must be a number, got 'long'", args={"sleep": "long"}),
    enqueue(400, "bad arguments for jobs.example.DeferJob: 'until' holds an integer beyond 64 bits",
            qual_name="jobs.example.DeferJob", args={"until": 10 ** 30}),
    case("/job", "POST", "/job", 400, "request body is not valid JSON: NaN is not a JSON number",
         content=b'{"qual_name": "jobs.example.DummyJob", "follow": false, "args": {"sleep": NaN}}', **JSON),
    case("/job", "POST", "/job", 400, "request body is not valid JSON: number 1e999 is out of range",
         content=b'{"qual_name": "jobs.example.DummyJob", "follow": false, "args": {"sleep": 1e999}}', **JSON),
    case("/job", "POST", "/job", 400, "holds a lone surrogate escape",
         content=b'{"qual_name": "jobs.example.DummyJob", "follow": false, "args": {"message": "\\ud800"}}', **JSON),
    case("/job", "POST", "/job", 400, "holds a lone surrogate escape",
         content=b'{"qual_name": "jobs.example.DummyJob", "follow": false, "args": {"\\udfff": 1}}', **JSON),
    case("/job", "PUT", "/job", 405, "method PUT is not allowed"),
    case("/job/enqueue", "POST", "/job/enqueue", 400, "request body is not valid JSON", **NOT_JSON),
    enqueue(400, "argument 'follow': expected a boolean", path="/job/enqueue", follow="maybe"),
    enqueue(404, "unknown job 'nowhere.Job'", path="/job/enqueue", qual_name="nowhere.Job"),
    case("/job/enqueue", "GET", "/job/enqueue", 405, "method GET is not allowed"),
    enqueue(400, "give delay or run_at, not both", delay=5, run_at="2026-11-24T10:00:00Z"),
    enqueue(400, "argument 'delay': expected a number, got 'soon'", delay="soon"),
    enqueue(400, "delay must be a number of seconds from 0", delay=-1),
    enqueue(400, "argument 'run_at': expected a date and time (ISO 8601), got 'later'", run_at="later"),
    # -- batch enqueue
    case("/job/batch", "POST", "/job/batch", 400, "argument 'jobs' is required", json={}),
    case("/job/batch", "POST", "/job/batch", 400, "argument 'jobs': expected a JSON list",
         json={"jobs": {"qual_name": DUMMY}}),
    case("/job/batch", "POST", "/job/batch", 400, "at most 1000 jobs per batch, got 1001",
         json={"jobs": [{"qual_name": DUMMY}] * 1001}),
    case("/job/batch", "POST", "/job/batch", 400, "jobs[1]: bad arguments for jobs.example.DummyJob: unknown 'x'",
         json={"jobs": [{"qual_name": DUMMY}, {"qual_name": DUMMY, "args": {"x": 1}}]}),
    case("/job/batch", "POST", "/job/batch", 404, "jobs[0]: unknown job 'nowhere.Job'",
         json={"jobs": [{"qual_name": "nowhere.Job"}, {"qual_name": DUMMY}]}),
    case("/job/batch", "POST", "/job/batch", 400, "jobs[0]: give delay or run_at, not both",
         json={"jobs": [{"qual_name": DUMMY, "delay": 1, "run_at": "2026-11-24T10:00:00Z"}]}),
    case("/job/batch", "GET", "/job/batch", 405, "method GET is not allowed"),
    # -- listings
    case("/job", "GET", "/job", 400, "argument 'per_page': expected an integer, got 'abc'", params={"per_page": "abc"}),
    case("/job", "GET", "/job", 400, "argument 'filter': expected a JSON object, got '{state'",
         params={"filter": "{state"}),
    *bad_filters("/job", "GET", "/job"),
    case("/job/list", "GET", "/job/list", 400, "argument 'page': expected an integer, got 'x'", params={"page": "x"}),
    case("/job/list", "GET", "/job/list", 400, "per_page must be between 1 and 1000, got 100000",
         params={"per_page": 100000}),
    case("/job/list", "GET", "/job/list", 400, "page -100 is before the first page", params={"page": -100}),
    case("/job/list", "GET", "/job/list", 400, "sort: unknown field 'popularity'", params={"sort": "-popularity"}),
    case("/job/list", "DELETE", "/job/list", 405, "method DELETE is not allowed on /api/v1/job/list"),
    *bad_filters("/job/list", "GET", "/job/list"),
    case("/job/queue", "POST", "/job/queue", 400, "request body is not valid JSON", **NOT_JSON),
    case("/job/queue", "GET", "/job/queue", 400, "argument 'page': expected an integer, got 'x'", params={"page": "x"}),
    case("/job/queue", "GET", "/job/queue", 400, "per_page must be between 1 and 1000, got 100000",
         params={"per_page": "100000"}),
    case("/job/queue", "POST", "/job/queue", 400, "page -100 is before the first page", json={"page": -100}),
    case("/job/queue", "GET", "/job/queue", 400, "sort: unknown field 'bogus'", params={"sort": "bogus"}),
    case("/job/queue", "GET", "/job/queue", 400, "state 'bogus' is not one of", params={"state": "pending,bogus"}),
    case("/job/queue", "GET", "/job/queue", 400, "state 'complete' is not one of", params={"state": "complete"}),
    *bad_filters("/job/queue", "POST", "/job/queue"),
    case("/job/queue", "DELETE", "/job/queue", 405, "method DELETE is not allowed"),
    case("/job/queue", "POST", "/job/queue", 400, "request body is not valid JSON: nested too deeply",
         content=('{"filter": {"args": ' + "[" * 5000 + "]" * 5000 + "}}").encode(), **JSON),
    case("/job/queue", "GET", "/job/queue", 400, "argument 'filter': expected a JSON object",
         params={"filter": '{"args": ' + "[" * 2000 + "]" * 2000 + "}"}),
    case("/job/journal", "GET", "/job/journal", 400, "argument 'since': expected a date and time (ISO 8601), "
         "got 'yesterday'", params={"since": "yesterday"}),
    case("/job/journal", "GET", "/job/journal", 400, "argument 'until': expected a date and time",
         params={"until": "2026-13-45T25:00:00Z"}),
    case("/job/journal", "GET", "/job/journal", 400, "is later than until",
         params={"since": "2026-11-24T10:00:00Z", "until": "2026-11-23T10:00:00Z"}),
    case("/job/journal", "GET", "/job/journal", 400, "argument 'since': expected a date and time",
         params={"since": "0001-01-01T00:00:00+01:00"}),  # before year 1 in UTC
    case("/job/journal", "GET", "/job/journal", 400, "argument 'until': expected a date and time",
         params={"until": "9999-12-31T23:30:00-01:00"}),  # after year 9999 in UTC
    case("/job/journal", "GET", "/job/journal", 400, "state 'pending' is not one of", params={"state": "pending"}),
    case("/job/journal", "GET", "/job/journal", 400, "sort: unknown field 'color'", params={"sort": "color"}),
    case("/job/journal", "GET", "/job/journal", 400, "argument 'per_page': expected an integer, got '1.5'",
         params={"per_page": "1.5"}),
    *bad_filters("/job/journal", "GET", "/job/journal"),
    case("/job/stats", "PUT", "/job/stats", 405, "method PUT is not allowed on /api/v1/job/stats"),
    case("", "DELETE", "", 405, "method DELETE is not allowed"),
    # -- flow control (an invalid pause changes nothing, not even the audit trail)
    case("/job/pause", "PUT", "/job/pause", 400, "argument 'wait': 0 to 60 seconds, got 61", json={"wait": 61}),
    case("/job/pause", "PUT", "/job/pause", 400, "qual_name must be a job class name", json={"qual_name": "x y"}),
    case("/job/pause", "GET", "/job/pause", 405, "method GET is not allowed"),
    case("/job/resume", "PUT", "/job/resume", 400, "argument 'wait': expected a number, got 'soon'",
         json={"wait": "soon"}),
    case("/job/resume", "POST", "/job/resume", 405, "method POST is not allowed"),
    enqueue(400, "option 'max_parallel' must be between 1 and 100000, got 0", max_parallel=0),
    enqueue(400, "option 'requires': bad tag 'g p u'", requires=["g p u"]),
    # -- the event stream
    case("/job/events", "GET", "/job/events", 400, "state: unknown state 'bogus'", params={"state": "bogus"}),
    case("/job/events", "GET", "/job/events", 400, "logs=true needs ids", params={"logs": "true"}),
    case("/job/events", "GET", "/job/events", 400, "ids: at most 100 job ids",
         params={"ids": ",".join([UNKNOWN] * 101)}),
    case("/job/events", "GET", "/job/events", 400, "argument 'timeout': expected seconds from 0 to",
         params={"timeout": -1}),
    case("/job/events", "POST", "/job/events", 405, "method POST is not allowed"),
    # -- users (audited changes: a refused one writes no entry)
    case("/user", "POST", "/user", 400, "the password must not be empty", json={"name": "dave", "password": ""}),
    case("/user", "POST", "/user", 409, "user 'admin' exists already", json={"name": "admin", "password": "x"}),
    case("/user", "DELETE", "/user", 405, "method DELETE is not allowed"),
    case(r"/user/([^/]+)", "PUT", "/user/admin", 400, "nothing to change", json={}),
    case(r"/user/([^/]+)", "GET", "/user/nobody", 404, "no user 'nobody'"),
    case(r"/user/([^/]+)", "DELETE", "/user/admin", 409, "it is the last active admin"),
    # -- API tokens and sessions (audited: a refused one writes no entry, makes no token)
    case("/token", "POST", "/token", 400, "bad token name ''", json={"name": ""}),
    case("/token", "POST", "/token", 400, "expires_in_days must be a whole number of days from 1 to 3650",
         json={"name": "n", "expires_in_days": 0}),
    case("/token", "POST", "/token", 400, "argument 'read_only': expected", json={"name": "n", "read_only": "x"}),
    case("/token", "POST", "/token", 400, "argument 'name' is required", json={}),
    case("/token", "PUT", "/token", 405, "method PUT is not allowed"),
    case(r"/token/([^/]+)", "DELETE", "/token/nothex", 404, "no token 'nothex'"),
    case(r"/token/([^/]+)", "DELETE", f"/token/{UNKNOWN}", 404, f"no token '{UNKNOWN}'"),
    case(r"/token/([^/]+)", "GET", f"/token/{UNKNOWN}", 405, "method GET is not allowed"),
    case("/session", "GET", "/session", 400, "bad user name 'no body'", params={"user": "no body"}),
    case("/session", "POST", "/session", 405, "method POST is not allowed"),
    case(r"/session/([^/]+)", "DELETE", f"/session/{UNKNOWN}", 404, f"no session '{UNKNOWN}'"),
    # -- the audit trail
    case("/audit", "GET", "/audit", 400, "since: expected an ISO 8601 time", params={"since": "yesterday"}),
    case("/audit", "GET", "/audit", 400, "until: expected an ISO 8601 time", params={"until": "2026-02-30"}),
    case("/audit", "GET", "/audit", 400, "out of range once converted to UTC",
         params={"since": "0001-01-01T00:00:00+01:00"}),
    case("/audit", "GET", "/audit", 400, "reaches back before the year 1", params={"since": "999999999d"}),
    case("/audit", "GET", "/audit", 400, "is later than until", params={"since": "1h", "until": "2h"}),
    case("/audit", "GET", "/audit", 400, "since: at most 64 characters", params={"since": "1" * 65}),
    case("/audit", "GET", "/audit", 400, "user: at most 100 characters", params={"user": "x" * 101}),
    case("/audit", "GET", "/audit", 400, "target: at most 100 characters", params={"target": "x" * 101}),
    case("/audit", "GET", "/audit", 400, "action: expected an action such as job.kill", params={"action": "job*"}),
    case("/audit", "GET", "/audit", 400, "argument 'user': expected a string", json={"user": ["admin"]}),
    case("/audit", "GET", "/audit", 400, "per_page must be between 1 and 1000", params={"per_page": 0}),
    case("/audit", "GET", "/audit", 400, "after: not a cursor of this listing", params={"after": "nonsense"}),
    case("/audit", "GET", "/audit", 400, "give after or page, not both",
         params={"page": 1, "after": "nonsense"}),
    case("/audit", "POST", "/audit", 405, "method POST is not allowed"),
    # -- schedules
    case("/schedule", "POST", "/schedule", 400, "bad cron 'every minute'",
         json={"qual_name": DUMMY, "cron": "every minute"}),
    case("/schedule", "POST", "/schedule", 400, "unknown time zone 'Mars/Olympus'",
         json={"qual_name": DUMMY, "cron": "* * * * *", "tz": "Mars/Olympus"}),
    case("/schedule", "POST", "/schedule", 404, "unknown job 'nowhere.Job'",
         json={"qual_name": "nowhere.Job", "cron": "* * * * *"}),
    case("/schedule", "POST", "/schedule", 400, "overlap must be one of",
         json={"qual_name": DUMMY, "cron": "* * * * *", "overlap": "sometimes"}),
    case("/schedule", "DELETE", "/schedule", 405, "method DELETE is not allowed"),
    case(r"/schedule/([^/]+)", "GET", "/schedule/nosuch", 404, "no schedule nosuch"),
    case(r"/schedule/([^/]+)", "PUT", "/schedule/nosuch", 404, "no schedule nosuch", json={"enabled": False}),
    case(r"/schedule/([^/]+)", "POST", "/schedule/nosuch", 405, "method POST is not allowed"),
    case(r"/schedule/([^/]+)/pause", "PUT", "/schedule/nosuch/pause", 404, "no schedule nosuch"),
    case(r"/schedule/([^/]+)/resume", "PUT", "/schedule/nosuch/resume", 404, "no schedule nosuch"),
    # -- one job
    *bad_ids(r"/job/detail/([^/]+)", "GET", "/job/detail/{id}"),
    case(r"/job/detail/([^/]+)", "DELETE", "/job/detail/{pending}", 405, "method DELETE is not allowed"),
    *bad_ids(r"/job/follow/([^/]+)", "GET", "/job/follow/{id}"),
    case(r"/job/follow/([^/]+)", "POST", "/job/follow/{killed}", 405, "method POST is not allowed on /api/v1/job/follow/"),
    case(r"/job/follow/([^/]+)", "GET", "/job/follow/{pending}", 400, "event id '0.99999999999999999999999' is out "
         "of range", headers={"Last-Event-ID": "0.99999999999999999999999"}),
    case(r"/job/follow/([^/]+)", "GET", "/job/follow/{pending}", 400, "is out of range",
         params={"last_event_id": f"{2 ** 63}.1"}),
    *bad_ids(r"/job/log/([^/]+)", "GET", "/job/log/{id}"),
    *bad_ids(r"/job/log/([^/]+)", "GET", "/job/log/{id}", params={"follow": "true"}),
    case(r"/job/log/([^/]+)", "GET", "/job/log/{killed}", 400, "argument 'follow': expected a boolean",
         params={"follow": "maybe"}),
    case(r"/job/log/([^/]+)", "GET", "/job/log/{killed}", 400, "per_page must be between 1 and 1000, got 100000",
         params={"per_page": 100000}),
    case(r"/job/log/([^/]+)", "GET", "/job/log/{killed}", 400, "page -100 is before the first page",
         params={"page": -100}),
    *bad_ids(r"/job/poll/([^/]+)", "GET", "/job/poll/{id}", params={"timeout": 1}),
    case(r"/job/poll/([^/]+)", "GET", "/job/poll/{pending}", 400, "timeout must be between 1 and 300 seconds, got 0",
         params={"timeout": 0}),
    case(r"/job/poll/([^/]+)", "GET", "/job/poll/{pending}", 400, "timeout must be between 1 and 300 seconds, got 301",
         params={"timeout": 301}),
    case(r"/job/poll/([^/]+)", "GET", "/job/poll/{pending}", 400, "argument 'timeout': expected a number, got 'soon'",
         params={"timeout": "soon"}),
    case(r"/job/poll/([^/]+)", "GET", "/job/poll/{pending}", 400, "argument 'version': expected an integer",
         params={"version": "latest", "timeout": 1}),
    *bad_ids(r"/job/kill/([^/]+)", "PUT", "/job/kill/{id}"),
    case(r"/job/kill/([^/]+)", "PUT", "/job/kill/{killed}", 409, "it has finished as killed"),
    case(r"/job/kill/([^/]+)", "PUT", "/job/kill/{pending}", 400, "argument 'wait': expected a boolean",
         params={"wait": "maybe"}),
    case(r"/job/kill/([^/]+)", "GET", "/job/kill/{pending}", 405, "method GET is not allowed"),
    case(r"/job/kill/([^/]+)", "PUT", "/job/kill/{pending}", 415, "a PUT body must be sent as application/json",
         content=b'{"wait": false}', headers={"Content-Type": "text/plain"}),
    *bad_ids(r"/job/remove/([^/]+)", "PUT", "/job/remove/{id}"),
    case(r"/job/remove/([^/]+)", "PUT", "/job/remove/{killed}", 409, "it has finished as killed"),
    *bad_ids(r"/job/restart/([^/]+)", "PUT", "/job/restart/{id}", params={"follow": "false"}),
    case(r"/job/restart/([^/]+)", "PUT", "/job/restart/{pending}", 409, "it is pending; only failed, deferred",
         params={"follow": "false"}),
    case(r"/job/restart/([^/]+)", "PUT", "/job/restart/{killed}", 400, "argument 'follow': expected a boolean",
         params={"follow": "maybe"}),
    case(r"/job/([^/]+)/([^/]+)", "PUT", "/job/explode/{pending}", 405, "unknown action 'explode'; actions: detail"),
    case(r"/job/([^/]+)/([^/]+)", "GET", "/job/stats/{pending}", 405, "unknown action 'stats'"),
    *bad_ids(r"/job/([^/]+)", "DELETE", "/job/{id}"),
    case(r"/job/([^/]+)", "GET", f"/job/{SHORT}", 400, "bad job id '123'"),
    case(r"/job/([^/]+)", "GET", f"/job/{UNKNOWN}", 404, f"no job {UNKNOWN}"),
    case(r"/job/([^/]+)", "DELETE", "/job/{killed}", 409, "cannot remove job"),
    case(r"/job/([^/]+)", "PUT", "/job/{pending}", 405, "method PUT is not allowed"),
]


@pytest.fixture
async def deck(db: Database, job_classes, team_clients) -> dict[str, Any]:
    """The admin's client and a pending and a killed job."""
    pending = await queue.enqueue(db, DUMMY, {"sleep": 1}, user=OPERATOR)
    killed = await queue.enqueue(db, DUMMY, {"sleep": 2}, user=OPERATOR)
    await queue.kill(db, killed["_id"], user=OPERATOR)
    return {"http": team_clients["admin"], "pending": str(pending["_id"]), "killed": str(killed["_id"])}


def assert_error(reply: httpx.Response, status: int, message: str) -> dict[str, Any]:
    """The reply is the error envelope with ``status``, and its ``error`` contains ``message``."""
    assert reply.headers["Content-Type"].startswith("application/json"), reply.text
    body = reply.json()
    assert (reply.status_code, body["code"]) == (status, status), body
    assert "data" not in body
    assert message in body["error"], body["error"]
    return body


async def snapshot(db: Database) -> tuple[Any, ...]:
    """What a refused request must not change."""
    return (await db.queue.find({}, {"_id": 1, "state": 1, "version": 1}).sort("_id", 1).to_list(),
            await db.journal.find({}, {"_id": 1, "state": 1, "version": 1}).sort("_id", 1).to_list(),
            await db.audit.count_documents({}), await db.token.count_documents({}))


def test_every_route_gets_bad_input_at_least_once():
    assert {pattern for pattern, _ in ROUTES} == {c.pattern for c in CASES}


@pytest.mark.parametrize("bad", CASES, ids=[c.id for c in CASES])
async def test_bad_input_is_a_4xx_naming_the_problem_and_changes_nothing(db, deck, bad):
    before = await snapshot(db)
    reply = await deck["http"].request(bad.method, bad.path.format(pending=deck["pending"], killed=deck["killed"]),
                                       **bad.kwargs)
    assert_error(reply, bad.status, bad.message)
    assert await snapshot(db) == before


async def test_kill_and_remove_of_a_finished_job_name_its_final_state(deck):
    for action in ("kill", "remove"):
        reply = await deck["http"].put(f"/job/{action}/{deck['killed']}")
        body = assert_error(reply, 409, f"cannot {action} job {deck['killed']}: it has finished as killed")
        assert body["details"] == {"state": "killed"}


async def test_oversized_enqueue_body_is_413(db, deck, config):
    body = json.dumps({"qual_name": DUMMY, "follow": False, "args": {"message": "x" * config.max_body_size}})
    reply = await deck["http"].post("/job", content=body, headers={"Content-Type": "application/json"})
    assert_error(reply, 413, f"exceeds the limit of {config.max_body_size} bytes")
    assert await db.queue.count_documents({}) == 1


async def test_filters_as_json_text_in_the_query_string_work(deck):
    http = deck["http"]
    queued = await http.get("/job", params={"filter": json.dumps({"state": {"$in": ["pending"]}})})
    assert [job["_id"] for job in queued.json()["data"]] == [deck["pending"]]
    journal = await http.get("/job/journal", params={"filter": json.dumps({"args.sleep": {"$gte": 2}})})
    assert [job["_id"] for job in journal.json()["data"]] == [deck["killed"]]
    nothing = await http.get("/job/journal", params={"filter": json.dumps({"args.sleep": {"$lt": 2}})})
    assert nothing.json()["total_count"] == 0
    listed = await http.get("/job/list", params={"filter": json.dumps({"qual_name": "jobs.example.FailJob"})})
    assert [entry["qual_name"] for entry in listed.json()["data"]] == ["jobs.example.FailJob"]


@pytest.fixture
async def unique_job(db: Database, job_classes, tmp_path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The qual_name of a registered ``unique`` job class from a temporary job package."""
    package = make_package(tmp_path, monkeypatch, {"once": '''
        from jobs import Job


        class OnlyOnce(Job):
            """At most one live job per argument set."""

            unique = True

            def execute(self, key: str = "a") -> None:
                return None
    '''})
    await registry.sync(db, registry.discover([package]))
    yield f"{package}.once.OnlyOnce"
    forget_package(package)


async def test_enqueue_of_a_unique_job_twice_is_409_with_the_live_jobs_id(db, deck, unique_job):
    http = deck["http"]
    first = await http.post("/job", json={"qual_name": unique_job, "args": {"key": "k"}, "follow": False})
    assert first.status_code == 200, first.text
    job_id = first.json()["data"]
    again = await http.post("/job/enqueue", json={"qual_name": unique_job, "args": {"key": "k"}, "follow": False})
    body = assert_error(again, 409, f"{unique_job} is unique and a live job with the same arguments exists: {job_id}")
    assert body["details"] == {"job_id": job_id}
    other = await http.post("/job", json={"qual_name": unique_job, "args": {"key": "other"}, "follow": False})
    assert other.status_code == 200
    assert await db.queue.count_documents({"qual_name": unique_job}) == 2
