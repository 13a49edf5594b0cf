"""Schedules (``core.schedules``) and the scheduler (``core.scheduler``) against the embedded server.

Ticks are seconds apart (a sixth cron field is the second), and catch-up and
overlap are driven with an explicit ``now``: no test waits minutes.
"""
from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from core import registry, schedules, users
from core.db import Database
from core.errors import BadArgument, Conflict, Forbidden, NotFound
from core.scheduler import LEASE_ID, Scheduler, run_due
from tests.conftest import forget_package, make_package, wait_for
from tests.test_explain import recorded, scans  # noqa: F401  (recorded is a fixture)

DUMMY = "jobs.example.DummyJob"
OPERATOR = {"name": "cli:test", "roles": ["admin"], "perms": [], "active": True}
UTC = timezone.utc


def at_second(moment: datetime, step: int = 1, plus: float = 0.0) -> datetime:
    """``moment`` rounded down to a multiple of ``step`` seconds, plus ``plus`` seconds."""
    whole = moment.replace(microsecond=0)
    return whole - timedelta(seconds=whole.second % step) + timedelta(seconds=plus)


async def jobs_of(db: Database, schedule_id: str) -> list[dict[str, Any]]:
    """Every job of a schedule, live or finished."""
    query = {"schedule.id": schedule_id}
    return [*await db.queue.find(query).to_list(), *await db.journal.find(query).to_list()]


async def set_fields(db: Database, schedule_id: str, **fields: Any) -> dict[str, Any]:
    await db.schedules.update_one({"_id": schedule_id}, {"$set": fields})
    return await db.schedules.find_one({"_id": schedule_id})


# ---------------------------------------------------------------- checking

async def test_bad_cron_time_zone_class_choices_and_options_are_refused_with_clear_messages(db, job_classes, team):
    async def refused(kind: type[Exception], match: str, **fields: Any) -> None:
        with pytest.raises(kind, match=match):
            await schedules.add(db, user=fields.pop("user", OPERATOR), **{"qual_name": DUMMY, "cron": "* * * * *",
                                                                         **fields})

    await refused(BadArgument, "expected 5 fields", cron="* * *")
    await refused(BadArgument, "expected 5 fields", cron="* * * * * * 2030")
    await refused(BadArgument, "bad cron", cron="61 * * * *")
    await refused(BadArgument, "never fires", cron="0 0 31 2 *")
    await refused(BadArgument, "cron must be a cron expression", cron=5)
    await refused(BadArgument, "unknown time zone 'Mars/Olympus'", tz="Mars/Olympus")
    await refused(NotFound, "unknown job 'jobs.nope.Job'", qual_name="jobs.nope.Job")
    await refused(Forbidden, "may not execute", user=team["reader"])
    await refused(BadArgument, "catch_up must be one of latest, none, all", catch_up="some")
    await refused(BadArgument, "overlap must be one of skip, queue", overlap="wait")
    await refused(BadArgument, "option 'priority' must be an integer", priority="high")
    await refused(BadArgument, "unknown enqueue option 'speed'", speed=3)
    await refused(BadArgument, "'sleep' must be a number", args={"sleep": "long"})
    await refused(BadArgument, "enabled must be true or false", enabled="yes")
    assert await db.schedules.count_documents({}) == 0


