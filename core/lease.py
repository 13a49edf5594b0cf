"""Leases: a running job belongs to the run that holds its claim token and keeps renewing it.

- **Fencing.** A claim writes a fresh random ``locked.token``; every write of
  that run (lease renewal, pid, progress, its outcome) is conditioned on it. A
  run whose job was reaped and claimed again -- by another worker or by its
  own -- changes nothing any more, and learns so at its next write.
- **Renewal.** ``Leases`` renews the leases of all of a worker's runs in one
  bulk write every ``heartbeat_seconds``, stamped with the database's clock
  (``$$NOW``), and the worker's own heartbeat. A renewal that fails is retried
  every half second until the database answers: a worker back from an
  outage renews its leases first.
- **Reaping.** A running job whose lease is older than ``lease_seconds`` by the
  database's clock, and whose worker's heartbeat is as old (or that has no
  worker document), belongs to a dead worker: any worker reaps it (``failed``
  or ``error`` with ``WorkerLost``, ``killed`` if a kill was asked for). A
  reaper reaps only once it has itself been connected for a full lease, so
  that after an outage every worker has had its chance to renew first.
- **Offers.** By the same rule, once a lease, the offers of job classes made
  by dead workers are dropped (``core.registry.expire_offers``): a class no
  live process offers any more becomes unavailable. A worker whose renewals
  failed is told when the database answers again (``on_reconnected``), so
  that it can offer its classes again in case they were dropped meanwhile.
- A malformed job document is logged and skipped; it never stops a loop.
"""
from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Callable, Iterable

from pymongo import UpdateOne
from pymongo.errors import PyMongoError

from core import registry, slots
from core.errors import Conflict
from core.states import State, transition
from core.tasks import stop_task

if TYPE_CHECKING:
    from core.db import Database

__all__ = ["Leases", "reap_expired", "fence", "fail"]

log = logging.getLogger(__name__)

_RETRY_SECONDS = 0.5


def fence(job_id: Any, token: str) -> dict[str, Any]:
    """The condition every write of one run carries: still running, still this claim."""
    return {"_id": job_id, "state": State.RUNNING.value, "locked.token": token}


