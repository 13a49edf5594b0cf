"""The scheduler: enqueues the due ticks of the schedules (``core.schedules``), exactly once each.

Every server process (``jobdeck serve``, ``jobdeck up``) runs a ``Scheduler``;
one at a time is active, the holder of the lease document ``settings``
``{_id: "scheduler"}`` (``holder``, ``token``, ``expires``):

- **The lease.** The holder renews it every third of ``lease_seconds``;
  ``expires`` is the database's clock (``$$NOW``) plus ``lease_seconds``.
  Another process takes it only once ``expires`` is past by the database's
  clock, so none ever takes it early, whatever its own clock or an outage
  says; it checks again when it expires, so a dead holder is replaced within a
  lease. A holder acts only until ``lease_seconds`` after it *sent* its last
  successful renewal, by its own clock: one cut off from the database stops
  before another can have taken over. A holder that stops gives the lease up.
- **Exactly once.** The lease only saves work. What makes a tick unique is
  ``queue.enqueue_once`` with the key ``tick:<schedule id>:<tick>``: its guard
  document (collection ``enqueue_keys``, kept for ``max(30 days, 2 periods)``,
  long after the job left the queue for the journal) refuses a second job for
  the tick, whoever enqueues it: a holder that lost its lease without knowing,
  or a new holder retrying a tick its predecessor enqueued just before dying.
  The job carries ``schedule: {id, tick}``. ``last_tick`` then moves forward
  only, by compare-and-set.
- **Waking.** The holder sleeps until the earliest ``next_run`` of all
  schedules, at most ``max_sleep`` seconds (1 s), so a new or changed schedule
  is seen within a second; and syncs the class schedules from the registry
  (``schedules.sync_classes``) when it takes the lease and then every renewal.
"""
from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Callable

from bson import ObjectId
from pymongo.errors import DuplicateKeyError, PyMongoError

from core import audit, queue, schedules, users
from core.errors import Conflict, JobdeckError
from core.states import FINAL, State
from core.tasks import stop_task

if TYPE_CHECKING:
    from core.db import Database

__all__ = ["Scheduler", "LEASE_ID", "fire", "run_due"]

log = logging.getLogger(__name__)

