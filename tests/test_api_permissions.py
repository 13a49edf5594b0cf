"""The permission matrix of the HTTP API: every route, for an admin, an executor, a reader and a stranger.

- admin: the ``admin`` role;
- executor: ``job:jobs.example.*:x`` (read and execute the example jobs);
- reader: ``job:jobs.example.*:r`` (read them only);
- stranger: ``job:other.*:x`` (nothing of the example jobs).

Jobs are made through ``core.queue`` as an operator (no worker runs: pending
jobs stay pending, killing them gives finished ones).
"""
from __future__ import annotations

from datetime import datetime, timezone

from typing import Any

import httpx
import pytest

from core import queue
from core.db import Database
from handlers.app import ROUTES
from tests.conftest import TEAM

DUMMY = "jobs.example.DummyJob"
OPERATOR = queue.operator("operator")
USERS = tuple(TEAM)
# A job the caller may not read is answered exactly like a missing one (ids are guessable).
READ = {"admin": 200, "executor": 200, "reader": 200, "stranger": 404}
EXECUTE = {"admin": 200, "executor": 200, "reader": 403, "stranger": 404}
EVERYONE = dict.fromkeys(USERS, 200)
ADMIN_ONLY = {"admin": 200, "executor": 403, "reader": 403, "stranger": 403}


@pytest.fixture
async def team_db(db: Database, job_classes, team) -> Database:
    """The test database with the example jobs registered and the ``TEAM`` users."""
    return db


@pytest.fixture
def clients(team_clients, team_db) -> dict[str | None, httpx.AsyncClient]:
    return team_clients


async def pending(db: Database) -> str:
    job = await queue.enqueue(db, DUMMY, {"sleep": 1}, user=OPERATOR)
    return str(job["_id"])


async def killed(db: Database) -> str:
    job_id = await pending(db)
    await queue.kill(db, job_id, user=OPERATOR)
    return job_id


async def statuses(clients: dict, method: str, path: str, **kwargs: Any) -> dict[str, int]:
    """The status each user gets for the same request."""
    return {name: (await clients[name].request(method, path, **kwargs)).status_code for name in USERS}


def error(reply: httpx.Response) -> str:
    body = reply.json()
    assert body["code"] == reply.status_code
    return body["error"]


# -------------------------------------------------------------- one job's read routes

JOB_READ_ROUTES = [
    ("/job/{id}", {}),
    ("/job/detail/{id}", {}),
    ("/job/follow/{id}", {}),
    ("/job/log/{id}", {}),
    ("/job/log/{id}", {"follow": "true"}),
    ("/job/poll/{id}", {"timeout": "1"}),
]


@pytest.mark.parametrize("path, params", JOB_READ_ROUTES,
                         ids=[path + ("?" + "&".join(params) if params else "") for path, params in JOB_READ_ROUTES])
async def test_a_jobs_read_routes_answer_readers_and_hide_the_job_from_the_stranger(clients, team_db, path,
                                                                                    params):
    job_id = await killed(team_db)  # finished: follow streams end, poll answers at once
    url = path.format(id=job_id)
    assert await statuses(clients, "GET", url, params=params) == READ
    refused = await clients["stranger"].get(url, params=params)
    missing = await clients["stranger"].get(path.format(id=JOB), params=params)
    assert error(refused) == f"no job {job_id}" and error(missing) == f"no job {JOB}"


async def test_readers_get_the_finished_jobs_events_and_log(clients, team_db):
    job_id = await killed(team_db)
    for name in ("admin", "executor", "reader"):
        stream = await clients[name].get(f"/job/follow/{job_id}")
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        assert "event: state" in stream.text and stream.text.rstrip().splitlines()[-2] == "event: close"
        page = (await clients[name].get(f"/job/log/{job_id}")).json()
        assert page["total_count"] == 0 and page["data"] == []
        detail = (await clients[name].get(f"/job/{job_id}")).json()["data"]
        assert detail["_id"] == job_id and detail["state"] == "killed" and detail["journal"] is True


# -------------------------------------------------------------- control routes

@pytest.mark.parametrize("method, path", [("PUT", "/job/kill/{id}"), ("PUT", "/job/remove/{id}"),
                                          ("DELETE", "/job/{id}")])
async def test_stopping_a_job_needs_execute_permission(clients, team_db, method, path):
    for name, expected in EXECUTE.items():
        job_id = await pending(team_db)
        reply = await clients[name].request(method, path.format(id=job_id))
        assert reply.status_code == expected, (name, reply.text)
        job = await queue.get(team_db, job_id, user=OPERATOR)
        if expected == 200:
            assert reply.json()["data"]["state"] == job["state"] == "killed"
        else:
            assert error(reply) == (f"no job {job_id}" if expected == 404
                                    else f"user {name!r} may not execute {DUMMY}")
            assert job["state"] == "pending"