async def test_a_schedule_is_added_read_changed_paused_resumed_and_removed_with_audit(db, job_classes, team):
    executor = team["executor"]
    made = await schedules.add(db, user=executor, qual_name=DUMMY, cron="* * * * * */5", args={"sleep": 0},
                               tz="Europe/Berlin", priority=3)
    assert made["source"] == "api" and made["enabled"] and made["options"] == {"priority": 3}
    assert made["next_run"] > datetime.now(UTC) - timedelta(seconds=1) and made["next_run"].second % 5 == 0
    assert (await schedules.get(db, made["_id"], user=team["reader"]))["cron"] == "* * * * * */5"
    with pytest.raises(NotFound):
        await schedules.get(db, made["_id"], user=team["stranger"])
    with pytest.raises(Forbidden):
        await schedules.pause(db, made["_id"], user=team["reader"])
    changed = await schedules.update(db, made["_id"], user=executor, cron="0 3 * * *", priority=None, overlap="queue")
    assert changed["cron"] == "0 3 * * *" and changed["options"] == {} and changed["overlap"] == "queue"
    assert changed["next_run"].astimezone(schedules.ZoneInfo("Europe/Berlin")).hour == 3
    with pytest.raises(BadArgument, match="qual_name cannot change"):
        await schedules.update(db, made["_id"], user=executor, qual_name="jobs.example.FailJob")
    paused = await schedules.pause(db, made["_id"], user=executor)
    assert not paused["enabled"] and paused["next_run"] is None
    resumed = await schedules.resume(db, made["_id"], user=executor)
    assert resumed["enabled"] and resumed["next_run"] is not None
    page = await schedules.list_page(db, user=team["reader"])
    assert [s["_id"] for s in page.items] == [made["_id"]]
    assert (await schedules.list_page(db, user=team["stranger"])).items == []
    await schedules.remove(db, made["_id"], user=executor)
    with pytest.raises(NotFound):
        await schedules.get(db, made["_id"], user=executor)
    actions = [entry["action"] for entry in await db.audit.find({"target": made["_id"]}).sort("at", 1).to_list()]
    assert actions == ["schedule.add", "schedule.update", "schedule.pause", "schedule.resume", "schedule.remove"]


def test_dst_gaps_fire_once_after_the_gap_and_repeats_fire_at_both_instants():
    # Europe/Berlin: 2026-03-29 02:00 -> 03:00 (gap); 2026-10-25 03:00 -> 02:00 (repeat).
    gap = schedules.next_tick("30 2 * * *", "Europe/Berlin", datetime(2026, 3, 28, 12, tzinfo=UTC))
    assert gap == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)  # 03:00 summer time
    first = schedules.next_tick("30 2 * * *", "Europe/Berlin", datetime(2026, 10, 24, 12, tzinfo=UTC))
    second = schedules.next_tick("30 2 * * *", "Europe/Berlin", first)
    assert (first, second) == (datetime(2026, 10, 25, 0, 30, tzinfo=UTC), datetime(2026, 10, 25, 1, 30, tzinfo=UTC))
    assert schedules.next_tick("30 2 * * *", "UTC", datetime(2026, 10, 24, 12, tzinfo=UTC)) == \
        datetime(2026, 10, 25, 2, 30, tzinfo=UTC)


def test_catch_up_plans_latest_none_and_all_bounded():
    now = datetime(2026, 1, 1, 12, 0, 3, tzinfo=UTC)
    base = {"cron": "* * * * * */5", "tz": "UTC", "enabled": True, "last_tick": now - timedelta(seconds=63)}
    latest = schedules.plan({**base, "catch_up": "latest"}, now, late_after=2)
    assert latest.ticks == [datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)] and len(latest.left_out) == 11
    none = schedules.plan({**base, "catch_up": "none"}, now, late_after=2)
    assert none.ticks == [] and len(none.left_out) == 12
    every = schedules.plan({**base, "catch_up": "all"}, now, late_after=2)
    assert len(every.ticks) == 12 and every.ticks == sorted(every.ticks) and not every.left_out
    # On time (at most late_after past): enqueued whatever catch_up says, and latest needs no other.
    on_time = schedules.plan({**base, "catch_up": "none"}, now, late_after=4)
    assert on_time.ticks == [datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)] and len(on_time.left_out) == 11
    bounded = schedules.plan({**base, "cron": "* * * * * *", "catch_up": "all",
                              "last_tick": now - timedelta(hours=1)}, now, late_after=2)
    # The 3 ticks on time (:01 to :03) and the latest 100 late ones; older ones are left out.
    assert len(bounded.ticks) == schedules.MAX_CATCH_UP + 3 and bounded.more
    assert bounded.ticks[-1] == now and bounded.ticks[0] == now - timedelta(seconds=102)
    assert "or more" in bounded.left_out_reason("all")


# ---------------------------------------------------------------- firing ticks (explicit now)