LEASE_ID = "scheduler"
#: Due schedules handled per round (the rest in the next, at once).
_BATCH = 100
_RETRY_SECONDS = 0.5
_LIVE = [state.value for state in State if state not in FINAL]
_KEEP = timedelta(days=30)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class Scheduler:
    """Seeks, holds and renews the scheduler lease; while holding it, enqueues due ticks. ``start()``/``stop()``."""

    def __init__(self, db: Database, *, lease_seconds: float = 30.0, name: str | None = None,
                 max_sleep: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.db = db
        self.lease_seconds = lease_seconds
        #: Who holds the lease, as its document says (host, pid and a random suffix).
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.max_sleep = max_sleep
        self.clock = clock
        #: A tick later than this many seconds was missed (``core.schedules``).
        self.late_after = 2 * lease_seconds
        self.token: str | None = None
        self._valid_until = -float("inf")  # by self.clock: lease_seconds after the last renewal was sent
        self._renew_at = -float("inf")
        self._sync_at = -float("inf")
        self._unreachable = False
        self._task: asyncio.Task[None] | None = None

    @property
    def active(self) -> bool:
        """Whether this process holds the lease and may act (its own clock says it cannot have expired)."""
        return self.token is not None and self.clock() < self._valid_until

    def start(self) -> None:
        """Start seeking the lease and, once held, scheduling."""
        self._task = asyncio.create_task(self._loop(), name=f"scheduler-{self.name}")

    async def stop(self) -> None:
        """Stop; give the lease up, so that another process takes over at once."""
        await stop_task(self._task)
        self._task = None
        if self.token is not None:
            token, self.token = self.token, None
            try:
                await asyncio.wait_for(self.db.settings.update_one(
                    {"_id": LEASE_ID, "token": token}, [{"$set": {"expires": {"$subtract": ["$$NOW", 1]}}}]), 2)
            except (PyMongoError, asyncio.TimeoutError) as exc:
                log.warning("cannot give the scheduler lease up (%s); it expires by itself", exc or "timeout")

    async def _loop(self) -> None:
        while True:
            try:
                wait = await self.step()
                if self._unreachable:
                    log.info("the database answers again; scheduler %s goes on", self.name)
                    self._unreachable = False
            except asyncio.CancelledError:
                raise
            except PyMongoError as exc:
                if not self._unreachable:
                    log.warning("scheduler %s cannot reach the database (%s); retrying every %g s%s", self.name,
                                exc, _RETRY_SECONDS, "; it stops scheduling when its lease may have expired"
                                if self.token else "")
                self._unreachable = True
                wait = _RETRY_SECONDS
            except Exception:  # noqa: BLE001 - a bug here must not stop scheduling for good
                log.exception("scheduler %s failed; retrying", self.name)
                wait = self.max_sleep
            await asyncio.sleep(max(0.0, wait))

    async def step(self) -> float:
        """One round: renew or seek the lease when due; as holder, enqueue the due ticks. Return seconds to sleep."""
        if self.clock() >= self._renew_at:
            await self._hold()
        if not self.active:
            return max(0.01, self._renew_at - self.clock())
        if self.clock() >= self._sync_at:
            await schedules.sync_classes(self.db)
            self._sync_at = self.clock() + self.lease_seconds / 3
        now = await self.db.server_time()
        await run_due(self.db, now, late_after=self.late_after, active=lambda: self.active)
        wait = min(self.max_sleep, self._renew_at - self.clock())
        first = await self.db.schedules.find({"next_run": {"$gte": _EPOCH}}, {"next_run": 1}) \
            .sort("next_run", 1).limit(1).to_list()
        if first:
            wait = min(wait, (first[0]["next_run"] - now).total_seconds())
        return wait

    async def _hold(self) -> None:
        """Renew the lease held, or take it if it expired; set when to try next."""
        third = self.lease_seconds / 3
        lease_ms = int(self.lease_seconds * 1000)
        sent = self.clock()
        if self.token is not None:
            renewed = await self.db.settings.update_one(
                {"_id": LEASE_ID, "token": self.token},
                [{"$set": {"expires": {"$add": ["$$NOW", lease_ms]}, "renewed": "$$NOW"}}])
            if renewed.matched_count:
                self._valid_until = sent + self.lease_seconds
                self._renew_at = sent + third
                return
            log.warning("scheduler %s lost its lease (it expired and another took it)", self.name)
            self.token = None
            self._valid_until = -float("inf")
        now = await self.db.server_time()
        token = secrets.token_hex(16)
        sent = self.clock()
        try:
            # No document yet: the upsert makes it; one not expired: no match, and the upsert's insert is refused.
            await self.db.settings.update_one(
                {"_id": LEASE_ID, "expires": {"$lt": now}},
                [{"$set": {"holder": {"$literal": self.name}, "token": {"$literal": token},
                           "expires": {"$add": ["$$NOW", lease_ms]}, "since": "$$NOW", "renewed": "$$NOW"}}],
                upsert=True)
        except DuplicateKeyError:
            lease = await self.db.settings.find_one({"_id": LEASE_ID}, {"expires": 1, "holder": 1})
            expires = (lease or {}).get("expires")
            left = (expires - now).total_seconds() if isinstance(expires, datetime) else 0.0
            # Try again just after it expires (sooner, in case it is given up or renewed less often).
            self._renew_at = self.clock() + min(third, max(0.05, left + 0.05))
            return
        self.token = token
        self._valid_until = sent + self.lease_seconds
        self._renew_at = sent + third
        self._sync_at = -float("inf")
        log.info("scheduler %s holds the lease: it enqueues the schedules' ticks", self.name)


async def run_due(db: Database, now: datetime, *, late_after: float,
                  active: Callable[[], bool] = lambda: True) -> int:
    """Enqueue the due ticks of every schedule whose ``next_run`` is at or before ``now``; return the jobs made.

    Stops as soon as ``active()`` is false. A schedule that fails for a bug
    (not the database) is logged and its ``next_run`` moved past ``now``.
    """
    made = 0
    due = await db.schedules.find({"next_run": {"$lte": now}}).sort("next_run", 1).limit(_BATCH).to_list()
    for schedule in due:
        if not active():
            break
        try:
            made += await fire(db, schedule, now, late_after=late_after, active=active)
        except PyMongoError:
            raise
        except Exception:  # noqa: BLE001 - one broken schedule must not stop the others
            log.exception("schedule %s failed; its ticks up to %s are left out", schedule.get("_id"), now)
            with_next = schedules.next_tick(schedule.get("cron") or "", schedule.get("tz") or "UTC", now) \
                if isinstance(schedule.get("cron"), str) else None
            await db.schedules.update_one({"_id": schedule["_id"]}, {"$set": {"next_run": with_next}})
    return made


async def fire(db: Database, schedule: dict[str, Any], now: datetime, *, late_after: float,
               active: Callable[[], bool] = lambda: True) -> int:
    """Enqueue ``schedule``'s due ticks at ``now`` per its ``catch_up`` and ``overlap``; return the jobs made.

    Then its ``next_run`` is written (unless the schedule changed meanwhile).
    """
    made = 0
    planned = schedules.plan(schedule, now, late_after)
    if planned.left_out:
        await _skip(db, schedule, planned.left_out[0], planned.left_out_reason(schedule.get("catch_up", "latest")),
                    advance=not planned.ticks)
    for tick in planned.ticks:
        if not active():
            return made
        try:
            made += await _fire_tick(db, schedule, tick)
        except _Busy as exc:
            log.warning("schedule %s: tick %s is not enqueued yet (%s); trying again", schedule["_id"],
                        tick.isoformat(), exc)
            return made
    fresh = await db.schedules.find_one({"_id": schedule["_id"]})
    if fresh is not None:
        next_run = schedules.refresh_next_run(fresh, now)
        if next_run != fresh.get("next_run"):
            await db.schedules.update_one({"_id": fresh["_id"], "version": fresh["version"]},
                                          {"$set": {"next_run": next_run}})
    return made


class _Busy(Exception):
    """Raised when a tick's key is held by an enqueue still under way."""


async def _acting(db: Database, schedule: dict[str, Any]) -> dict[str, Any] | str:
    """The user a tick is enqueued as, or why there is none."""
    acting = schedules.acting_user(schedule)
    if isinstance(acting, dict):
        return acting
    user = await users.find(db, acting)
    return user if user is not None else f"user {acting!r}, who made the schedule, no longer exists"


async def _fire_tick(db: Database, schedule: dict[str, Any], tick: datetime) -> int:
    """Enqueue one tick (once: ``queue.enqueue_once``), or record why not; return 1 if this call made the job."""
    schedule_id = schedule["_id"]
    if schedule.get("overlap", "skip") == "skip":
        live = await db.queue.find_one({"schedule.id": schedule_id, "state": {"$in": _LIVE},
                                        "schedule.tick": {"$ne": tick}}, {"state": 1})
        if live is not None:
            await _skip(db, schedule, tick, f"the previous job {live['_id']} is still {live['state']} "
                                            "(overlap skip)", advance=True)
            return 0
    user = await _acting(db, schedule)
    if isinstance(user, str):
        await _skip(db, schedule, tick, user, advance=True)
        return 0
    following = schedules.next_tick(schedule["cron"], schedule.get("tz") or "UTC", tick)
    keep = max(_KEEP, 2 * (following - tick)) if following else _KEEP
    try:
        job, created = await queue.enqueue_once(
            db, f"tick:{schedule_id}:{tick.isoformat()}", schedule["qual_name"], schedule.get("args") or {},
            user=user, keep=keep, extra={"schedule": {"id": schedule_id, "tick": tick}},
            **(schedule.get("options") or {}))
    except Conflict as exc:
        if not isinstance(exc.details.get("job_id"), (str, ObjectId)):
            # The key is busy (another enqueue of it is under way, or a dead holder's transaction still
            # locks it until the server ends it): the tick stays due, and is tried again next round.
            raise _Busy(str(exc)) from None
        # The tick's job exists, enqueued from the schedule as it was before a change: the tick is done.
        await _advance(db, schedule_id, tick, ObjectId(str(exc.details["job_id"])))
        return 0
    except JobdeckError as exc:  # the class is gone, the user may no longer, the arguments no longer fit
        await _skip(db, schedule, tick, f"cannot enqueue: {exc}", advance=True)
        return 0
    await _advance(db, schedule_id, tick, job["_id"])
    return 1 if created else 0


async def _advance(db: Database, schedule_id: str, tick: datetime, job_id: ObjectId) -> None:
    """``last_tick`` and ``last_job_id`` of a tick enqueued, unless a later tick is recorded already."""
    await db.schedules.update_one(
        {"_id": schedule_id, "$or": [{"last_tick": None}, {"last_tick": {"$lt": tick}}]},
        {"$set": {"last_tick": tick, "last_job_id": job_id}})


async def _skip(db: Database, schedule: dict[str, Any], tick: datetime, reason: str, *, advance: bool) -> None:
    """Record that ``tick`` was not enqueued and why (``last_skip``, audit ``schedule.skip``), once.

    ``advance``: ``last_tick`` moves to ``tick`` too. Only a schedule whose
    ``last_tick`` is still before ``tick`` is written, so that a tick is
    recorded once however many schedulers see it.
    """
    fields: dict[str, Any] = {"last_skip": {"tick": tick, "reason": reason, "at": datetime.now(timezone.utc)}}
    if advance:
        fields["last_tick"] = tick
    result = await db.schedules.update_one(
        {"_id": schedule["_id"], "$or": [{"last_tick": None}, {"last_tick": {"$lt": tick}}],
         "last_skip.tick": {"$ne": tick}}, {"$set": fields})
    if result.modified_count:
        log.info("schedule %s: tick %s skipped: %s", schedule["_id"], tick.isoformat(), reason)
        await audit.record(db, "schedule.skip", actor=schedules.SCHEDULER, target=schedule["_id"],
                           qual_name=schedule.get("qual_name"), tick=tick, reason=reason)