async def test_restarting_a_killed_job_needs_execute_permission(clients, team_db):
    for name, expected in EXECUTE.items():
        job_id = await killed(team_db)
        reply = await clients[name].put(f"/job/restart/{job_id}", params={"follow": "false"})
        assert reply.status_code == expected, (name, reply.text)
        old = await queue.get(team_db, job_id, user=OPERATOR)
        if expected == 200:
            child = await queue.get(team_db, reply.json()["data"], user=OPERATOR)
            assert child["state"] == "pending" and child["enqueued"]["parent_id"] == old["_id"]
            assert child["enqueued"]["username"] == name
        else:
            assert error(reply) == (f"no job {job_id}" if expected == 404
                                    else f"user {name!r} may not execute {DUMMY}")
            assert old["enqueued"]["child_id"] is None


@pytest.mark.parametrize("path", ["/job", "/job/enqueue"])
async def test_enqueue_needs_execute_permission(clients, team_db, path):
    for name, expected in {**EXECUTE, "stranger": 403}.items():
        reply = await clients[name].post(path, json={"qual_name": DUMMY, "args": {"sleep": 1}, "follow": False})
        assert reply.status_code == expected, (name, reply.text)
        if expected == 200:
            job = await queue.get(team_db, reply.json()["data"], user=OPERATOR)
            assert job["enqueued"]["username"] == name and job["state"] == "pending"
        else:
            assert error(reply) == f"user {name!r} may not execute {DUMMY}"
    assert await team_db.queue.count_documents({}) == 2  # admin's and executor's


async def test_refused_control_actions_change_nothing_and_leave_no_audit_entry(clients, team_db):
    live, finished = await pending(team_db), await killed(team_db)
    before = await team_db.queue.find_one({"_id": queue.object_id(live)})
    for name in ("reader", "stranger"):
        http = clients[name]
        replies = [await http.put(f"/job/kill/{live}"), await http.put(f"/job/remove/{live}"),
                   await http.delete(f"/job/{live}"),
                   await http.put(f"/job/restart/{finished}", params={"follow": "false"}),
                   await http.post("/job", json={"qual_name": DUMMY, "follow": False})]
        hidden = 404 if name == "stranger" else 403
        assert [reply.status_code for reply in replies] == [hidden] * 4 + [403]
    assert await team_db.queue.find_one({"_id": queue.object_id(live)}) == before
    assert await team_db.queue.count_documents({}) == 1
    assert await team_db.audit.count_documents({"actor": {"$in": ["reader", "stranger"]},
                                                 "action": {"$ne": "login"}}) == 0


async def test_every_control_action_is_audited_with_the_acting_user(clients, team_db):
    http = clients["executor"]
    enqueued = (await http.post("/job", json={"qual_name": DUMMY, "follow": False})).json()["data"]
    via_enqueue = (await http.post("/job/enqueue", json={"qual_name": DUMMY, "follow": False})).json()["data"]
    assert (await http.put(f"/job/kill/{enqueued}")).status_code == 200
    restarted = (await http.put(f"/job/restart/{enqueued}", params={"follow": "false"})).json()["data"]
    assert (await http.put(f"/job/remove/{restarted}")).status_code == 200
    assert (await http.delete(f"/job/{via_enqueue}")).status_code == 200

    entries = await team_db.audit.find({"action": {"$regex": "^job\\."}}, {"_id": 0}).sort("at", 1).to_list()
    assert [(e["action"], e["actor"], e["target"]) for e in entries] == [
        ("job.enqueue", "executor", enqueued),
        ("job.enqueue", "executor", via_enqueue),
        ("job.kill", "executor", enqueued),
        ("job.enqueue", "executor", restarted),
        ("job.restart", "executor", enqueued),
        ("job.remove", "executor", restarted),
        ("job.remove", "executor", via_enqueue),
    ]
    assert entries[4]["detail"]["new_id"] == restarted
    assert all(e["detail"]["qual_name"] == DUMMY for e in entries if e["action"] != "job.restart")


# -------------------------------------------------------------- listings