async def test_catch_up_after_downtime_latest_none_and_all(db, job_classes):
    now = at_second(datetime.now(UTC), 5, plus=3)
    made = {}
    for policy in schedules.CATCH_UPS:
        schedule = await schedules.add(db, user=OPERATOR, qual_name=DUMMY, cron="* * * * * */5", catch_up=policy,
                                       overlap="queue")
        # Made earlier, then down for a minute: its last tick was 63 s ago.
        await set_fields(db, schedule["_id"], start_after=now - timedelta(hours=1),
                         last_tick=now - timedelta(seconds=63), next_run=now - timedelta(seconds=58))
        made[policy] = schedule["_id"]
    await run_due(db, now, late_after=2)
    latest, none, every = [await jobs_of(db, made[p]) for p in ("latest", "none", "all")]
    assert [job["schedule"]["tick"] for job in latest] == [now - timedelta(seconds=3)]
    assert none == []
    assert len(every) == 12 and len({job["schedule"]["tick"] for job in every}) == 12
    for policy, schedule_id in made.items():
        schedule = await db.schedules.find_one({"_id": schedule_id})
        assert schedule["last_tick"] == now - timedelta(seconds=3), policy
        assert schedule["next_run"] == now + timedelta(seconds=2), policy
    assert "11 late tick(s)" in (await db.schedules.find_one({"_id": made["latest"]}))["last_skip"]["reason"]
    skipped = await db.schedules.find_one({"_id": made["none"]})
    assert "12 late tick(s)" in skipped["last_skip"]["reason"] and skipped["last_job_id"] is None
    # Running again enqueues nothing more: each tick once.
    await run_due(db, now, late_after=2)
    assert len(await jobs_of(db, made["all"])) == 12


async def test_overlap_skip_records_the_skip_and_queue_enqueues_anyway(db, job_classes):
    tick = at_second(datetime.now(UTC), plus=1)  # the first tick after the schedules are made
    skip = await schedules.add(db, user=OPERATOR, qual_name=DUMMY, cron="* * * * * *")
    queued = await schedules.add(db, user=OPERATOR, qual_name=DUMMY, cron="* * * * * *", overlap="queue")
    for second in range(3):
        moment = tick + timedelta(seconds=second + 0.5)
        for schedule in (skip, queued):
            await set_fields(db, schedule["_id"], next_run=moment)
        await run_due(db, moment, late_after=5)
    first, = await jobs_of(db, skip["_id"])  # no worker: it stays pending
    assert len(await jobs_of(db, queued["_id"])) == 3
    fresh = await db.schedules.find_one({"_id": skip["_id"]})
    assert fresh["last_job_id"] == first["_id"] and fresh["last_tick"] == tick + timedelta(seconds=2)
    assert fresh["last_skip"]["tick"] == fresh["last_tick"]
    assert f"previous job {first['_id']} is still pending" in fresh["last_skip"]["reason"]
    entries = await db.audit.find({"action": "schedule.skip", "target": skip["_id"]}).sort("at", 1).to_list()
    assert [entry["detail"]["tick"] for entry in entries] == [tick + timedelta(seconds=1), tick + timedelta(seconds=2)]


async def test_ticks_act_as_the_creator_and_are_skipped_once_the_creator_may_not(db, job_classes, team):
    now = at_second(datetime.now(UTC), plus=1.5)
    schedule = await schedules.add(db, user=team["executor"], qual_name=DUMMY, cron="* * * * * *", overlap="queue")
    await set_fields(db, schedule["_id"], next_run=now)
    await run_due(db, now, late_after=5)
    job, = await jobs_of(db, schedule["_id"])
    assert job["enqueued"]["username"] == "executor"
    await users.change_access(db, "executor", revoke=["job:jobs.example.*:x"], actor="test")
    await set_fields(db, schedule["_id"], next_run=now + timedelta(seconds=1))
    await run_due(db, now + timedelta(seconds=1), late_after=5)
    fresh = await db.schedules.find_one({"_id": schedule["_id"]})
    assert len(await jobs_of(db, schedule["_id"])) == 1
    assert "may not execute" in fresh["last_skip"]["reason"] and fresh["last_tick"] == now + timedelta(seconds=0.5)
    assert fresh["last_job_id"] == job["_id"]


