"""Flow control: pausing the queue or a job class, and worker tags.

- **Pause.** One ``settings`` document, ``_id: "flow"``, says whether the
  whole queue is paused (maintenance) and which job classes are, with a
  ``version`` that every change bumps. Workers claim no paused job: they
  read the document when they start, when the database tells them it
  changed (their change stream) and, without change streams, before each
  claim. Jobs already running finish. ``pause``/``resume`` return once every
  live worker has acknowledged the new version (its worker document's
  ``flow_version``), so after the reply no worker starts a paused job; a
  worker that does not answer within ``wait`` seconds is named in the reply.
- **Tags.** A worker has tags (``worker_tags``, ``jobdeck worker --tag``); a
  job may require some (``requires``, from its class or its enqueue) and is
  claimed only by a worker that has all of them. A waiting job that no live
  worker can run says so (``unmet``).
"""
from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Iterable

from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from core import audit
from core.errors import BadArgument, Conflict
from core.permissions import EXECUTE, require, require_admin

if TYPE_CHECKING:
    from core.db import Database

__all__ = ["FLOW_ID", "MAX_PAUSED", "Flow", "read", "pause", "resume", "acknowledge", "check_tags", "runnable_by", "unmet", "live_tags",
           "MAX_TAGS"]

FLOW_ID = "flow"
#: Most tags a worker has or a job requires.
MAX_TAGS = 16
_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}\Z")
_QUAL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+\Z")
#: Most job classes paused one by one.
MAX_PAUSED = 1000


@dataclass(frozen=True)
class Flow:
    """What is paused: everything (``all``) or the job classes ``classes``; ``version`` grows with each change."""

    all: bool = False
    classes: frozenset[str] = field(default_factory=frozenset)
    version: int = 0

    def paused(self, qual_name: str) -> bool:
        """Whether jobs of ``qual_name`` may not start now."""
        return self.all or qual_name in self.classes

    def public(self) -> dict[str, Any]:
        """The reply's form: ``{"all", "classes", "version"}``."""
        return {"all": self.all, "classes": sorted(self.classes), "version": self.version}

    @classmethod
    def of(cls, document: dict[str, Any] | None) -> Flow:
        """The flow a ``settings`` document holds (None: nothing paused)."""
        if not document:
            return cls()
        classes = document.get("classes")
        return cls(all=document.get("all") is True,
                   classes=frozenset(name for name in classes if isinstance(name, str))
                   if isinstance(classes, list) else frozenset(),
                   version=document["version"] if isinstance(document.get("version"), int) else 0)


async def read(db: Database, **options: Any) -> Flow:
    """What is paused now (``options`` go to the read, e.g. ``max_time_ms``)."""
    return Flow.of(await db.settings.find_one({"_id": FLOW_ID}, **options))


async def pause(db: Database, *, user: dict[str, Any], qual_name: Any = None, lease_seconds: float = 30.0,
                wait: float = 5.0) -> dict[str, Any]:
    """Pause the whole queue (``qual_name`` None: admins only) or one job class (execute permission on it).

    Returns ``{"flow": Flow.public(), "workers": live workers, "acknowledged": those that applied it,
    "unacknowledged": [their ids]}``, once every live worker acknowledged or ``wait`` seconds passed.
    """
    return await _change(db, user, qual_name, True, lease_seconds, wait)


async def resume(db: Database, *, user: dict[str, Any], qual_name: Any = None, lease_seconds: float = 30.0,
                 wait: float = 5.0) -> dict[str, Any]:
    """Undo ``pause`` of the whole queue or of one class (the same permissions); returns like ``pause``.

    Resuming the whole queue keeps the classes paused one by one paused.
    """
    return await _change(db, user, qual_name, False, lease_seconds, wait)