async def test_registry_lists_the_example_jobs_only_to_those_who_may_enqueue_them(clients, team_db, job_classes):
    examples = sorted(name for name in job_classes if name.startswith("jobs.example."))
    for name in USERS:
        reply = await clients[name].get("/job/list", params={"per_page": 1000})
        assert reply.status_code == 200, (name, reply.text)
        body = reply.json()
        listed = [entry["qual_name"] for entry in body["data"]]
        if name in ("admin", "executor"):
            assert [q for q in listed if q.startswith("jobs.example.")] == examples
            assert body["total_count"] == len(listed)
        else:
            assert listed == [] and body["total_count"] == 0, name
    executor = (await clients["executor"].get("/job/list", params={"per_page": 1000})).json()
    assert all(entry["qual_name"].startswith("jobs.example.") for entry in executor["data"])


@pytest.mark.parametrize("method, path", [("GET", "/job"), ("GET", "/job/queue"), ("POST", "/job/queue")])
async def test_queue_listings_show_the_stranger_nothing(clients, team_db, method, path):
    live = await pending(team_db)
    await killed(team_db)
    for name in USERS:
        reply = await clients[name].request(method, path)
        assert reply.status_code == 200, (name, reply.text)
        body = reply.json()
        if name == "stranger":
            assert body["data"] == [] and body["total_count"] == 0 and body["count"] == 0
        else:
            assert [job["_id"] for job in body["data"]] == [live] and body["total_count"] == 1, name


async def test_journal_shows_the_stranger_nothing(clients, team_db):
    await pending(team_db)
    finished = await killed(team_db)
    for name in USERS:
        reply = await clients[name].get("/job/journal")
        assert reply.status_code == 200, (name, reply.text)
        body = reply.json()
        if name == "stranger":
            assert body["data"] == [] and body["total_count"] == 0
        else:
            assert [job["_id"] for job in body["data"]] == [finished] and body["total_count"] == 1, name


async def test_stats_count_only_the_jobs_the_caller_may_read(clients, team_db):
    await pending(team_db)
    await killed(team_db)
    for name in USERS:
        reply = await clients[name].get("/job/stats")
        assert reply.status_code == 200, (name, reply.text)
        stats = reply.json()["data"]
        if name == "stranger":
            assert set(stats["queue"].values()) == {0} and set(stats["journal"].values()) == {0}
            assert stats["oldest_pending_seconds"] is None
        else:
            assert stats["queue"]["pending"] == 1 and sum(stats["queue"].values()) == 1, name
            assert stats["journal"]["killed"] == 1 and sum(stats["journal"].values()) == 1, name
            assert stats["oldest_pending_seconds"] >= 0


# -------------------------------------------------------------- service routes

async def test_whoami_answers_everyone_with_their_own_identity(clients):
    for name in USERS:
        reply = await clients[name].get("/whoami")
        assert reply.status_code == 200, (name, reply.text)
        me = reply.json()["data"]
        assert me["name"] == name and me["admin"] == (name == "admin")
        assert me["perms"] == TEAM[name][2]


@pytest.mark.parametrize("path", ["/worker", "/openapi.json"])
async def test_worker_list_and_openapi_answer_every_user(clients, path):
    assert await statuses(clients, "GET", path) == EVERYONE


async def test_worker_list_shows_only_the_running_jobs_and_classes_the_caller_may_read(clients, team_db):
    job_id = await pending(team_db)
    await team_db.worker.insert_one({"_id": "host:1:abcd", "host": "host", "pid": 1, "slots": 2,
                                     "heartbeat": datetime.now(timezone.utc), "running": [job_id],
                                     "jobs": [DUMMY, "other.Secret"]})
    seen = {name: (await clients[name].get("/worker")).json()["data"][0] for name in USERS}
    assert {name: worker["running"] for name, worker in seen.items()} == {
        "admin": [job_id], "executor": [job_id], "reader": [job_id], "stranger": []}
    assert {name: worker["jobs"] for name, worker in seen.items()} == {
        "admin": [DUMMY, "other.Secret"], "executor": [DUMMY], "reader": [DUMMY], "stranger": ["other.Secret"]}


async def test_worker_host_and_pid_are_shown_to_admins_only(clients, team_db):
    await team_db.worker.insert_one({"_id": "w1", "host": "gpu-7", "pid": 4242, "slots": 2,
                                     "heartbeat": datetime.now(timezone.utc), "running": [], "jobs": []})
    for name in USERS:
        worker = (await clients[name].get("/worker")).json()["data"][0]
        shown = ("host" in worker, "pid" in worker)
        assert shown == ((True, True) if name == "admin" else (False, False)), name


async def test_metrics_are_for_admins_only(clients, team_db):
    await pending(team_db)
    assert await statuses(clients, "GET", "/metrics") == ADMIN_ONLY
    reply = await clients["admin"].get("/metrics")
    assert reply.headers["Content-Type"].startswith("text/plain")
    assert 'jobdeck_jobs{collection="queue",state="pending"} 1.0' in reply.text
    refused = await clients["reader"].get("/metrics")
    assert error(refused) == "user 'reader' is not an admin"


