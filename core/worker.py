"""The worker: claims due jobs, runs each in a child process, reports, journals; reaps dead workers' jobs.

One ``Worker`` per process, with ``slots`` jobs at a time::

    worker = Worker(db, config, slots=2)
    await worker.start()
    ...
    await worker.stop()          # SIGTERM: finish within the grace period, requeue the rest

- **Claiming** is a compare-and-set on ``{_id, state, version}`` (through
  ``states.transition``), highest priority first, then oldest; ``query_at``
  must have come. Only jobs whose classes this worker found are claimed.
- **Waking**: a change stream on ``queue`` wakes the claim loop at once when
  something is enqueued or becomes due; a timer wakes it for the next retry
  that falls due; without change streams it scans every ``poll_seconds``.
- **Leases**: every ``heartbeat_seconds`` the worker renews the lease of each
  job it runs (``locked.heartbeat``) and its own heartbeat in ``worker``. A
  running job whose lease is older than ``lease_seconds`` belongs to a dead
  worker; any worker reaps it (``failed`` or ``error`` with ``WorkerLost``,
  or ``killed`` if a kill was asked for).
- **Kill**: ``killed_at`` set on a running job (by ``queue.kill``/``remove``),
  or ``wall_time`` exceeded, makes the worker SIGTERM the job's process group,
  SIGKILL it after ``kill_grace`` seconds, and end the job ``killed``.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from pymongo.errors import PyMongoError

from core import logs, states
from core.errors import Conflict
from core.process import JobProcess, Outcome
from core.states import State, transition

if TYPE_CHECKING:
    from core.config import Config
    from core.db import Database
    from core.job import Job

__all__ = ["Worker", "reap_expired"]

log = logging.getLogger(__name__)

_WAITING = [s.value for s in states.WAITING]


def _now() -> datetime:
    return datetime.now(timezone.utc)


class _Run:
    """Book-keeping of one job this worker runs."""

    def __init__(self, job: dict[str, Any]) -> None:
        self.job = job
        self.id = job["_id"]
        self.process: JobProcess | None = None
        self.stop = asyncio.Event()      # set: end the process now
        self.reason: str | None = None   # "kill", "lost", "shutdown"
        self.task: asyncio.Task[None] | None = None
        self.ended = False               # the process is gone; only the end is left to write

    def request_stop(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
        self.stop.set()


async def reap_expired(db: Database, lease_seconds: float, *, now: datetime | None = None) -> int:
    """End running jobs whose lease expired (their worker died); return how many.

    A job with attempts left becomes ``failed`` and is due at once; otherwise
    ``error``. A job that was asked to die ends ``killed``. Either way
    ``last_error.exception`` is ``WorkerLost``.
    """
    now = now or _now()
    cutoff = now - timedelta(seconds=lease_seconds)
    reaped = 0
    for job in await db.queue.find({"state": State.RUNNING.value, "locked.heartbeat": {"$lt": cutoff}}).to_list():
        locked = job.get("locked") or {}
        error = {"exception": "WorkerLost", "at": now, "traceback": None,
                 "message": f"worker {locked.get('worker')} stopped renewing the lease at {locked.get('heartbeat')}"}
        try:
            if job.get("killed_at"):
                await transition(db, job, State.KILLED, finished_at=now, locked=None, last_error=error)
            else:
                await _fail(db, job, error, now, retry_at=now)
        except Conflict:
            continue  # another worker reaped it, or its worker came back
        log.warning("reaped job %s of lost worker %s", job["_id"], locked.get("worker"))
        reaped += 1
    return reaped


async def _fail(db: Database, job: dict[str, Any], error: dict[str, Any], now: datetime,
                retry_at: datetime) -> dict[str, Any]:
    """Use one attempt: ``failed`` (retried at ``retry_at``) or, with none left, ``error``."""
    left = job["attempts_left"] - 1
    fields = {"attempts_left": left, "last_error": error, "locked": None}
    if left > 0:
        return await transition(db, job, State.FAILED, query_at=retry_at, **fields)
    return await transition(db, job, State.ERROR, finished_at=now, runtime=_runtime(job, now), **fields)


def _runtime(job: dict[str, Any], now: datetime) -> float | None:
    started = (job.get("locked") or {}).get("at")
    return round((now - started).total_seconds(), 3) if started else None


class Worker:
    """Runs jobs from the queue in child processes; see the module docstring."""

    def __init__(self, db: Database, config: Config, *, classes: dict[str, type[Job]],
                 slots: int = 1, kill_grace: float = 10.0, shutdown_grace: float = 30.0,
                 poll_seconds: float = 1.0) -> None:
        self.db = db
        self.config = config
        self.classes = classes
        self.slots = slots
        self.kill_grace = kill_grace
        self.shutdown_grace = shutdown_grace
        self.poll_seconds = poll_seconds
        self.host = socket.gethostname()
        self.id = f"{self.host}:{os.getpid()}:{secrets.token_hex(2)}"
        self.runs: dict[Any, _Run] = {}
        self._wake = asyncio.Event()
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []

    # -- life cycle ------------------------------------------------------

    async def start(self) -> None:
        """Register, finish interrupted journal moves, and start claiming."""
        now = _now()
        await self.db.worker.replace_one({"_id": self.id}, {
            "_id": self.id, "host": self.host, "pid": os.getpid(), "started": now, "heartbeat": now,
            "slots": self.slots, "running": [], "jobs": sorted(self.classes)}, upsert=True)
        await states.complete_moves(self.db)
        self._tasks = [asyncio.create_task(self._claim_loop(), name="worker-claim"),
                       asyncio.create_task(self._heartbeat_loop(), name="worker-heartbeat")]
        if self.db.change_streams:
            self._tasks.append(asyncio.create_task(self._watch(), name="worker-watch"))
        log.info("worker %s started with %d slots for %d job classes", self.id, self.slots, len(self.classes))

    def hurry(self) -> None:
        """Stop running jobs now instead of waiting for the grace period (they go back to pending)."""
        for run in list(self.runs.values()):
            run.request_stop("shutdown")

    async def stop(self) -> None:
        """Stop claiming; let running jobs finish within ``shutdown_grace`` s; requeue the rest."""
        self._stopping = True
        self._wake.set()
        await asyncio.gather(self._tasks[0], return_exceptions=True)  # the claim loop ends
        pending = [run.task for run in self.runs.values() if run.task]
        if pending:
            log.info("waiting up to %g s for %d running jobs", self.shutdown_grace, len(pending))
            done, still = await asyncio.wait(pending, timeout=self.shutdown_grace)
            self.hurry()
            if still:
                await asyncio.wait(still)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(PyMongoError):
            await self.db.worker.delete_one({"_id": self.id})
        log.info("worker %s stopped", self.id)

    # -- claiming --------------------------------------------------------

    async def _claim_loop(self) -> None:
        while not self._stopping:
            try:
                # Clear before claiming: a wake-up (or stop) that comes while
                # claim() awaits the database must end the wait below at once.
                self._wake.clear()
                if len(self.runs) < self.slots and (job := await self.claim()):
                    self._launch(job)
                    continue
                timeout = await self._next_due_in() if len(self.runs) < self.slots else None
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
            except PyMongoError as exc:  # not only ConnectionFailure: any error must not end claiming
                log.warning("database error while claiming (%s); retrying", exc)
                await asyncio.sleep(self.poll_seconds)

    async def _next_due_in(self) -> float:
        """Seconds until the next waiting job falls due (at most ``poll_seconds`` without change streams)."""
        ceiling = 30.0 if self.db.change_streams else self.poll_seconds
        nxt = await self.db.queue.find_one(
            {"state": {"$in": _WAITING}, "qual_name": {"$in": list(self.classes)}},
            {"query_at": 1}, sort=[("query_at", 1)])
        if nxt is None:
            return ceiling
        return max(0.0, min(ceiling, (nxt["query_at"] - _now()).total_seconds() + 0.01))

    async def claim(self) -> dict[str, Any] | None:
        """Claim the most urgent due job; return it (now ``running``), or None."""
        now = _now()
        candidates = await self.db.queue.find(
            {"state": {"$in": _WAITING}, "query_at": {"$lte": now}, "qual_name": {"$in": list(self.classes)}},
        ).sort([("priority", -1), ("_id", 1)]).limit(self.slots * 2 + 2).to_list()
        for job in candidates:
            locked = {"worker": self.id, "host": self.host, "pid": None, "at": now, "heartbeat": now}
            try:
                return await transition(db=self.db, job=job, to=State.RUNNING, trial=job["trial"] + 1,
                                        locked=locked, started_at=job.get("started_at") or now,
                                        prog={"value": 0.0, "message": None})
            except Conflict:
                continue  # another worker got it first
        return None

    def _launch(self, job: dict[str, Any]) -> None:
        run = _Run(job)
        self.runs[run.id] = run
        run.task = asyncio.create_task(self._run(run), name=f"job-{run.id}")

    # -- running ---------------------------------------------------------

    async def _run(self, run: _Run) -> None:
        job = run.job
        try:
            outcome = await self._execute(run)
            run.ended = True
            await self._finish(run, outcome)
        except Exception:  # noqa: BLE001 - one job's trouble must not stop the worker
            log.exception("worker trouble with job %s", job["_id"])
        finally:
            self.runs.pop(run.id, None)
            self._wake.set()

    async def _execute(self, run: _Run) -> Outcome | None:
        """Run the child to its end or until stopped; None if it was stopped."""
        job = run.job
        writer = logs.LogWriter(self.db, job, start_seq=await logs.last_seq(self.db, job["_id"]),
                                trial=job["trial"])
        writer.start()

        async def on_progress(value: float, message: str | None) -> None:
            await self._touch(run, {"prog": {"value": value, "message": message}})

        process = JobProcess(job, job["trial"], on_log=writer.add, on_progress=on_progress)
        run.process = process
        try:
            try:
                await process.start()
            except OSError as exc:
                return Outcome("error", exception=type(exc).__name__,
                               message=f"cannot start the job process: {exc}")
            await self._touch(run, {"locked.pid": process.pid})
            waiter = asyncio.create_task(process.wait())
            stopper = asyncio.create_task(run.stop.wait())
            wall_time = job.get("wall_time")
            done, _ = await asyncio.wait({waiter, stopper}, timeout=wall_time,
                                         return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if waiter in done:
                return waiter.result()
            if not done:
                run.request_stop("wall_time")
            await process.kill(self.kill_grace)
            await waiter
            return None
        finally:
            await writer.close()

    async def _touch(self, run: _Run, fields: dict[str, Any], *, unless_killed: bool = False) -> bool:
        """Write fields of a job this worker runs (not its state).

        False if it is no longer ours (or, with ``unless_killed``, was asked to die).
        """
        condition: dict[str, Any] = {"_id": run.id, "state": State.RUNNING.value, "locked.worker": self.id}
        if unless_killed:
            condition["killed_at"] = None
        changed = await self.db.queue.update_one(condition, {"$set": fields, "$inc": {"version": 1}})
        return bool(changed.modified_count)

    async def _finish(self, run: _Run, outcome: Outcome | None) -> None:
        """Write the job's end: one transition, re-read and retried if something else wrote meanwhile."""
        for _ in range(20):
            job = await self.db.queue.find_one({"_id": run.id})
            if job is None or job["state"] != State.RUNNING.value or (job.get("locked") or {}).get("worker") != self.id:
                log.warning("job %s is no longer ours (%s); dropping its outcome", run.id,
                            job and job["state"])
                return
            try:
                await self._conclude(job, run, outcome)
                return
            except Conflict:
                continue
        log.error("could not record the end of job %s: it kept changing", run.id)

    async def _conclude(self, job: dict[str, Any], run: _Run, outcome: Outcome | None) -> None:
        now = _now()
        runtime = _runtime(job, now)
        ended = {"finished_at": now, "runtime": runtime, "locked": None}
        if job.get("killed_at") or run.reason in ("kill", "wall_time"):
            error = None
            if run.reason == "wall_time":
                error = {"exception": "WallTimeExceeded", "at": now, "traceback": None,
                         "message": f"the job ran longer than its wall_time of {job['wall_time']:g} s"}
            await transition(self.db, job, State.KILLED, killed_at=job.get("killed_at") or now,
                             last_error=error or job.get("last_error"), **ended)
        elif outcome is None:  # shutdown: back to the queue without using an attempt
            await transition(self.db, job, State.PENDING, locked=None, query_at=now)
        elif outcome.kind == "result":
            await transition(self.db, job, State.COMPLETE, result=outcome.value,
                             prog={"value": 1.0, "message": job["prog"].get("message")}, **ended)
        elif outcome.kind == "defer":
            since_first = (now - job["started_at"]).total_seconds()
            error = {"exception": "Deferred", "message": outcome.message, "traceback": None, "at": now}
            if since_first >= job["defer_max"]:
                error["message"] = f"deferred for {since_first:.0f} s, past defer_max: {outcome.message}"
                await transition(self.db, job, State.INACTIVE, last_error=error, **ended)
            else:
                await transition(self.db, job, State.DEFERRED, locked=None, last_error=error,
                                 query_at=now + timedelta(seconds=job["defer_time"]))
        else:
            error = {"exception": outcome.exception, "message": outcome.message,
                     "traceback": outcome.traceback, "at": now}
            await _fail(self.db, job, error, now, retry_at=now + timedelta(seconds=job["error_time"]))

    # -- heartbeat, leases, reaping --------------------------------------

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.heartbeat_seconds)
            try:
                await self.heartbeat()
            except PyMongoError as exc:
                log.warning("heartbeat failed (%s); retrying", exc)

    async def heartbeat(self) -> None:
        """Renew leases and the worker's heartbeat; notice kills and lost leases; reap dead workers' jobs."""
        now = _now()
        for run in list(self.runs.values()):
            if run.process is None or run.stop.is_set() or run.ended:
                continue
            if not await self._touch(run, {"locked.heartbeat": now}, unless_killed=True):
                await self._check(run)
        await self.db.worker.update_one({"_id": self.id}, {"$set": {
            "heartbeat": now, "running": [str(i) for i in self.runs]}})
        if await reap_expired(self.db, self.config.lease_seconds, now=now):
            self._wake.set()
        await states.complete_moves(self.db)

    async def _check(self, run: _Run) -> None:
        """A job's lease could not be renewed: it was asked to die, or is no longer ours."""
        job = await self.db.queue.find_one({"_id": run.id})
        if job is not None and job.get("killed_at") and (job.get("locked") or {}).get("worker") == self.id:
            run.request_stop("kill")
        elif job is None or (job.get("locked") or {}).get("worker") != self.id:
            log.warning("lost the lease of job %s; stopping it", run.id)
            run.request_stop("lost")

    async def _watch(self) -> None:
        """Wake the claim loop on new or due jobs; stop jobs asked to die, at once."""
        pipeline = [{"$match": {"operationType": {"$in": ["insert", "update", "replace"]}}}]
        while True:
            try:
                async with await self.db.queue.watch(pipeline, full_document="updateLookup") as stream:
                    # Jobs enqueued before the stream was open sent no event:
                    # scan once now that no later one can be missed.
                    self._wake.set()
                    async for change in stream:
                        job = change.get("fullDocument") or {}
                        run = self.runs.get(job.get("_id"))
                        if run is not None and job.get("killed_at"):
                            run.request_stop("kill")
                        elif job.get("state") in _WAITING:
                            self._wake.set()
            except asyncio.CancelledError:
                raise
            except PyMongoError as exc:
                log.warning("queue change stream failed (%s); reopening", exc)
                self._wake.set()
                await asyncio.sleep(self.poll_seconds)
