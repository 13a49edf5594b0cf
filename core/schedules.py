"""Schedules: a job enqueued by cron, once per tick (``core.scheduler`` runs them).

A schedule document (collection ``schedules``) names a job class, its
arguments and enqueue options, a cron expression and the IANA time zone it
is read in (UTC by default). Two kinds share the collection and the API:

- **api** schedules, made at run time (``POST /schedule``, ``jobdeck schedule
  add``), with an ObjectId hex ``_id``; they act as the user who made them
  (an operator for the command line): that user needs execute permission on
  the class when each tick is enqueued, not only when the schedule is made.
- **class** schedules, from a job class's ``schedule`` attribute (with
  ``schedule_args`` and ``schedule_tz``), ``_id`` ``class:<qual_name>``,
  kept in step with the registry by ``sync_classes``; they act as the
  operator ``scheduler``. They can be paused and resumed, not edited or
  removed (``Conflict``): the class says what they are.

**Cron.** Five fields (minute hour day month weekday), the ``@daily``-style
aliases, or six fields whose last is the second (``* * * * * */5`` every
five seconds). Ticks are instants: each is computed in the schedule's time
zone by ``croniter`` and kept in UTC. On a DST gap, a tick whose wall time
does not exist fires once at the first wall time after the gap (``30 2 * * *``
fires at 03:00 that day); on a DST repeat, a tick whose wall time happens
twice fires twice, once per instant (``30 2 * * *`` fires at 02:30 summer
time and again at 02:30 winter time; ``0 * * * *`` fires at both 02:00).

**Which ticks are due.** Those after ``max(last_tick, start_after)`` and at
or before now. ``start_after`` is set when a schedule is made, resumed, or
its cron or time zone changes: ticks from before are never enqueued (a
paused schedule does not catch up its pause). ``next_run`` is the first
tick due next, kept on every write (the scheduler finds due schedules by
it); null while paused or broken.

**Catch-up** (``catch_up``) decides about ticks that are *late*, more than
twice the scheduler's lease past (no scheduler ran: a take-over happens
within a lease, so a tick that late was missed): ``latest`` (default) enqueues
one job for the latest of them, unless a tick on time is due too (that one
is the catch-up); ``none`` enqueues none of them; ``all`` enqueues each, at
most ``MAX_CATCH_UP`` (the most recent). Ticks on time are always enqueued.
Ticks left out are recorded in ``last_skip``.

**Overlap** (``overlap``): ``skip`` (default) does not enqueue a tick while the
schedule's previous job is still live (pending, running, deferred, failed):
the tick is recorded in ``last_skip`` and the audit trail (``schedule.skip``);
``queue`` enqueues it anyway.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from bson import ObjectId
from croniter import CroniterBadCronError, CroniterBadDateError, CroniterError, croniter
from pymongo.errors import DuplicateKeyError

from core import audit, queue, registry
from core.errors import BadArgument, Conflict, NotFound
from core.job import OPTIONS
from core.listing import Page, combine, paginate, search_filter
from core.permissions import EXECUTE, READ, may, readable_filter, require

if TYPE_CHECKING:
    from core.db import Database

__all__ = ["CATCH_UPS", "OVERLAPS", "MAX_CATCH_UP", "CLASS_PREFIX", "SCHEDULER", "check_cron", "check_tz",
           "next_tick", "ticks_before", "add", "get", "list_page", "update", "remove", "pause", "resume",
           "sync_classes", "refresh_next_run", "acting_user", "Plan", "plan"]

CATCH_UPS = ("latest", "none", "all")
OVERLAPS = ("skip", "queue")
#: Most late ticks ``catch_up = "all"`` enqueues at once (the most recent).
MAX_CATCH_UP = 100
CLASS_PREFIX = "class:"
#: The operator class schedules act as.
SCHEDULER = "scheduler"
_MAX_CRON = 200
_RETRIES = 20
#: Fields ``add`` and ``update`` take besides the enqueue options.
FIELDS = ("qual_name", "cron", "tz", "args", "enabled", "catch_up", "overlap")


def _now() -> datetime:
    return datetime.now(timezone.utc)


# ---------------------------------------------------------------- cron and time zones

def check_tz(tz: Any) -> str:
    """``tz`` if it is an IANA time zone name (``UTC``, ``Europe/Berlin``); raises ``BadArgument``."""
    if not isinstance(tz, str) or not tz or len(tz) > 64:
        raise BadArgument(f"tz must be an IANA time zone name, e.g. UTC or Europe/Berlin, got {str(tz)[:64]!r}")
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise BadArgument(f"unknown time zone {tz!r}: expected an IANA name, e.g. UTC or Europe/Berlin") from None
    return tz


def check_cron(cron: Any, tz: str = "UTC") -> str:
    """``cron`` if ``croniter`` reads it and it ever fires; raises ``BadArgument`` naming the problem.

    Five fields, an alias (``@hourly``, ``@daily``, ``@weekly``, ``@monthly``,
    ``@yearly``), or six fields whose last is the second.
    """
    if not isinstance(cron, str) or not cron.strip():
        raise BadArgument("cron must be a cron expression, e.g. '*/5 * * * *' (every 5 minutes) or "
                          "'* * * * * */10' (every 10 seconds: a sixth field is the second)")
    cron = " ".join(cron.split())
    if len(cron) > _MAX_CRON:
        raise BadArgument(f"cron must be at most {_MAX_CRON} characters")
    fields = len(cron.split())
    if not cron.startswith("@") and fields not in (5, 6):
        raise BadArgument(f"bad cron {cron!r}: expected 5 fields (minute hour day month weekday) or 6 (a "
                          f"sixth for the second), got {fields}")
    try:
        croniter(cron)
    except (CroniterError, ValueError, KeyError, TypeError) as exc:
        raise BadArgument(f"bad cron {cron!r}: {exc}") from None
    if next_tick(cron, tz, _now()) is None:
        raise BadArgument(f"cron {cron!r} never fires (no such date within 50 years)")
    return cron


def _iterator(cron: str, tz: str, start: datetime) -> croniter:
    return croniter(cron, start.astimezone(ZoneInfo(tz)), max_years_between_matches=50)


def next_tick(cron: str, tz: str, after: datetime) -> datetime | None:
    """The first tick of ``cron`` in ``tz`` strictly after ``after``, in UTC; None if it never fires."""
    try:
        tick = _iterator(cron, tz, after).get_next(datetime)
    except (CroniterBadDateError, CroniterBadCronError, OverflowError, ValueError):
        return None
    return tick.astimezone(timezone.utc)


def ticks_before(cron: str, tz: str, until: datetime, after: datetime, limit: int) -> tuple[list[datetime], bool]:
    """The ticks in ``(after, until]``, newest first, at most ``limit``; and whether older ones were left out."""
    iterator = _iterator(cron, tz, until + timedelta(microseconds=1))
    found: list[datetime] = []
    try:
        while True:
            tick = iterator.get_prev(datetime).astimezone(timezone.utc)
            if tick <= after:
                return found, False
            if len(found) == limit:
                return found, True
            found.append(tick)
    except (CroniterBadDateError, OverflowError, ValueError):
        return found, False


@dataclass
class Plan:
    """What to do about a schedule's due ticks now (``plan``)."""

    #: The ticks to enqueue, oldest first.
    ticks: list[datetime] = field(default_factory=list)
    #: The late ticks left out by ``catch_up``, newest first (``more``: and older ones not counted).
    left_out: list[datetime] = field(default_factory=list)
    more: bool = False

    def left_out_reason(self, catch_up: str) -> str:
        """Why ``left_out`` were not enqueued, for ``last_skip``."""
        count = f"{len(self.left_out)}{' or more' if self.more else ''}"
        span = f"{self.left_out[-1].isoformat()} to {self.left_out[0].isoformat()}" if len(self.left_out) > 1 \
            else self.left_out[0].isoformat()
        why = {"none": "catch_up none enqueues no late tick",
               "latest": "catch_up latest enqueues only the latest",
               "all": f"catch_up all enqueues at most the latest {MAX_CATCH_UP}"}[catch_up]
        return f"missed while no scheduler ran: {count} late tick(s), {span}; {why}"