async def test_the_audit_trail_is_for_admins_only(clients, team_db):
    await killed(team_db)
    assert await statuses(clients, "GET", "/audit") == ADMIN_ONLY
    assert [entry["action"] for entry in (await clients["admin"].get("/audit")).json()["data"][:2]] == [
        "job.kill", "job.enqueue"]
    assert error(await clients["executor"].get("/audit")) == "user 'executor' is not an admin"


# -------------------------------------------------------------- anonymous callers

JOB = "5f6252b42e84fa29038a3e3f"
ANONYMOUS = {  # a request per route pattern; each must be refused before it is looked at
    r"/whoami": ("GET", "/whoami"),
    r"/metrics": ("GET", "/metrics"),
    r"/openapi.json": ("GET", "/openapi.json"),
    r"/worker": ("GET", "/worker"),
    r"/job": ("POST", "/job"),
    r"/job/list": ("GET", "/job/list"),
    r"/job/enqueue": ("POST", "/job/enqueue"),
    r"/job/batch": ("POST", "/job/batch"),
    r"/job/queue": ("POST", "/job/queue"),
    r"/job/journal": ("GET", "/job/journal"),
    r"/job/stats": ("GET", "/job/stats"),
    r"/job/detail/([^/]+)": ("GET", f"/job/detail/{JOB}"),
    r"/job/follow/([^/]+)": ("GET", f"/job/follow/{JOB}"),
    r"/job/log/([^/]+)": ("GET", f"/job/log/{JOB}"),
    r"/job/poll/([^/]+)": ("GET", f"/job/poll/{JOB}"),
    r"/job/kill/([^/]+)": ("PUT", f"/job/kill/{JOB}"),
    r"/job/remove/([^/]+)": ("PUT", f"/job/remove/{JOB}"),
    r"/job/restart/([^/]+)": ("PUT", f"/job/restart/{JOB}"),
    r"/job/([^/]+)/([^/]+)": ("PUT", f"/job/explode/{JOB}"),
    r"/job/([^/]+)": ("DELETE", f"/job/{JOB}"),
    r"": ("GET", ""),
    r"/job/pause": ("PUT", "/job/pause"),
    r"/job/resume": ("PUT", "/job/resume"),
    r"/job/events": ("GET", "/job/events"),
    r"/schedule": ("POST", "/schedule"),
    r"/schedule/([^/]+)": ("DELETE", "/schedule/any"),
    r"/schedule/([^/]+)/pause": ("PUT", "/schedule/any/pause"),
    r"/schedule/([^/]+)/resume": ("PUT", "/schedule/any/resume"),
    r"/user": ("POST", "/user"),
    r"/user/([^/]+)": ("DELETE", "/user/admin"),
    r"/audit": ("GET", "/audit"),
    r"/token": ("POST", "/token"),
    r"/token/([^/]+)": ("DELETE", "/token/any"),
    r"/session": ("GET", "/session"),
    r"/session/([^/]+)": ("DELETE", "/session/any"),
}
PUBLIC = {r"/health", r"/login", r"/logout"}


def test_the_anonymous_table_covers_every_protected_route():
    assert set(ANONYMOUS) == {pattern for pattern, _ in ROUTES} - PUBLIC


@pytest.mark.parametrize("method, path", list(ANONYMOUS.values()), ids=list(ANONYMOUS))
async def test_anonymous_callers_get_401_with_a_basic_challenge(server, db, job_classes, method, path):
    async with httpx.AsyncClient(base_url=server.url) as http:
        reply = await http.request(method, path, json={"qual_name": DUMMY, "follow": False})
    assert reply.status_code == 401, reply.text
    assert reply.headers["WWW-Authenticate"].startswith("Basic ")
    assert error(reply).startswith("authentication required")
    assert await db.queue.count_documents({}) == 0


async def test_anonymous_callers_get_the_health_but_not_a_login(server):
    async with httpx.AsyncClient(base_url=server.url) as http:
        assert (await http.get("/health")).status_code == 200
        login = await http.post("/login")
    assert login.status_code == 400 and "username" in error(login)


async def test_basic_auth_callers_get_the_same_answers_as_token_callers(server, team_db):
    job_id = await pending(team_db)
    async with httpx.AsyncClient(base_url=server.url, auth=("reader", TEAM["reader"][0])) as http:
        assert (await http.get(f"/job/{job_id}")).status_code == 200
        refused = await http.put(f"/job/kill/{job_id}")
    assert refused.status_code == 403 and error(refused) == f"user 'reader' may not execute {DUMMY}"
