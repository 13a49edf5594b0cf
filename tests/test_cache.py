"""core.cache: documents kept until a change drops them, and never staler than ``stale_seconds``."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from bson import ObjectId

from core.cache import Cache
from core.db import Database


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Loads:
    """A loader that counts its calls and returns the current ``document``."""

    def __init__(self, document: dict[str, Any] | None) -> None:
        self.document = document
        self.calls = 0

    async def __call__(self) -> dict[str, Any] | None:
        self.calls += 1
        return self.document


def cache_of(db: Database, clock: FakeClock, hub: Any = None, **bounds: Any) -> Cache:
    return Cache(db, "user", hub=hub, clock=clock, **bounds)


async def test_a_document_is_read_once_within_stale_seconds(db: Database) -> None:
    clock = FakeClock()
    cache, load = cache_of(db, clock, stale_seconds=2), Loads({"_id": ObjectId(), "name": "bob"})
    for _ in range(3):
        assert (await cache.get("bob", load))["name"] == "bob"
        clock.now += 0.5
    assert load.calls == 1 and cache.stats == {"hits": 2, "reads": 1}


async def test_without_a_stream_an_entry_is_read_again_after_stale_seconds(db: Database) -> None:
    clock = FakeClock()
    cache, load = cache_of(db, clock, stale_seconds=2), Loads({"_id": ObjectId(), "name": "bob"})
    await cache.get("bob", load)
    clock.now += 2.5
    await cache.get("bob", load)
    assert load.calls == 2


async def test_while_the_stream_answers_an_entry_lives_until_max_age(db: Database) -> None:
    clock = FakeClock()
    hub = SimpleNamespace(heard_at=None)
    cache = cache_of(db, clock, hub, stale_seconds=2, max_age=60)
    load = Loads({"_id": ObjectId(), "name": "bob"})
    await cache.get("bob", load)
    for _ in range(29):
        clock.now += 2
        hub.heard_at = clock.now - 1  # the stream answered a second ago: any change would have dropped it
        await cache.get("bob", load)
    assert load.calls == 1
    clock.now += 3
    hub.heard_at = clock.now
    await cache.get("bob", load)
    assert load.calls == 2  # past max_age


async def test_a_stream_that_stopped_answering_is_not_trusted_past_stale_seconds(db: Database) -> None:
    clock = FakeClock()
    hub = SimpleNamespace(heard_at=clock.now)
    cache, load = cache_of(db, clock, hub, stale_seconds=2), Loads({"_id": ObjectId(), "name": "bob"})
    await cache.get("bob", load)
    clock.now += 2.5  # the last answer is 2.5 s old: a change may be on its way
    await cache.get("bob", load)
    assert load.calls == 2


async def test_a_change_drops_its_document_by_id_and_a_change_of_any_drops_all(db: Database) -> None:
    clock = FakeClock()
    cache = cache_of(db, clock)
    bob, ann = Loads({"_id": ObjectId(), "name": "bob"}), Loads({"_id": ObjectId(), "name": "ann"})
    await cache.get("bob", bob)
    await cache.get("ann", ann)

    cache.drop(bob.document["_id"])
    await cache.get("bob", bob)
    await cache.get("ann", ann)
    assert (bob.calls, ann.calls) == (2, 1)

    cache.drop()
    await cache.get("bob", bob)
    await cache.get("ann", ann)
    assert (bob.calls, ann.calls) == (3, 2)


async def test_a_read_that_a_change_overtakes_is_not_kept(db: Database) -> None:
    cache = cache_of(db, FakeClock())
    release = asyncio.Event()
    old = {"_id": ObjectId(), "name": "bob", "active": True}

    async def slow_read() -> dict[str, Any]:
        await release.wait()
        return old  # what the database held when the read began

    reading = asyncio.create_task(cache.get("bob", slow_read))
    await asyncio.sleep(0)
    cache.drop(old["_id"])  # bob is disabled meanwhile
    release.set()
    assert await reading is old  # this request may still see it ...
    fresh = Loads({**old, "active": False})
    assert (await cache.get("bob", fresh))["active"] is False  # ... but it was not kept
    assert fresh.calls == 1


async def test_nothing_found_is_not_kept(db: Database) -> None:
    cache, load = cache_of(db, FakeClock()), Loads(None)
    assert await cache.get("ghost", load) is None
    assert await cache.get("ghost", load) is None
    assert load.calls == 2


async def test_the_least_recently_used_entry_goes_first(db: Database) -> None:
    cache = cache_of(db, FakeClock(), max_entries=2)
    loads = {name: Loads({"_id": ObjectId(), "name": name}) for name in ("a", "b", "c")}
    await cache.get("a", loads["a"])
    await cache.get("b", loads["b"])
    await cache.get("a", loads["a"])
    await cache.get("c", loads["c"])  # b goes
    assert len(cache) == 2
    await cache.get("a", loads["a"])
    await cache.get("b", loads["b"])
    assert (loads["a"].calls, loads["b"].calls) == (1, 2)


async def test_database_changed_reaches_the_caches_of_its_collection_until_closed(db: Database) -> None:
    clock = FakeClock()
    users, entries = cache_of(db, clock), Cache(db, "registry", clock=clock)
    bob = Loads({"_id": ObjectId(), "name": "bob"})
    dummy = Loads({"_id": "jobs.example.DummyJob", "valid": True})
    await users.get("bob", bob)
    await entries.get("jobs.example.DummyJob", dummy)

    db.changed("user", bob.document["_id"])
    await users.get("bob", bob)
    await entries.get("jobs.example.DummyJob", dummy)
    assert (bob.calls, dummy.calls) == (2, 1)

    users.close()
    assert users not in db.caches["user"] and len(users) == 0
    db.changed("registry")
    await entries.get("jobs.example.DummyJob", dummy)
    assert dummy.calls == 2
