"""The schedule API: ``/schedule`` and ``/schedule/<id>[/pause|/resume]``, with permissions and audit."""
from __future__ import annotations

from datetime import datetime, timezone

from core import registry, schedules
from tests.conftest import forget_package, make_package

DUMMY = "jobs.example.DummyJob"


async def test_an_executor_adds_changes_pauses_resumes_and_removes_a_schedule(db, job_classes, team_clients):
    http = team_clients["executor"]
    added = await http.post("/schedule", json={"qual_name": DUMMY, "cron": "*/5 * * * *", "args": {"sleep": 1},
                                               "tz": "Europe/Berlin", "priority": 2, "overlap": "queue"})
    assert added.status_code == 200, added.text
    made = added.json()["data"]
    assert (made["source"], made["cron"], made["tz"], made["args"], made["options"], made["overlap"],
            made["catch_up"], made["enabled"], made["acts_as"]) == (
        "api", "*/5 * * * *", "Europe/Berlin", {"sleep": 1}, {"priority": 2}, "queue", "latest", True, "executor")
    assert made["next_run"] > datetime.now(timezone.utc).isoformat()[:19] and made["last_tick"] is None
    schedule_id = made["_id"]

    listed = (await http.get("/schedule")).json()
    assert [s["_id"] for s in listed["data"]] == [schedule_id] and listed["total_count"] == 1
    changed = await http.put(f"/schedule/{schedule_id}", json={"cron": "0 3 * * *", "priority": None})
    assert changed.status_code == 200, changed.text
    assert changed.json()["data"]["cron"] == "0 3 * * *" and changed.json()["data"]["options"] == {}
    paused = (await http.put(f"/schedule/{schedule_id}/pause")).json()["data"]
    assert not paused["enabled"] and paused["next_run"] is None
    resumed = (await http.put(f"/schedule/{schedule_id}/resume")).json()["data"]
    assert resumed["enabled"] and resumed["next_run"]
    assert (await http.get(f"/schedule/{schedule_id}")).json()["data"]["version"] == 4
    assert (await http.delete(f"/schedule/{schedule_id}")).status_code == 200
    assert (await http.get(f"/schedule/{schedule_id}")).status_code == 404
    actions = [entry["action"] for entry in await db.audit.find({"target": schedule_id}).sort("at", 1).to_list()]
    assert actions == ["schedule.add", "schedule.update", "schedule.pause", "schedule.resume", "schedule.remove"]


async def test_readers_read_strangers_see_nothing_and_neither_may_change(db, job_classes, team_clients):
    made = (await team_clients["executor"].post("/schedule", json={"qual_name": DUMMY, "cron": "0 * * * *"})
            ).json()["data"]
    reader, stranger = team_clients["reader"], team_clients["stranger"]
    assert (await reader.get(f"/schedule/{made['_id']}")).status_code == 200
    assert [s["_id"] for s in (await reader.get("/schedule")).json()["data"]] == [made["_id"]]
    refused = await reader.post("/schedule", json={"qual_name": DUMMY, "cron": "0 * * * *"})
    assert refused.status_code == 403 and "may not execute" in refused.json()["error"]
    for method, path in (("PUT", ""), ("PUT", "/pause"), ("PUT", "/resume"), ("DELETE", "")):
        reply = await reader.request(method, f"/schedule/{made['_id']}{path}", json={"cron": "* * * * *"})
        assert reply.status_code == 403, (method, path, reply.text)
        # A stranger (no right on the class) is told it does not exist, like a missing one.
        reply = await stranger.request(method, f"/schedule/{made['_id']}{path}", json={"cron": "* * * * *"})
        assert reply.status_code == 404, (method, path, reply.text)
    assert (await stranger.get(f"/schedule/{made['_id']}")).status_code == 404
    assert (await stranger.get("/schedule")).json()["data"] == []
    assert (await team_clients[None].get("/schedule")).status_code == 401
    assert (await db.schedules.find_one({"_id": made["_id"]}))["cron"] == "0 * * * *"


async def test_bad_input_is_a_400_naming_the_problem(job_classes, team_clients):
    http = team_clients["admin"]
    cases = [({"qual_name": DUMMY, "cron": "every day"}, "bad cron"),
             ({"qual_name": DUMMY, "cron": "* * * * *", "tz": "Nowhere/Land"}, "unknown time zone"),
             ({"qual_name": DUMMY, "cron": "0 0 31 2 *"}, "never fires"),
             ({"qual_name": DUMMY, "cron": "* * * * *", "catch_up": "sometimes"}, "catch_up must be one of"),
             ({"qual_name": DUMMY, "cron": "* * * * *", "args": {"nope": 1}}, "unknown 'nope'"),
             ({"qual_name": DUMMY, "cron": "* * * * *", "attempts": 0}, "option 'attempts' must be between"),
             ({"qual_name": DUMMY}, "argument 'cron' is required")]
    for body, message in cases:
        reply = await http.post("/schedule", json=body)
        assert reply.status_code == 400 and message in reply.json()["error"], (body, reply.text)
    unknown = await http.post("/schedule", json={"qual_name": "jobs.nope.Job", "cron": "* * * * *"})
    assert unknown.status_code == 404 and "unknown job" in unknown.json()["error"]
    assert (await http.get("/schedule/0123456789abcdef01234567")).status_code == 404
    assert (await http.put("/schedule/0123456789abcdef01234567/pause")).status_code == 404


async def test_a_class_schedule_is_listed_with_source_class_and_can_be_paused_not_edited(
        db, job_classes, team_clients, tmp_path, monkeypatch):
    package = make_package(tmp_path, monkeypatch, {"hourly": '''
from jobs import Job

class Hourly(Job):
    """Every hour."""
    schedule = "0 * * * *"

    def execute(self) -> None:
        pass
'''})
    try:
        await registry.sync(db, registry.discover([package]))
        await schedules.sync_classes(db)
        http = team_clients["admin"]
        listed = (await http.get("/schedule", params={"search": "Hourly"})).json()["data"]
        assert [(s["_id"], s["source"], s["cron"]) for s in listed] == [
            (f"class:{package}.hourly.Hourly", "class", "0 * * * *")]
        path = f"/schedule/class:{package}.hourly.Hourly"
        edited = await http.put(path, json={"cron": "* * * * *"})
        assert edited.status_code == 409 and "comes from the schedule attribute" in edited.json()["error"]
        assert (await http.delete(path)).status_code == 409
        assert (await http.put(path + "/pause")).json()["data"]["enabled"] is False
        assert (await http.get(path)).json()["data"]["enabled"] is False
    finally:
        forget_package(package)