async def _change(db: Database, user: dict[str, Any], qual_name: Any, paused: bool, lease_seconds: float,
                  wait: float) -> dict[str, Any]:
    if qual_name is None:
        require_admin(user)
        change: dict[str, Any] = {"$set": {"all": paused}}
    else:
        if not isinstance(qual_name, str) or len(qual_name) > 200 or not _QUAL_NAME.match(qual_name):
            raise BadArgument(f"qual_name must be a job class name (module.Class), got {str(qual_name)[:40]!r}")
        require(user, qual_name, EXECUTE)
        change = {"$addToSet" if paused else "$pull": {"classes": qual_name}}
    # At most MAX_PAUSED classes: every worker reads this document.
    condition = {"_id": FLOW_ID, f"classes.{MAX_PAUSED - 1}": {"$exists": False}} \
        if paused and qual_name is not None else {"_id": FLOW_ID}
    try:
        document = await db.settings.find_one_and_update(
            condition, {**change, "$inc": {"version": 1}}, upsert=True, return_document=ReturnDocument.AFTER)
    except DuplicateKeyError:  # the upsert of a full list
        raise Conflict(f"at most {MAX_PAUSED} job classes can be paused one by one; pause the whole queue, "
                       "or resume some") from None
    flow = Flow.of(document)
    await audit.record(db, "queue.pause" if paused else "queue.resume", actor=user["name"],
                       target=qual_name or "*", version=flow.version)
    live, waiting = await _acknowledgements(db, flow.version, lease_seconds, wait)
    return {"flow": flow.public(), "workers": live, "acknowledged": live - len(waiting), "unacknowledged": waiting}


async def _acknowledgements(db: Database, version: int, lease_seconds: float, wait: float
                            ) -> tuple[int, list[str]]:
    """(live workers, ids of those that have not acknowledged ``version`` after at most ``wait`` s)."""
    deadline = time.monotonic() + wait
    while True:
        since = datetime.now(timezone.utc) - timedelta(seconds=lease_seconds)
        workers = await db.worker.find({"heartbeat": {"$gte": since}}, {"flow_version": 1}).to_list()
        waiting = sorted(str(w["_id"]) for w in workers
                         if not isinstance(w.get("flow_version"), int) or w["flow_version"] < version)
        if not waiting or time.monotonic() >= deadline:
            return len(workers), waiting
        await asyncio.sleep(0.05)


async def acknowledge(db: Database, worker_id: str, version: int) -> None:
    """Worker ``worker_id`` claims by flow ``version`` (or a later one) from now on."""
    await db.worker.update_one({"_id": worker_id}, {"$max": {"flow_version": version}})


# -- tags ------------------------------------------------------------------


def check_tags(value: Any, what: str) -> list[str]:
    """``value`` as a sorted list of distinct tags; raises ``BadArgument`` (naming ``what``) otherwise."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise BadArgument(f"{what} must be a list of tags, got {type(value).__name__}")
    if len(value) > MAX_TAGS:
        raise BadArgument(f"{what} holds at most {MAX_TAGS} tags, got {len(value)}")
    for tag in value:
        if not isinstance(tag, str) or not _TAG.match(tag):
            raise BadArgument(f"{what}: bad tag {str(tag)[:40]!r}: 1 to 64 letters, digits, '_', '.', ':' or '-', "
                              "starting with a letter or digit")
    return sorted(set(value))


def runnable_by(tags: Iterable[str]) -> dict[str, Any]:
    """The query condition of jobs a worker with ``tags`` may run: none of their ``requires`` is missing."""
    return {"requires": {"$not": {"$elemMatch": {"$nin": sorted(tags)}}}}


async def live_tags(db: Database, lease_seconds: float, **options: Any) -> list[frozenset[str]]:
    """The tags of each live worker (``options`` go to the read, e.g. ``max_time_ms``)."""
    since = datetime.now(timezone.utc) - timedelta(seconds=lease_seconds)
    workers = await db.worker.find({"heartbeat": {"$gte": since}}, {"tags": 1}, **options).to_list()
    return [frozenset(tag for tag in w.get("tags") or () if isinstance(tag, str)) for w in workers]


def unmet(requires: Any, workers: list[frozenset[str]]) -> str | None:
    """Why no live worker (``live_tags``) can run a job requiring ``requires``, or None when one can."""
    needed = frozenset(tag for tag in requires or () if isinstance(tag, str))
    if not needed or any(needed <= tags for tags in workers):
        return None
    return f"no live worker has tags {', '.join(sorted(needed))}"