def plan(schedule: dict[str, Any], now: datetime, late_after: float) -> Plan:
    """Which of ``schedule``'s due ticks to enqueue at ``now``, and which late ones ``catch_up`` leaves out.

    A tick more than ``late_after`` seconds before ``now`` is late (see the
    module docstring). Ticks on time are always enqueued.
    """
    after = _counted_after(schedule) or now
    # At most one tick a second: this many hold every tick on time and MAX_CATCH_UP + 1 late ones.
    limit = MAX_CATCH_UP + 2 + int(late_after)
    found, more = ticks_before(schedule["cron"], schedule.get("tz") or "UTC", now, after, limit)
    on_time = [tick for tick in found if (now - tick).total_seconds() <= late_after]
    late = found[len(on_time):]
    policy = schedule.get("catch_up") or "latest"
    if policy == "all":
        keep = late[:MAX_CATCH_UP]
    elif policy == "latest" and not on_time:
        keep = late[:1]
    else:
        keep = []
    return Plan(ticks=list(reversed(on_time + keep)), left_out=late[len(keep):], more=more)


# ---------------------------------------------------------------- checking

def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise BadArgument(f"{name} must be one of {', '.join(choices)}, got {str(value)[:40]!r}")
    return value


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise BadArgument(f"{name} must be true or false, got {str(value)[:40]!r}")
    return value


