"""The audit trail over HTTP: ``GET /audit``, for admins only, filtered and paginated like the journal."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
from bson import ObjectId

from core import audit
from core.db import Database
from core.errors import Forbidden

DUMMY = "jobs.example.DummyJob"
FIELDS = {"_id", "at", "action", "actor", "target", "detail"}


def data(reply: httpx.Response) -> Any:
    assert reply.status_code == 200, reply.text
    return reply.json()["data"]


async def entries(http: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    return data(await http.get("/audit", params={"per_page": 1000, **params}))


async def seed(db: Database, count: int, *, start: datetime, step: timedelta, **fields: Any) -> list[ObjectId]:
    """``count`` entries at ``start``, ``start - step``...; their ids, newest first."""
    made = [{"_id": ObjectId(), "at": start - index * step, "action": "job.kill", "actor": "seeder",
             "target": f"t{index}", "detail": {"n": index}, **fields} for index in range(count)]
    await db.audit.insert_many(made)
    return [entry["_id"] for entry in made]


async def test_an_admin_reads_what_an_enqueue_a_kill_a_user_change_and_a_failed_login_wrote(
        db, job_classes, server, team_clients):
    executor, admin = team_clients["executor"], team_clients["admin"]
    job_id = data(await executor.post("/job", json={"qual_name": DUMMY, "follow": False}))
    data(await executor.put(f"/job/kill/{job_id}"))
    data(await admin.post("/user", json={"name": "alice", "password": "alice-pw"}))
    async with httpx.AsyncClient(base_url=server.url, auth=("mallory", "guess")) as stranger:
        assert (await stranger.get("/whoami")).status_code == 401

    reply = await admin.get("/audit")
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert {"total_count", "count", "page", "page_count", "per_page", "total_exact", "next", "prev"} <= set(body)
    shown = [(e["action"], e["actor"], e["target"]) for e in body["data"]]
    assert shown[:4] == [("login.failed", "mallory", "mallory"), ("user.add", "admin", "alice"),
                         ("job.kill", "executor", job_id), ("job.enqueue", "executor", job_id)]
    assert all(set(entry) == FIELDS for entry in body["data"])
    times = [entry["at"] for entry in body["data"]]
    assert times == sorted(times, reverse=True)
    failed = body["data"][0]
    assert failed["detail"]["address"] == "127.0.0.1" and "expires" not in failed
    assert body["data"][3]["detail"] == {"qual_name": DUMMY}


async def test_filters_by_user_action_target_and_time(db, team_clients):
    now = datetime.now(timezone.utc)
    await db.audit.delete_many({})  # the fixtures' entries (users added, tokens issued)
    await db.audit.insert_many([
        {"at": now - timedelta(hours=5), "action": "job.enqueue", "actor": "bob", "target": "j1", "detail": {}},
        {"at": now - timedelta(hours=3), "action": "job.kill", "actor": "bob", "target": "j1", "detail": {}},
        {"at": now - timedelta(hours=1), "action": "user.add", "actor": "carol", "target": "dave", "detail": {}},
        {"at": now - timedelta(minutes=5), "action": "jobx.odd", "actor": "carol", "target": "j1", "detail": {}},
        {"at": now - timedelta(days=3), "action": "login.failed", "actor": "x" * 100, "target": "x" * 100,
         "detail": {"actor_length": 150}},
    ])
    http = team_clients["admin"]

    async def actions(**params: Any) -> list[str]:
        return [entry["action"] for entry in await entries(http, **params)]

    assert await actions(user="bob") == ["job.kill", "job.enqueue"]
    assert await actions(action="job.kill") == ["job.kill"]
    assert await actions(action="job.*") == ["job.kill", "job.enqueue"]  # not jobx.odd
    assert await actions(action="job.") == ["job.kill", "job.enqueue"]
    assert await actions(target="j1") == ["jobx.odd", "job.kill", "job.enqueue"]
    assert await actions(target="j1", user="carol") == ["jobx.odd"]
    assert await actions(since="2h") == ["jobx.odd", "user.add"]
    assert await actions(since="4h", until="2h") == ["job.kill"]
    assert await actions(until="1d") == ["login.failed"]
    iso = (now - timedelta(hours=2)).isoformat()
    assert await actions(since=iso) == ["jobx.odd", "user.add"]
    naive = (now - timedelta(hours=2)).replace(tzinfo=None).isoformat()  # no zone: UTC
    assert await actions(since=naive) == ["jobx.odd", "user.add"]
    zoned = (now - timedelta(hours=2)).astimezone(timezone(timedelta(hours=5))).isoformat()
    assert await actions(until=zoned, action="job.*") == ["job.kill", "job.enqueue"]
    # A stranger's long name is kept cut to 100 characters: found by those.
    assert await actions(user="x" * 100) == ["login.failed"]
    assert await actions(user="nobody") == []
    # Blank filters are no filters (a script's empty variable).
    assert len(await actions(user="", action="", target="", since="", until="")) == 5


async def test_pages_by_cursor_and_by_number_hold_every_entry_once_newest_first(db, team_clients):
    now = datetime.now(timezone.utc).replace(microsecond=0)
    ids = await seed(db, 23, start=now - timedelta(minutes=1), step=timedelta(seconds=7))
    # Ties on ``at``: the _id decides, descending.
    tied = sorted(await seed(db, 4, start=now - timedelta(seconds=30), step=timedelta(0)), reverse=True)
    await db.audit.delete_many({"actor": {"$ne": "seeder"}})
    everything = [entry["_id"] for entry in await db.audit.find().sort([("at", -1), ("_id", -1)]).to_list()]
    assert len(everything) == 27 and set(everything) == {*ids, *tied}
    expected = [str(i) for i in everything]
    http = team_clients["admin"]

    seen: list[str] = []
    pages: list[dict[str, Any]] = []
    params: dict[str, Any] = {"per_page": 5}
    while True:
        page = (await http.get("/audit", params=params)).json()
        pages.append(page)
        seen += [entry["_id"] for entry in page["data"]]
        if not page["next"]:
            break
        params = {"per_page": 5, "after": page["next"]}
    assert seen == expected
    assert len(pages) == 6 and pages[0]["total_count"] == 27 and pages[0]["prev"] is None

    back: list[str] = []
    params = {"per_page": 5, "before": pages[-1]["prev"]}
    while True:
        page = (await http.get("/audit", params=params)).json()
        back = [entry["_id"] for entry in page["data"]] + back
        if not page["prev"]:
            break
        params = {"per_page": 5, "before": page["prev"]}
    assert back == expected[:25]

    numbered = [entry["_id"] for number in range(6)
                for entry in data(await http.get("/audit", params={"per_page": 5, "page": number}))]
    assert numbered == expected
    last = (await http.get("/audit", params={"per_page": 5, "page": -1})).json()
    assert [entry["_id"] for entry in last["data"]] == expected[25:] and last["page"] == 5

    # Filtered pages too: the tied entries and a few older, two a page.
    since = now - timedelta(seconds=100)
    wanted = [str(entry["_id"]) for entry in await db.audit.find({"at": {"$gte": since}}).sort(
        [("at", -1), ("_id", -1)]).to_list()]
    assert len(wanted) > 4
    filtered, params = [], {"per_page": 2, "user": "seeder", "since": since.isoformat()}
    while True:
        page = (await http.get("/audit", params=params)).json()
        filtered += [entry["_id"] for entry in page["data"]]
        if not page["next"]:
            break
        params = {**params, "after": page["next"]}
    assert filtered == wanted


async def test_a_cursor_of_another_listing_is_refused(db, team_clients):
    await seed(db, 3, start=datetime.now(timezone.utc), step=timedelta(seconds=1))
    http = team_clients["admin"]
    journal = (await http.get("/job/journal", params={"per_page": 1})).json()
    audit_page = (await http.get("/audit", params={"per_page": 1})).json()
    assert audit_page["next"]
    refused = await http.get("/audit", params={"after": audit_page["next"] + "x"})
    assert refused.status_code == 400 and "not a cursor of this listing" in refused.json()["error"]
    if journal["next"]:
        assert (await http.get("/audit", params={"after": journal["next"]})).status_code == 400


@pytest.mark.parametrize("name", ["executor", "reader", "stranger"])
async def test_everyone_but_admins_gets_403(team_clients, name):
    reply = await team_clients[name].get("/audit")
    assert reply.status_code == 403
    assert reply.json()["error"] == f"user {name!r} is not an admin"


async def test_anonymous_callers_get_401(team_clients):
    assert (await team_clients[None].get("/audit")).status_code == 401


async def test_a_read_only_admin_may_read_and_others_may_not(db, team):
    await seed(db, 2, start=datetime.now(timezone.utc), step=timedelta(seconds=1))
    read_only = {**team["admin"], "read_only": True}
    page = await audit.listing(db, by=read_only, user="seeder")
    assert page.count == 2
    with pytest.raises(Forbidden):
        await audit.listing(db, by=team["reader"])
    with pytest.raises(Forbidden):
        await audit.listing(db, by={**team["admin"], "active": False})
    assert (await audit.listing(db, by=None, user="seeder")).count == 2  # an operator's command
