"""The schedule API: thin handlers over ``core.schedules`` — parse arguments, call, shape the reply."""
from __future__ import annotations

from typing import Any

from core import queue, schedules
from core.job import OPTIONS
from handlers.base import BaseHandler
from handlers.openapi import PAGE_PARAMS, Op, Param

__all__ = ["ScheduleHandler", "ScheduleDetailHandler", "SchedulePauseHandler", "ScheduleResumeHandler"]

_TAGS = ("schedules",)
_CRON = ("cron: 5 fields (minute hour day month weekday), an alias such as @daily, or 6 fields whose last is the "
         "second ('* * * * * */10': every 10 seconds)")


def _option_param(name: str) -> Param:
    limits = queue.OPTION_LIMITS.get(name)
    if limits is None:  # a list option (requires: worker tags)
        return Param(name, "array", f"enqueue option {name} (default: the job class's)",
                     schema={"items": {"type": "string"}})
    kind, low, high, _ = limits
    return Param(name, "integer" if kind is int else "number",
                 f"enqueue option {name} (default: the job class's), {low:g} to {high:g}", minimum=low, maximum=high)


_OPTIONS = tuple(_option_param(name) for name in OPTIONS)
_FIELDS = (
    Param("tz", "string", "IANA time zone the cron is read in, e.g. Europe/Berlin (default UTC)"),
    Param("args", "object", "the job's arguments"),
    Param("enabled", "boolean", "false: made paused (default true)"),
    Param("catch_up", "string", "ticks missed while no scheduler ran: latest (one job for the latest; default), "
          "none, or all (at most 100)", pattern="^(latest|none|all)$"),
    Param("overlap", "string", "a tick while the previous job is still live: skip (default; recorded) or queue",
          pattern="^(skip|queue)$"),
) + _OPTIONS


def _options(handler: BaseHandler, *, nulls: bool = False) -> dict[str, Any]:
    """The enqueue options given; with ``nulls`` also those given as null (back to the class's default)."""
    found: dict[str, Any] = {}
    for name in OPTIONS:
        if name not in handler.args or (handler.args[name] is None and not nulls):
            continue
        limits = queue.OPTION_LIMITS.get(name)
        kind = list if limits is None else limits[0]
        found[name] = handler.arg(name, kind, None)
    return found


def _fields(handler: BaseHandler) -> dict[str, Any]:
    return {"tz": handler.arg("tz", str, None), "args": handler.arg("args", dict, None),
            "enabled": handler.arg("enabled", bool, None), "catch_up": handler.arg("catch_up", str, None),
            "overlap": handler.arg("overlap", str, None)}


class ScheduleHandler(BaseHandler):
    """``GET /schedule``: the schedules; ``POST /schedule``: add one."""

    api = {
        "get": Op("List the schedules of the job classes the caller may read, with next_run, last_tick and "
                  "last_job_id", PAGE_PARAMS + (Param("search", "string", "qual_name contains this "
                                                      "(case-insensitive); '*' and '?' are wildcards"),),
                  reply="Schedule", paginated=True, errors=(400, 401), tags=_TAGS),
        "post": Op("Add a schedule: a job enqueued at each tick of a cron, exactly once per tick",
                   (Param("qual_name", "string", "the job's qualified class name", required=True),
                    Param("cron", "string", _CRON, required=True)) + _FIELDS,
                   reply="Schedule", errors=(400, 401, 403, 404), tags=_TAGS,
                   description="Needs execute permission on the class; its ticks are enqueued as the caller."),
    }

    async def get(self) -> None:
        page = await schedules.list_page(self.services.db, user=self.current_user,
                                         search=self.arg("search", default=None), page=self.arg("page", int, 0),
                                         per_page=self.arg("per_page", int, 10))
        self.reply(page.items, **page.envelope_fields())

    async def post(self) -> None:
        fields = {name: value for name, value in _fields(self).items() if value is not None}
        self.reply(await schedules.add(self.services.db, user=self.current_user, qual_name=self.arg("qual_name"),
                                       cron=self.arg("cron"), **fields, **_options(self)))


class ScheduleDetailHandler(BaseHandler):
    """``GET|PUT|DELETE /schedule/<id>``."""

    api = {
        "get": Op("One schedule", reply="Schedule", errors=(400, 401, 404), tags=_TAGS, id="ScheduleId"),
        "put": Op("Change a schedule: the fields given (an option given as null goes back to the class's "
                  "default); a new cron or tz counts ticks from now",
                  (Param("cron", "string", _CRON),) + _FIELDS, reply="Schedule",
                  errors=(400, 401, 403, 404, 409), tags=_TAGS, id="ScheduleId",
                  description="A schedule of a class's schedule attribute (`source: class`) cannot be changed "
                              "(409); pause it instead."),
        "delete": Op("Remove a schedule (its jobs stay)", reply="Schedule", errors=(400, 401, 403, 404, 409),
                     tags=_TAGS, id="ScheduleId",
                     description="A schedule of a class's schedule attribute cannot be removed (409)."),
    }

    async def get(self, schedule_id: str) -> None:
        self.reply(await schedules.get(self.services.db, schedule_id, user=self.current_user))

    async def put(self, schedule_id: str) -> None:
        fields = {name: value for name, value in _fields(self).items() if value is not None or name == "args"
                  and "args" in self.args}
        if self.args.get("cron") is not None:
            fields["cron"] = self.arg("cron")
        self.reply(await schedules.update(self.services.db, schedule_id, user=self.current_user, **fields,
                                          **_options(self, nulls=True)))

    async def delete(self, schedule_id: str) -> None:
        self.reply(await schedules.remove(self.services.db, schedule_id, user=self.current_user))


class SchedulePauseHandler(BaseHandler):
    """``PUT /schedule/<id>/pause``."""

    api = {"put": Op("Pause a schedule (class schedules too): no tick is enqueued until it is resumed",
                     reply="Schedule", errors=(400, 401, 403, 404), tags=_TAGS, id="ScheduleId")}

    async def put(self, schedule_id: str) -> None:
        self.reply(await schedules.pause(self.services.db, schedule_id, user=self.current_user))


class ScheduleResumeHandler(BaseHandler):
    """``PUT /schedule/<id>/resume``."""

    api = {"put": Op("Resume a paused schedule: ticks from now on are enqueued (the pause is not caught up)",
                     reply="Schedule", errors=(400, 401, 403, 404), tags=_TAGS, id="ScheduleId")}

    async def put(self, schedule_id: str) -> None:
        self.reply(await schedules.resume(self.services.db, schedule_id, user=self.current_user))