# ---------------------------------------------------------------- class schedules

SCHEDULED = '''
from jobs import Job

class Nightly(Job):
    """Runs every night."""
    schedule = "0 2 * * *"
    schedule_tz = "Europe/Berlin"
    schedule_args = {"depth": 2}

    def execute(self, depth: int = 1) -> int:
        return depth

class Broken(Job):
    """A schedule that is not cron."""
    schedule = "every night"

    def execute(self) -> None:
        pass
'''


async def test_class_schedules_follow_the_registry_and_can_be_paused_but_not_edited(db, job_classes, tmp_path,
                                                                                  monkeypatch, team):
    package = make_package(tmp_path, monkeypatch, {"nightly": SCHEDULED})
    try:
        found = registry.discover([package])
        await registry.sync(db, found, provider=registry.Provider("w1", "worker", "host"))
        assert await schedules.sync_classes(db) == {"added": 2, "updated": 0, "removed": 0}
        nightly_id = f"class:{package}.nightly.Nightly"
        page = await schedules.list_page(db, user=team["admin"])
        shown = {s["_id"]: s for s in page.items}
        nightly = shown[nightly_id]
        assert (nightly["source"], nightly["cron"], nightly["tz"], nightly["args"]) == (
            "class", "0 2 * * *", "Europe/Berlin", {"depth": 2})
        assert nightly["next_run"].astimezone(schedules.ZoneInfo("Europe/Berlin")).hour == 2
        broken = shown[f"class:{package}.nightly.Broken"]
        assert "schedule is invalid" in broken["error"] and broken["next_run"] is None
        with pytest.raises(Conflict, match="comes from the schedule attribute"):
            await schedules.update(db, nightly_id, user=team["admin"], cron="* * * * *")
        with pytest.raises(Conflict, match="cannot be removed"):
            await schedules.remove(db, nightly_id, user=team["admin"])
        assert not (await schedules.pause(db, nightly_id, user=team["admin"]))["enabled"]
        assert await schedules.sync_classes(db) == {"added": 0, "updated": 0, "removed": 0}
        # The class changes: its schedule follows, still paused; the class drops its schedule: it goes.
        await db.registry.update_one({"_id": nightly_id[6:]}, {"$set": {"schedule": "0 4 * * *"}})
        await db.registry.update_one({"_id": broken["qual_name"]}, {"$set": {"schedule": None}})
        assert await schedules.sync_classes(db) == {"added": 0, "updated": 1, "removed": 1}
        nightly = await schedules.get(db, nightly_id, user=team["admin"])
        assert nightly["cron"] == "0 4 * * *" and not nightly["enabled"]
        # Ticks of a class schedule are enqueued as the operator "scheduler".
        await schedules.resume(db, nightly_id, user=team["admin"])
        tick = schedules.next_tick("0 4 * * *", "Europe/Berlin", datetime.now(UTC))
        await set_fields(db, nightly_id, next_run=tick)
        await run_due(db, tick + timedelta(seconds=1), late_after=5)
        job, = await jobs_of(db, nightly_id)
        assert job["enqueued"]["username"] == "scheduler" and job["args"] == {"depth": 2}
    finally:
        forget_package(package)


# ---------------------------------------------------------------- the lease

async def test_only_one_scheduler_holds_the_lease_and_another_takes_over_once_it_expired(db, config):
    other_db = Database.connect(config.mongo_url, config.database)
    first = Scheduler(db, lease_seconds=1.0, name="first")
    second = Scheduler(other_db, lease_seconds=1.0, name="second")
    try:
        await first.step()
        await second.step()
        assert first.active and not second.active
        lease = await db.settings.find_one({"_id": LEASE_ID})
        assert lease["holder"] == "first"
        # The first dies without giving the lease up: the second waits for it to expire by the database's clock.
        first.token = None

        async def taken() -> bool:
            await second.step()
            return second.active
        await wait_for(taken, timeout=5, message="the take-over")
        assert (await db.settings.find_one({"_id": LEASE_ID}))["holder"] == "second"
        taken_at = lease["expires"]
        assert (await db.settings.find_one({"_id": LEASE_ID}))["since"] >= taken_at
    finally:
        await other_db.close()