def _check_options(entry: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """The enqueue option overrides ``options``, checked against the class's defaults (``queue.check_options``)."""
    merged = queue.check_options(entry.get("defaults", {}), options)
    return {name: merged[name] for name in options}


def acting_user(schedule: dict[str, Any]) -> dict[str, Any] | str:
    """Who a schedule's ticks are enqueued as: a user document, or the reason there is none."""
    acts_as = schedule.get("acts_as") or {}
    return queue.operator(acts_as.get("name") or SCHEDULER) if acts_as.get("operator", True) else acts_as["name"]


def _acts_as(user: dict[str, Any]) -> dict[str, Any]:
    # Operators (the command line) have no user document: they are no account that can be disabled.
    return {"name": user["name"], "operator": "_id" not in user}


def refresh_next_run(schedule: dict[str, Any], now: datetime | None = None) -> datetime | None:
    """The first tick due after the schedule's ``last_tick`` and ``start_after``; None while paused or broken."""
    if not schedule.get("enabled") or schedule.get("error"):
        return None
    return next_tick(schedule["cron"], schedule.get("tz") or "UTC", _counted_after(schedule) or now or _now())


def _counted_after(schedule: dict[str, Any]) -> datetime | None:
    """The time after which the schedule's ticks are due: ``max(last_tick, start_after)``."""
    moments = [moment for moment in (schedule.get("last_tick"), schedule.get("start_after")) if moment]
    return max(moments) if moments else None


def _shown(schedule: dict[str, Any]) -> dict[str, Any]:
    """A schedule as replies show it."""
    return {key: value for key, value in schedule.items() if key != "acts_as"} | {
        "acts_as": (schedule.get("acts_as") or {}).get("name")}


# ---------------------------------------------------------------- reading

async def _find(db: Database, schedule_id: Any, user: dict[str, Any]) -> dict[str, Any]:
    """The schedule, readable by ``user``; one it may not read is ``NotFound``, exactly like a missing one."""
    if not isinstance(schedule_id, str) or not schedule_id or len(schedule_id) > 300:
        raise BadArgument(f"bad schedule id {str(schedule_id)[:40]!r}")
    schedule = await db.schedules.find_one({"_id": schedule_id})
    if schedule is None or not may(user, schedule["qual_name"], READ):
        raise NotFound(f"no schedule {schedule_id}")
    return schedule


async def get(db: Database, schedule_id: Any, *, user: dict[str, Any]) -> dict[str, Any]:
    """One schedule with ``next_run``, ``last_tick``, ``last_job_id`` and ``last_skip``.

    Raises ``BadArgument`` for a malformed id and ``NotFound`` for a missing
    schedule or one of a class the user may not read.
    """
    return _shown(await _find(db, schedule_id, user))


async def list_page(db: Database, *, user: dict[str, Any], search: str | None = None, page: int = 0,
                    per_page: int = 50) -> Page:
    """A page of the schedules of the classes ``user`` may read, by id (``class:`` ones after the others)."""
    query = combine(readable_filter(user, READ), search_filter(search, "qual_name"))
    found = await paginate(db.schedules, query, sort=[("_id", 1)], page=page, per_page=per_page,
                           advice="narrow it with a search")
    found.items = [_shown(schedule) for schedule in found.items]
    return found


# ---------------------------------------------------------------- changing

async def add(db: Database, *, user: dict[str, Any], qual_name: Any, cron: Any, args: Any = None,
              tz: Any = "UTC", enabled: Any = True, catch_up: Any = "latest", overlap: Any = "skip",
              **options: Any) -> dict[str, Any]:
    """Make a schedule of job ``qual_name``; return it. Its first tick is the first after now.

    ``options`` are enqueue options (``core.job.OPTIONS``), checked as an
    enqueue checks them. Raises ``NotFound`` for an unknown class,
    ``Forbidden`` without execute permission on it, ``BadArgument`` for a bad
    cron, time zone, argument, option or choice.
    """
    entry = await registry.get_valid(db, qual_name)
    require(user, qual_name, EXECUTE)
    tz = check_tz(tz if tz is not None else "UTC")
    now = _now()
    schedule = {
        "_id": str(ObjectId()), "qual_name": qual_name, "cron": check_cron(cron, tz), "tz": tz,
        "args": registry.check_args(entry, args), "options": _check_options(entry, options),
        "enabled": _check_bool("enabled", True if enabled is None else enabled),
        "catch_up": _check_choice("catch_up", catch_up or "latest", CATCH_UPS),
        "overlap": _check_choice("overlap", overlap or "skip", OVERLAPS),
        "source": "api", "created": {"at": now, "by": user["name"]}, "updated": {"at": now, "by": user["name"]},
        "acts_as": _acts_as(user), "start_after": now, "last_tick": None, "last_job_id": None,
        "last_skip": None, "error": None, "version": 1,
    }
    schedule["next_run"] = refresh_next_run(schedule)
    await db.schedules.insert_one(schedule)
    await audit.record(db, "schedule.add", actor=user["name"], target=schedule["_id"], qual_name=qual_name,
                       cron=schedule["cron"], tz=tz, enabled=schedule["enabled"])
    return _shown(schedule)


async def _change(db: Database, schedule_id: Any, user: dict[str, Any], action: str,
                  make: Any) -> dict[str, Any]:
    """Apply ``make(schedule) -> {field: value}`` by compare-and-set on ``version``; audit ``schedule.<action>``."""
    for _ in range(_RETRIES):
        schedule = await _find(db, schedule_id, user)
        require(user, schedule["qual_name"], EXECUTE)
        fields = await make(schedule)
        if not fields:
            return _shown(schedule)  # nothing to change, nothing to record
        now = _now()
        changed = {**schedule, **fields, "updated": {"at": now, "by": user["name"]},
                   "version": schedule["version"] + 1}
        changed["next_run"] = refresh_next_run(changed, now)
        written = {key: changed[key] for key in (*fields, "updated", "version", "next_run")}
        result = await db.schedules.update_one({"_id": schedule["_id"], "version": schedule["version"]},
                                               {"$set": written})
        if result.modified_count:
            await audit.record(db, f"schedule.{action}", actor=user["name"], target=schedule["_id"],
                               qual_name=schedule["qual_name"],
                               **{key: fields[key] for key in fields if key in FIELDS or key == "options"})
            return _shown(changed)
    raise Conflict(f"schedule {schedule_id} keeps changing; try again")


def _editable(schedule: dict[str, Any], action: str) -> None:
    if schedule.get("source") == "class":
        raise Conflict(f"schedule {schedule['_id']} comes from the schedule attribute of job class "
                       f"{schedule['qual_name']}: it cannot be {action}; change the class, or pause the schedule",
                       source="class")


async def update(db: Database, schedule_id: Any, *, user: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """Change some of a schedule's ``cron``, ``tz``, ``args``, ``enabled``, ``catch_up``, ``overlap`` and options.

    Fields not given stay. An option given as None goes back to the class's
    default. A new cron or time zone counts ticks from now (``start_after``).
    Raises like ``add``, ``Conflict`` for a class schedule, and
    ``BadArgument`` for a ``qual_name`` other than the schedule's.
    """
    unknown = [name for name in changes if name not in FIELDS and name not in OPTIONS]
    if unknown:
        raise BadArgument(f"unknown schedule field {unknown[0][:40]!r}; fields: {', '.join(FIELDS + OPTIONS)}")

    async def make(schedule: dict[str, Any]) -> dict[str, Any]:
        _editable(schedule, "edited")
        if changes.get("qual_name") not in (None, schedule["qual_name"]):
            raise BadArgument("a schedule's qual_name cannot change; add a new schedule")
        fields: dict[str, Any] = {}
        entry = await registry.get_valid(db, schedule["qual_name"])
        tz = check_tz(changes["tz"]) if changes.get("tz") is not None else schedule["tz"]
        if changes.get("cron") is not None or tz != schedule["tz"]:
            fields["cron"] = check_cron(changes.get("cron") or schedule["cron"], tz)
            fields["tz"] = tz
            if (fields["cron"], tz) != (schedule["cron"], schedule["tz"]):
                fields["start_after"] = _now()
        if "args" in changes:
            fields["args"] = registry.check_args(entry, changes["args"])
        if changes.get("enabled") is not None:
            fields["enabled"] = _check_bool("enabled", changes["enabled"])
            if fields["enabled"] and not schedule.get("enabled"):
                fields["start_after"] = _now()
        if changes.get("catch_up") is not None:
            fields["catch_up"] = _check_choice("catch_up", changes["catch_up"], CATCH_UPS)
        if changes.get("overlap") is not None:
            fields["overlap"] = _check_choice("overlap", changes["overlap"], OVERLAPS)
        given = {name: changes[name] for name in OPTIONS if name in changes}
        if given:
            options = {**schedule.get("options", {}), **given}
            options = {name: value for name, value in options.items() if value is not None}
            fields["options"] = _check_options(entry, options)
        return fields

    return await _change(db, schedule_id, user, "update", make)


async def _set_enabled(db: Database, schedule_id: Any, user: dict[str, Any], enabled: bool) -> dict[str, Any]:
    async def make(schedule: dict[str, Any]) -> dict[str, Any]:
        if schedule.get("enabled") == enabled:
            return {}
        # Resumed: the ticks of the pause are not caught up.
        return {"enabled": enabled, **({"start_after": _now()} if enabled else {})}

    return await _change(db, schedule_id, user, "resume" if enabled else "pause", make)


async def pause(db: Database, schedule_id: Any, *, user: dict[str, Any]) -> dict[str, Any]:
    """Stop enqueueing a schedule's ticks (class schedules too); pausing a paused one changes nothing.

    Raises ``NotFound`` or ``Forbidden`` (may read the class, not execute it).
    """
    return await _set_enabled(db, schedule_id, user, False)


async def resume(db: Database, schedule_id: Any, *, user: dict[str, Any]) -> dict[str, Any]:
    """Enqueue a paused schedule's ticks again, from now on (the pause is not caught up). Raises like ``pause``."""
    return await _set_enabled(db, schedule_id, user, True)


async def remove(db: Database, schedule_id: Any, *, user: dict[str, Any]) -> dict[str, Any]:
    """Delete a schedule (its jobs stay); return it. Raises like ``pause``, and ``Conflict`` for a class schedule."""
    schedule = await _find(db, schedule_id, user)
    require(user, schedule["qual_name"], EXECUTE)
    _editable(schedule, "removed")
    result = await db.schedules.delete_one({"_id": schedule["_id"]})
    if not result.deleted_count:
        raise NotFound(f"no schedule {schedule_id}")
    await audit.record(db, "schedule.remove", actor=user["name"], target=schedule["_id"],
                       qual_name=schedule["qual_name"])
    return _shown(schedule)


# ---------------------------------------------------------------- class schedules

def _class_fields(entry: dict[str, Any]) -> dict[str, Any]:
    """What a registry entry with a ``schedule`` says its class schedule is; ``error`` if it is invalid."""
    fields: dict[str, Any] = {"qual_name": entry["_id"], "cron": entry.get("schedule"),
                              "tz": entry.get("schedule_tz") or "UTC", "args": entry.get("schedule_args") or {},
                              "error": None}
    try:
        fields["tz"] = check_tz(fields["tz"])
        fields["cron"] = check_cron(fields["cron"], fields["tz"])
        fields["args"] = registry.check_args(entry, fields["args"])
    except BadArgument as exc:
        fields["error"] = f"the class's schedule is invalid: {exc}"
    return fields


async def sync_classes(db: Database) -> dict[str, int]:
    """Make the class schedules match the registry's classes with a ``schedule``; return the changes.

    A class schedule is added for each registered class with a ``schedule``
    attribute, its cron, time zone and arguments follow the class, and it is
    removed when the class has no ``schedule`` any more (or left the
    registry). Whether it is paused is kept. An invalid attribute gives a
    schedule with ``error`` set that never fires. A class that is no longer
    available keeps its schedule: its ticks are skipped (recorded) until a
    process offers it again.
    """
    entries = {entry["_id"]: entry for entry in await db.registry.find(
        {"schedule": {"$gt": ""}}, {"schedule": 1, "schedule_tz": 1, "schedule_args": 1, "schema": 1}
    ).to_list()}
    existing = {schedule["_id"]: schedule for schedule in await db.schedules.find({"source": "class"}).to_list()}
    counted = {"added": 0, "updated": 0, "removed": 0}
    now = _now()
    for qual_name, entry in entries.items():
        schedule_id = CLASS_PREFIX + qual_name
        fields = _class_fields(entry)
        schedule = existing.pop(schedule_id, None)
        if schedule is None:
            made = {"_id": schedule_id, **fields, "options": {}, "enabled": True, "catch_up": "latest",
                    "overlap": "skip", "source": "class", "created": {"at": now, "by": SCHEDULER},
                    "updated": {"at": now, "by": SCHEDULER}, "acts_as": {"name": SCHEDULER, "operator": True},
                    "start_after": now, "last_tick": None, "last_job_id": None, "last_skip": None, "version": 1}
            made["next_run"] = refresh_next_run(made, now)
            try:
                await db.schedules.insert_one(made)
                counted["added"] += 1
            except DuplicateKeyError:
                pass  # another process synced it first
            continue
        if all(schedule.get(key) == value for key, value in fields.items()):
            continue
        changed = {**schedule, **fields}
        if (fields["cron"], fields["tz"]) != (schedule.get("cron"), schedule.get("tz")):
            changed["start_after"] = now
        changed["next_run"] = refresh_next_run(changed, now)
        written = {key: changed[key] for key in (*fields, "start_after", "next_run")}
        result = await db.schedules.update_one(
            {"_id": schedule_id, "version": schedule["version"]},
            {"$set": {**written, "updated": {"at": now, "by": SCHEDULER}}, "$inc": {"version": 1}})
        counted["updated"] += result.modified_count
    for schedule_id, schedule in existing.items():
        result = await db.schedules.delete_one({"_id": schedule_id, "version": schedule["version"]})
        counted["removed"] += result.deleted_count
    return counted
