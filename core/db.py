"""The database: one ``AsyncMongoClient`` per process and loop, collection handles, indexes.

Create it once with ``Database.connect`` and pass it to everything that needs
MongoDB; close it with ``await db.close()``.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable

from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, IndexModel
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import ConfigurationError, ConnectionFailure, PyMongoError
from pymongo.read_concern import ReadConcern

from core import counts, startup
from core.errors import DatabaseUnavailable

if TYPE_CHECKING:
    from core.cache import Cache

__all__ = ["Database", "COLLECTIONS", "LOG_TTL_INDEX", "AUDIT_TTL_INDEX"]

log = logging.getLogger(__name__)

#: Session ids a process keeps to publish (its driver reuses a few, about one per concurrent transaction).
MAX_SESSIONS = 32

COLLECTIONS = ("queue", "journal", "log", "registry", "user", "worker", "audit", "settings", "counts", "count_changes",
               "enqueue_keys", "slots", "schedules", "token")
LOG_TTL_INDEX = "log_ttl"
#: Deletes audit entries ``audit_retention_days`` after their ``at`` (none while that is 0).
AUDIT_TTL_INDEX = "audit_ttl"

# Every query jobdeck makes is served by one of these (the embedded server
# scans a collection for an unindexed query, which is slow; see SPEC §3.1).
_INDEXES: dict[str, list[IndexModel]] = {
    "queue": [
        IndexModel([("state", ASCENDING), ("priority", DESCENDING), ("_id", ASCENDING)], name="claim"),
        IndexModel([("qual_name", ASCENDING)], name="qual_name"),
        # The queue's order, next to run first, without state: keyset pages (core.keyset).
        IndexModel([("priority", DESCENDING), ("_id", ASCENDING)], name="priority_id"),
        IndexModel([("locked.worker", ASCENDING)], name="locked_worker"),
        IndexModel([("locked.heartbeat", ASCENDING)], name="lease"),
        IndexModel([("query_at", ASCENDING)], name="query_at"),
        # Only unique jobs (core.queue): sparse, not partial, for the reason given at ``requires``. It was
        # partial up to December 2026: ``setup`` replaces that index (see ``_REPLACED``).
        IndexModel([("unique_key", ASCENDING)], name="unique_key", unique=True, sparse=True),
        # Only jobs of schedules (core.scheduler): is a schedule's previous job still live?
        IndexModel([("schedule.id", ASCENDING)], name="schedule", sparse=True),
        # Only jobs that require worker tags (core.flow): stats group the waiting ones. Sparse, not
        # partial: the embedded server reads the whole queue for a query on a partial index (0.7 s with
        # 20,000 queued, against 4 ms).
        IndexModel([("requires", ASCENDING)], name="requires", sparse=True),
    ],
    "journal": [
        IndexModel([("finished_at", DESCENDING)], name="finished_at"),
        # The journal's order, newest first: keyset pages and their ties (core.keyset).
        IndexModel([("finished_at", DESCENDING), ("_id", DESCENDING)], name="finished_id"),
        IndexModel([("qual_name", ASCENDING), ("finished_at", DESCENDING)], name="qual_name"),
        IndexModel([("state", ASCENDING), ("finished_at", DESCENDING)], name="state"),
    ],
    "log": [
        IndexModel([("job_id", ASCENDING), ("seq", ASCENDING)], name="job_seq", unique=True),
    ],
    "user": [IndexModel([("name", ASCENDING)], name="name", unique=True)],
    "worker": [IndexModel([("heartbeat", DESCENDING)], name="heartbeat")],
    "audit": [
        IndexModel([("at", DESCENDING)], name="at"),
        IndexModel([("target", ASCENDING), ("at", DESCENDING)], name="target"),
        # Reading the trail (core.audit.listing), newest first: keyset windows on ``at`` alone or after one
        # filter's value, the ties of one ``at`` by ``_id``, and numbered pages in order.
        IndexModel([("at", DESCENDING), ("_id", DESCENDING)], name="at_id"),
        IndexModel([("actor", ASCENDING), ("at", DESCENDING), ("_id", DESCENDING)], name="actor_at_id"),
        IndexModel([("action", ASCENDING), ("at", DESCENDING), ("_id", DESCENDING)], name="action_at_id"),
        IndexModel([("target", ASCENDING), ("at", DESCENDING), ("_id", DESCENDING)], name="target_at_id"),
        # Deletes an entry at its ``expires`` date (failed logins); entries without one stay.
        IndexModel([("expires", ASCENDING)], name="expires", expireAfterSeconds=0),
    ],
    # Concurrency slots (core.slots): a limit's slots are read by its key.
    "slots": [IndexModel([("key", ASCENDING)], name="key")],
    # Schedules (core.schedules): the due ones by next_run (null while paused), the class ones by source.
    "schedules": [IndexModel([("next_run", ASCENDING)], name="next_run"),
                  IndexModel([("source", ASCENDING)], name="source"),
                  IndexModel([("qual_name", ASCENDING)], name="qual_name")],
    # The classes with a schedule attribute (core.schedules.sync_classes).
    "registry": [IndexModel([("schedule", ASCENDING)], name="schedule", sparse=True)],
    # Login sessions and API tokens (core.tokens): a user's of one kind, oldest first; each deleted at its
    # ``expires`` date (API tokens without one stay).
    "token": [IndexModel([("kind", ASCENDING), ("user", ASCENDING), ("created", ASCENDING)], name="kind_user"),
              IndexModel([("expires", ASCENDING)], name="expires", expireAfterSeconds=0)],
    # Idempotency keys (core.queue.enqueue_once): each is deleted at its ``expires`` date.
    "enqueue_keys": [IndexModel([("expires", ASCENDING)], name="expires", expireAfterSeconds=0)],
}


#: Indexes whose options changed, by collection: (name, an option only the old version has).
_REPLACED: dict[str, tuple[tuple[str, str], ...]] = {"queue": (("unique_key", "partialFilterExpression"),)}


class Database:
    """jobdeck's MongoDB database: the client and one handle per collection."""

    queue: AsyncCollection
    journal: AsyncCollection
    log: AsyncCollection
    registry: AsyncCollection
    user: AsyncCollection
    worker: AsyncCollection
    audit: AsyncCollection
    settings: AsyncCollection
    counts: AsyncCollection
    count_changes: AsyncCollection
    enqueue_keys: AsyncCollection
    slots: AsyncCollection
    schedules: AsyncCollection
    token: AsyncCollection

    def __init__(self, client: AsyncMongoClient, name: str) -> None:
        self.client = client
        self.name = name
        #: The URL connected to (``connect`` sets it); messages show it through ``startup.redact_url``.
        self.url = ""
        self.db = client[name]
        #: Whether the server runs multi-document transactions (a replica set
        #: does); learnt by ``setup``.
        self.transactions = False
        #: Whether the server has change streams (same condition).
        self.change_streams = False
        #: Whether the server runs ``bulkWrite`` across collections (MongoDB 8.0+).
        self.client_bulk_write = False
        #: The ids of the sessions this process ran transactions in, and who publishes them (see ``session``).
        self.sessions: dict[bytes, dict[str, Any]] = {}
        self.publish_sessions: Callable[[list[dict[str, Any]]], Awaitable[Any]] | None = None
        #: This process's caches of documents, by collection (see ``changed``).
        self.caches: dict[str, list[Cache]] = {}
        for collection in COLLECTIONS:
            setattr(self, collection, self.db[collection])

    @classmethod
    def connect(cls, url: str, name: str, *, timeout: float = 5.0, event_listeners: list[Any] | None = None) -> Database:
        """Create the process's client; no I/O happens until the first command.

        Writes are acknowledged by a majority (``w: "majority"``), so an
        acknowledged claim or final transition survives a failover; the
        reaper, claims and journal reads use ``majority`` read concern
        (``majority`` below). Each operation gives up after ``timeout``
        seconds without a server (``serverSelectionTimeoutMS``): short, on
        purpose, so that a request answers 503 soon; the worker does not rely
        on it to ride out an election or outage, it retries its writes itself
        until they are in (see ``core.run``). ``event_listeners`` are PyMongo
        monitoring listeners (tests count commands with them).
        """
        try:
            client: AsyncMongoClient = AsyncMongoClient(
                url,
                tz_aware=True,
                tzinfo=timezone.utc,
                appname="jobdeck",
                serverSelectionTimeoutMS=int(timeout * 1000),
                connectTimeoutMS=int(timeout * 1000),
                w="majority",
                event_listeners=event_listeners or [],
            )
        except ConfigurationError as exc:  # a malformed URL or option
            raise startup.bad_database_url(url, exc) from exc
        database = cls(client, name)
        database.url = url
        return database

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncClientSession]:
        """A session for a transaction; a session id not seen before is published first.

        A process killed in the middle of a transaction leaves it open, and
        its writes locked, until the server's transaction lifetime ends (60 s
        by default). ``publish_sessions`` (a worker sets it) writes the ids
        this process may have transactions in (the driver reuses a few,
        about one per concurrent transaction; the latest ``MAX_SESSIONS``)
        where whoever reaps its jobs finds them to end them (``kill_sessions``).
        """
        async with self.client.start_session() as session:
            lsid = session.session_id
            key = bytes(lsid["id"])
            known = key in self.sessions
            self.sessions.pop(key, None)
            self.sessions[key] = lsid
            while len(self.sessions) > MAX_SESSIONS:
                self.sessions.pop(next(iter(self.sessions)))
            if not known and self.publish_sessions is not None:
                await self.publish_sessions(list(self.sessions.values()))
            try:
                yield session
            except PyMongoError as exc:
                # A commit whose result is unknown (its connection lost, twice with the driver's retry)
                # may not have run, and the driver sends no abort after a commit: the transaction would
                # stay open, its writes locked, for the server's transaction lifetime. Ending the session
                # ends it (a no-op if it did commit); the caller still gets the error.
                if exc.has_error_label("UnknownTransactionCommitResult"):
                    with contextlib.suppress(PyMongoError):
                        await self.kill_sessions([lsid])
                raise

    async def kill_sessions(self, sessions: list[Any]) -> None:
        """End the sessions ``sessions`` (ids a dead process published) and their open transactions."""
        if sessions:
            await self.client.admin.command("killSessions", sessions)

    def majority(self, collection: AsyncCollection) -> AsyncCollection:
        """``collection`` read with ``majority`` read concern: for decisions (claims, reaping, the journal)."""
        return collection.with_options(read_concern=ReadConcern("majority"))

    async def server_time(self) -> datetime:
        """The database server's clock (``hello.localTime``); lease expiry is judged by it."""
        hello = await self.client.admin.command("hello")
        moment = hello.get("localTime")
        if not isinstance(moment, datetime):  # a server that does not say: ours
            return datetime.now(timezone.utc)
        return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)

    def changed(self, collection: str, document_id: Any = None) -> None:
        """Drop a changed document of ``collection`` (``None``: any) from this process's caches.

        Called by the core function that wrote it, so that this process sees
        the change at once; other processes hear of it from their hub.
        """
        for cache in self.caches.get(collection, ()):
            cache.drop(document_id)

    async def close(self) -> None:
        """Close the client and its connections."""
        await self.client.close()

    async def setup(self, *, log_retention_days: float, audit_retention_days: float | None = None) -> None:
        """Learn what the server supports; create every index idempotently, and
        the ``log`` TTL index at its configured age; count the jobs of a
        database never counted (``core.counts.ensure``).

        ``audit_retention_days`` sets the ``audit`` TTL index on ``at``
        (``_ensure_audit_ttl``); None leaves it as it is.

        Raises ``ConfigError`` (a start-up error naming ``mongo_url``, see
        ``core.startup``) when MongoDB does not answer.
        """
        try:
            hello = await self.client.admin.command("hello")
            replica_set = "setName" in hello or hello.get("msg") == "isdbgrid"
            self.transactions = self.change_streams = replica_set
            self.client_bulk_write = hello.get("maxWireVersion", 0) >= 25
            for collection, models in _INDEXES.items():
                await self._replace_changed(collection)
                await self.db[collection].create_indexes(models)
            await self._ensure_log_ttl(int(log_retention_days * 86400))
            if audit_retention_days is not None:
                await self._ensure_audit_ttl(audit_retention_days)
            await counts.ensure(self)
        except (ConnectionFailure, ConfigurationError) as exc:  # ConfigurationError: an SRV name not found
            raise startup.unreachable_database(self.url, exc, self.client.options.server_selection_timeout) from exc

    async def _replace_changed(self, collection: str) -> None:
        """Drop an index of an earlier version that ``create_indexes`` would refuse to make again
        with its new options (same name): the next ``create_indexes`` makes it anew."""
        for name, old_option in _REPLACED.get(collection, ()):
            existing = (await self.db[collection].index_information()).get(name)
            if existing is not None and old_option in existing:
                log.warning("replacing index %s of %s by its new version", name, collection)
                await self.db[collection].drop_index(name)

    async def _ensure_log_ttl(self, seconds: int) -> None:
        existing = (await self.log.index_information()).get(LOG_TTL_INDEX)
        if existing is None:
            await self.log.create_index([("created", ASCENDING)], name=LOG_TTL_INDEX,
                                        expireAfterSeconds=seconds)
        elif existing.get("expireAfterSeconds") != seconds:
            # create_index refuses to change options of an existing index.
            await self.db.command("collMod", "log",
                                  index={"name": LOG_TTL_INDEX, "expireAfterSeconds": seconds})

    async def _ensure_audit_ttl(self, days: float) -> None:
        """The ``audit`` TTL index on ``at`` expiring entries ``days`` after it; 0: no such index (kept for ever).

        Entries with ``expires`` (failed logins) also keep their own TTL
        index: whichever comes first deletes them.
        """
        existing = (await self.audit.index_information()).get(AUDIT_TTL_INDEX)
        if not days:
            if existing is not None:
                await self.audit.drop_index(AUDIT_TTL_INDEX)
            return
        seconds = max(1, int(days * 86400))  # 0 would delete at once
        if existing is None:
            await self.audit.create_index([("at", ASCENDING)], name=AUDIT_TTL_INDEX, expireAfterSeconds=seconds)
        elif existing.get("expireAfterSeconds") != seconds:
            await self.db.command("collMod", "audit", index={"name": AUDIT_TTL_INDEX, "expireAfterSeconds": seconds})

    async def health(self, *, timeout: float = 2.0) -> dict[str, Any]:
        """Ping the server; return ``{"database": "ok", "ping_ms": ...}``.

        Raises ``DatabaseUnavailable`` when no answer comes within ``timeout`` seconds.
        """
        started = time.perf_counter()
        try:
            await asyncio.wait_for(self.client.admin.command("ping"), timeout)
        except (PyMongoError, asyncio.TimeoutError) as exc:
            # PyMongo's message describes the whole topology: for the log only.
            log.warning("MongoDB did not answer ping: %s", exc or "timeout")
            raise DatabaseUnavailable(f"MongoDB did not answer ping within {timeout:g} s") from None
        return {"database": "ok", "ping_ms": round((time.perf_counter() - started) * 1000, 2)}