async def test_a_holder_cut_off_stops_acting_when_its_lease_may_have_expired(db):
    ticking = [100.0]
    scheduler = Scheduler(db, lease_seconds=3.0, clock=lambda: ticking[0])
    await scheduler.step()
    assert scheduler.active
    ticking[0] += 2.9
    assert scheduler.active
    ticking[0] += 0.2  # no renewal has gone through since: by its own clock it may have expired
    assert not scheduler.active


# ---------------------------------------------------------------- two schedulers, 30 ticks

async def test_two_schedulers_at_once_enqueue_each_tick_exactly_once(db, config, job_classes):
    schedule = await schedules.add(db, user=OPERATOR, qual_name=DUMMY, cron="* * * * * *", overlap="queue",
                                   args={"sleep": 0})
    clients = [Database.connect(config.mongo_url, config.database) for _ in range(3)]
    running = [Scheduler(client, lease_seconds=2.0, name=f"s{index}") for index, client in enumerate(clients[:2])]
    for scheduler in running:
        scheduler.start()

    async def rogue() -> None:
        """A holder that lost its lease without knowing: it enqueues every due tick too, lease or not."""
        while True:
            await run_due(clients[2], await clients[2].server_time(), late_after=4)
            await asyncio.sleep(0.2)
    stale = asyncio.create_task(rogue())
    try:
        async def ticks() -> list[datetime]:
            return [job["schedule"]["tick"] for job in await jobs_of(db, schedule["_id"])]
        await wait_for(lambda: _count(ticks, 31), timeout=45, interval=0.2, message="31 ticks")
        # One of them is active; it does not matter which.
        assert sum(scheduler.active for scheduler in running) == 1
        assert not stale.done()
    finally:
        stale.cancel()
        await asyncio.gather(stale, return_exceptions=True)
        for scheduler in running:
            await scheduler.stop()
        for client in clients:
            await client.close()
    seen = sorted(await ticks())
    assert len(seen) == len(set(seen)), "a tick was enqueued twice"
    assert seen == [seen[0] + timedelta(seconds=n) for n in range(len(seen))], "a tick is missing"
    assert len(seen) >= 31


async def _count(ticks: Any, wanted: int) -> bool:
    return len(await ticks()) >= wanted


# ---------------------------------------------------------------- every query uses an index

async def test_every_query_of_schedules_and_the_scheduler_uses_an_index(recorded, team):
    db, recorder = recorded
    made = await schedules.add(db, user=team["executor"], qual_name=DUMMY, cron="* * * * * *")
    await schedules.list_page(db, user=team["reader"], search="Dummy")
    await schedules.get(db, made["_id"], user=team["reader"])
    await schedules.update(db, made["_id"], user=team["executor"], priority=1)
    scheduler = Scheduler(db, lease_seconds=2.0)
    await scheduler.step()  # takes the lease, syncs the class schedules, fires what is due
    now = await db.server_time()
    for second in (1, 2):  # a job, then a tick skipped for overlap
        await set_fields(db, made["_id"], next_run=now + timedelta(seconds=second))
        await run_due(db, now + timedelta(seconds=second + 0.5), late_after=5)
    await scheduler.step()
    await scheduler.stop()
    await schedules.pause(db, made["_id"], user=team["executor"])
    await schedules.remove(db, made["_id"], user=team["executor"])
    found, shapes = await scans(db, recorder.commands)
    # A listing reads every schedule (a reader's: by permission and search patterns no index serves on the
    # embedded server), as the registry's listing does every class: one small document each.
    found = [finding for finding in found if not (finding.collection == "schedules" and (
        finding.query == {} or "$regex" in str(finding.query.get("qual_name"))))]
    assert shapes > 10 and not found, "\n".join(map(str, found))