async def fail(db: Database, job: dict[str, Any], error: dict[str, Any], now: datetime,
               retry_at: datetime, *, fence: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """Use one attempt: ``failed`` (retried at ``retry_at``) or, with none left, ``error``.

    ``fence``: see ``core.states.transition``.
    """
    left = job["attempts_left"] - 1
    fields = {"attempts_left": left, "last_error": error, "locked": None, **extra}
    if left > 0:
        return await transition(db, job, State.FAILED, fence=fence, query_at=retry_at, **fields)
    started = (job.get("locked") or {}).get("at")
    runtime = round((now - started).total_seconds(), 3) if started else None
    return await transition(db, job, State.ERROR, fence=fence, finished_at=now, runtime=runtime, **fields)


async def reap_expired(db: Database, lease_seconds: float, *, now: datetime | None = None) -> int:
    """End running jobs whose lease expired and whose worker is gone; return how many.

    ``now`` is the database's clock (read from the server unless given). A job
    with attempts left becomes ``failed`` and is due at once; otherwise
    ``error``. A job that was asked to die ends ``killed``. Either way
    ``last_error.exception`` is ``WorkerLost``.
    """
    now = now or await db.server_time()
    cutoff = now - timedelta(seconds=lease_seconds)
    queue = db.majority(db.queue)
    expired = await queue.find({"state": State.RUNNING.value, "locked.heartbeat": {"$lt": cutoff}}).to_list()
    if not expired:
        return 0
    owners = {(job.get("locked") or {}).get("worker") for job in expired}
    found = await db.majority(db.worker).find({"_id": {"$in": [owner for owner in owners if owner]}},
                                              {"heartbeat": 1, "sessions": 1}).to_list()
    alive = {worker["_id"] for worker in found if worker.get("heartbeat") and worker["heartbeat"] >= cutoff}
    # A worker killed in the middle of ending a job left its transaction open, the job locked until
    # the server's transaction lifetime ends (60 s): end its sessions, so that its jobs can be reaped now.
    lost = [lsid for worker in found if worker["_id"] not in alive for lsid in worker.get("sessions") or ()]
    if lost:
        try:
            await db.kill_sessions(lost)
        except PyMongoError as exc:
            log.warning("cannot end the sessions of lost workers (%s); their jobs wait for the server", exc)
    reaped = 0
    for job in expired:
        try:
            reaped += await _reap(db, job, now, alive)
        except Conflict:
            continue  # another worker reaped it, or its run renewed it meanwhile
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            log.error("cannot reap job %s, its document is malformed (%r); skipping it", job.get("_id"), exc)
    return reaped


async def _reap(db: Database, job: dict[str, Any], now: datetime, alive: set[Any]) -> int:
    locked = job.get("locked") or {}
    if locked.get("worker") in alive:
        return 0  # its worker is alive: it renews or ends its runs itself
    error = {"exception": "WorkerLost", "at": now, "traceback": None,
             "message": f"worker {locked.get('worker')} stopped renewing the lease at {locked.get('heartbeat')}"}
    if job.get("killed_at"):
        await transition(db, job, State.KILLED, finished_at=now, locked=None, last_error=error)
    else:
        await fail(db, job, error, now, retry_at=now)
    log.warning("reaped job %s of lost worker %s", job["_id"], locked.get("worker"))
    return 1


class Leases:
    """Renews a worker's leases and heartbeat, and reaps dead workers' jobs. ``start()``/``stop()``.

    ``runs()`` gives the runs to renew: objects with ``id``, ``token``,
    ``pid_unwritten()`` (a pid to write with the renewal, or None),
    ``pid_written()`` and ``request_stop(reason)`` (``"kill"``, or ``"lost"``
    when the job is no longer theirs). ``on_reconnected()`` is called when a
    renewal succeeds after failures.
    """

    def __init__(self, db: Database, *, worker_id: str, lease_seconds: float, heartbeat_seconds: float,
                 runs: Callable[[], Iterable[Any]], on_reaped: Callable[[], None],
                 on_reconnected: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.db = db
        self.worker_id = worker_id
        self.lease_seconds = lease_seconds
        self.heartbeat_seconds = heartbeat_seconds
        self.runs = runs
        self.on_reaped = on_reaped
        self.on_reconnected = on_reconnected
        self.clock = clock
        #: When the registry's offers were last checked (``core.registry.expire_offers``).
        self.offers_checked_at = -float("inf")
        #: Since when the database has answered without a break (None: it does not now).
        self.connected_since: float | None = clock()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start renewing."""
        self._task = asyncio.create_task(self._loop(), name=f"leases-{self.worker_id}")

    async def stop(self) -> None:
        """Stop renewing (the runs' leases then expire unless they ended)."""
        await stop_task(self._task)
        self._task = None

    async def _loop(self) -> None:
        while True:
            try:
                await self.beat()
                await asyncio.sleep(self.heartbeat_seconds)
            except asyncio.CancelledError:
                raise
            except PyMongoError as exc:
                if self.connected_since is not None:
                    log.warning("renewing leases failed (%s); retrying every %g s", exc, _RETRY_SECONDS)
                self.connected_since = None
                await asyncio.sleep(_RETRY_SECONDS)
            except Exception:  # noqa: BLE001 - a bug here must not end the leases of every run
                log.exception("lease renewal failed; retrying")
                await asyncio.sleep(self.heartbeat_seconds)

    async def beat(self) -> None:
        """Renew every run's lease (and write pids not written yet), the worker's heartbeat; reap.

        Once a lease, also drop the registry offers of dead workers and free concurrency slots
        whose jobs no longer run (``core.slots``).
        """
        runs = list(self.runs())
        if runs:
            await self.renew(runs)
        await self.db.worker.update_one({"_id": self.worker_id}, [{"$set": {
            "heartbeat": "$$NOW", "running": [str(run.id) for run in runs]}}])
        if self.connected_since is None:
            self.connected_since = self.clock()
            log.info("the database answers again; reaping resumes in %g s", self.lease_seconds)
            if self.on_reconnected is not None:
                self.on_reconnected()
        if self.clock() - self.connected_since >= self.lease_seconds:
            now = await self.db.server_time()
            if await reap_expired(self.db, self.lease_seconds, now=now):
                self.on_reaped()
            if self.clock() - self.offers_checked_at >= self.lease_seconds:
                await registry.expire_offers(self.db, self.lease_seconds, now=now)
                await slots.release_stale(self.db, older_than=self.lease_seconds)
                self.offers_checked_at = self.clock()

    async def renew(self, runs: list[Any]) -> None:
        """One bulk write renewing each run's lease; tell the runs that were killed or lost their claim.

        A kill does not stop the renewals (a job being killed keeps its lease
        until its process is gone). Kills reach the worker through its change
        stream at once; without change streams, or when a lease was not
        renewed, the runs' jobs are read back to find out why.
        """
        requests = []
        for run in runs:
            stamp: dict[str, Any] = {"locked.heartbeat": "$$NOW", "version": {"$add": ["$version", 1]}}
            pid = run.pid_unwritten()
            if pid is not None:
                stamp["locked.pid"] = pid
            requests.append(UpdateOne(fence(run.id, run.token), [{"$set": stamp}]))
        result = await self.db.queue.bulk_write(requests, ordered=False)
        if result.matched_count == len(runs):
            for run in runs:
                run.pid_written()
            if self.db.change_streams:
                return
        jobs = {job["_id"]: job for job in await self.db.queue.find(
            {"_id": {"$in": [run.id for run in runs]}}, {"state": 1, "locked.token": 1, "killed_at": 1}).to_list()}
        for run in runs:
            job = jobs.get(run.id)
            if job is None or job.get("state") != State.RUNNING.value or \
                    (job.get("locked") or {}).get("token") != run.token:
                run.request_stop("lost")
            elif job.get("killed_at"):
                run.request_stop("kill")
