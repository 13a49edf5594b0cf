"""One run of a claimed job: start its process, relay what it reports, stop it on request, write its end.

Nothing that goes wrong with the database ends the supervision of a run:

- progress is coalesced (the latest report wins) and written by one writer,
  retried until the database takes it;
- log records stay buffered (bounded, slowing the job down when full) and are
  retried (``core.logs.LogWriter``);
- the outcome is retried until it is written, or until the worker gives up at
  the end of its shutdown (``abandon``); then the lease expires and the job
  is reaped like one of a dead worker.

Every write is fenced by the run's claim token (``core.lease.fence``): once the
job was reaped or claimed again, a write changes nothing and the run learns it
is stale (``reason == "lost"``): it stops its process and writes nothing more.

How it ends: the outcome the job reported wins, also over a kill that came in
after it (the work is done); otherwise a kill or ``wall_time`` ends it
``killed``, a worker shutdown puts it back to ``pending`` without using an
attempt, and a process that ended without a word is an error of the job.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Awaitable, Callable, TypeVar

from pymongo.errors import PyMongoError

from core import logs
from core.errors import Conflict
from core.lease import fail, fence
from core.process import JobProcess, Outcome
from core.states import State, transition

if TYPE_CHECKING:
    from core.db import Database

__all__ = ["Run"]

log = logging.getLogger(__name__)

T = TypeVar("T")
_MAX_DELAY = 5.0


class _Abandoned(Exception):
    """The worker stopped waiting for the database (shutdown deadline)."""


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Run:
    """One claimed job from launch to its written end; ``await run.run()``."""

    def __init__(self, db: Database, job: dict[str, Any], *, kill_grace: float,
                 start: Callable[..., JobProcess] = JobProcess, on_exit: Callable[[], None] | None = None) -> None:
        self.db = db
        self.job = job
        self.id = job["_id"]
        self.token: str = job["locked"]["token"]
        self.kill_grace = kill_grace
        self._start = start
        self.stop = asyncio.Event()      # set: end the process now
        self.reason: str | None = None   # "kill", "wall_time", "lost", "shutdown"
        self.abandon = asyncio.Event()   # set: stop retrying writes
        self.pid: int | None = None
        self._pid_written = False
        self.task: asyncio.Task[None] | None = None
        self._progress: dict[str, Any] | None = None
        self._progress_wanted = asyncio.Event()
        self._progress_closed = False
        self._message: str | None = None  # the last progress message, kept in the journal
        self.writer: logs.LogWriter | None = None
        #: Whether the job's process has ended (or never started): its slot is free.
        self.exited = False
        self._on_exit = on_exit

    # -- what the worker's other parts call ------------------------------

    def request_stop(self, reason: str) -> None:
        """End the process (``kill``, ``wall_time``, ``shutdown``; ``lost``: the claim is gone)."""
        if self.reason is None or reason == "lost":
            self.reason = reason
        self.stop.set()

    def pid_unwritten(self) -> int | None:
        """The process id, while it is not in the job document yet (the next lease renewal writes it)."""
        return None if self._pid_written else self.pid

    def pid_written(self) -> None:
        """The lease renewal wrote the pid."""
        if self.pid is not None:
            self._pid_written = True

    # -- the run -----------------------------------------------------------

    async def run(self) -> None:
        """Run the job's process to its end and write the outcome; never raises but on cancellation."""
        try:
            outcome = await self._execute()
        except _Abandoned:
            return
        except Exception:  # noqa: BLE001 - a bug here must still end the job
            log.exception("supervising job %s failed", self.id)
            outcome = Outcome("error", exception="WorkerError",
                              message="the worker failed while supervising the job; see its log")
        if self.reason == "lost":
            log.warning("job %s is no longer ours (reaped or claimed again); its outcome is dropped", self.id)
            return
        try:
            await self._finish(outcome)
        except _Abandoned:
            log.error("could not write the end of job %s before shutdown; its lease will expire", self.id)

    async def _execute(self) -> Outcome | None:
        """The process's outcome, or None when it was stopped before it reported one."""
        job = self.job
        # A first trial has no records yet; a later one may follow a run that
        # died before it wrote log_seq. log_seq survives the records' TTL: a
        # new trial never reuses a seq a follower saw.
        stored = 0 if job["trial"] == 1 else await self._retrying(
            "read the last log seq", lambda: logs.last_seq(self.db, self.id))
        writer = logs.LogWriter(self.db, job, start_seq=max(stored, job.get("log_seq") or 0), trial=job["trial"],
                                on_lost=lambda: self.request_stop("lost"))
        self.writer = writer
        writer.start()
        progress = asyncio.create_task(self._write_progress(), name=f"progress-{self.id}")
        process = self._start(job, job["trial"], on_log=writer.add, on_progress=self._on_progress)
        try:
            try:
                await process.start()
            except OSError as exc:
                return Outcome("error", exception=type(exc).__name__, message=f"cannot start the job process: {exc}")
            self.pid = process.pid
            return await self._supervise(process)
        finally:
            self.exited = True
            if self._on_exit is not None:
                self._on_exit()
            # Not cancelled: the driver may swallow a cancellation in the middle of a write.
            self._progress_closed = True
            self._progress_wanted.set()
            await progress
            giving_up = asyncio.create_task(self._give_up_when_abandoned(writer))
            await writer.close()
            giving_up.cancel()

    async def _give_up_when_abandoned(self, writer: logs.LogWriter) -> None:
        await self.abandon.wait()
        writer.give_up()

    async def _supervise(self, process: JobProcess) -> Outcome | None:
        waiter = asyncio.create_task(process.wait(), name=f"wait-{self.id}")
        stopper = asyncio.create_task(self.stop.wait())
        try:
            done, _ = await asyncio.wait({waiter, stopper}, timeout=self.job.get("wall_time"),
                                         return_when=asyncio.FIRST_COMPLETED)
            if waiter in done:
                return waiter.result()
            if not done:
                self.request_stop("wall_time")
            await process.kill(self.kill_grace)
            await waiter
            return process.reported  # the work may have been done before the stop came
        finally:
            stopper.cancel()
            if not waiter.done():  # cancelled from outside: the process must not outlive the run
                await process.kill(0)
                waiter.cancel()

    # -- progress ----------------------------------------------------------

    async def _on_progress(self, value: float, message: str | None) -> None:
        self._progress = {"value": value, "message": message}
        self._message = message
        self._progress_wanted.set()

    async def _write_progress(self) -> None:
        """Write progress as it comes; once the process has ended, the last report, then stop."""
        while not self._progress_closed:
            await self._progress_wanted.wait()
            self._progress_wanted.clear()
            await self._flush_progress()

    async def _flush_progress(self) -> None:
        """Write the latest progress, retried until the database takes it (a newer one replaces it)."""
        delay = 0.1
        while self._progress is not None and self.reason != "lost":
            progress = self._progress
            pid = self.pid_unwritten()  # with the first progress, if no lease renewal wrote it yet
            fields = {"prog": progress} if pid is None else {"prog": progress, "locked.pid": pid}
            try:
                result = await self.db.queue.update_one(fence(self.id, self.token),
                                                        {"$set": fields, "$inc": {"version": 1}})
            except PyMongoError as exc:
                log.info("progress of job %s not written (%s); retrying", self.id, exc)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.abandon.wait(), delay)  # the worker gives up: so do we
                if self.abandon.is_set():
                    return
                delay = min(delay * 2, _MAX_DELAY)
                continue
            if not result.matched_count:
                self.request_stop("lost")
                return
            if pid is not None:
                self.pid_written()
            if self._progress is progress:
                self._progress = None

    # -- the end -----------------------------------------------------------

    async def _retrying(self, what: str, operation: Callable[[], Awaitable[T]]) -> T:
        """``await operation()`` until the database answers; ``_Abandoned`` once the worker gives up."""
        delay = 0.1
        while True:
            try:
                return await operation()
            except PyMongoError as exc:
                if self.abandon.is_set():
                    raise _Abandoned from None
                log.warning("could not %s of job %s (%s); retrying in %.1f s", what, self.id, exc, delay)
            try:
                await asyncio.wait_for(self.abandon.wait(), delay)
                raise _Abandoned
            except asyncio.TimeoutError:
                delay = min(delay * 2, _MAX_DELAY)

    async def _finish(self, outcome: Outcome | None) -> None:
        """Write the job's end: one transition fenced by the claim token, retried until it is in.

        With an outcome the job is not read first: what the end depends on
        was known at the claim. Without one (a kill, wall_time, a shutdown)
        it is read, for a kill asked for meanwhile.
        """
        job = self.job if outcome is not None else await self._read()
        while job is not None:
            try:
                await self._retrying("write the end", lambda: self._conclude(job, outcome))
                return
            except Conflict:
                job = await self._read()  # still ours (it cannot be, but then as it is now), or not

    async def _read(self) -> dict[str, Any] | None:
        """The job as stored, while it is still this run's; None (said in the log) once it is not."""
        job = await self._retrying("read", lambda: self.db.majority(self.db.queue).find_one({"_id": self.id}))
        if job is not None and job["state"] == State.RUNNING.value and \
                (job.get("locked") or {}).get("token") == self.token:
            return job
        if job is None and await self._retrying("read", lambda: self.db.journal.find_one(
                {"_id": self.id, "trial": self.job["trial"]}, {"_id": 1})):
            return None  # our own final transition, whose reply was lost
        log.warning("job %s no longer runs under this claim (it is %s): nothing more to write", self.id,
                    job["state"] if job else "gone")
        return None

    async def _conclude(self, job: dict[str, Any], outcome: Outcome | None) -> None:
        now = _now()
        started = (job.get("locked") or {}).get("at")
        runtime = round((now - started).total_seconds(), 3) if started else None
        seq = {"log_seq": self.writer.seq if self.writer else job.get("log_seq", 0)}
        ended = {"finished_at": now, "runtime": runtime, "locked": None, **seq}
        fence = {"locked.token": self.token}
        if outcome is None and (job.get("killed_at") or self.reason in ("kill", "wall_time")):
            error = job.get("last_error")
            if self.reason == "wall_time":
                error = {"exception": "WallTimeExceeded", "at": now, "traceback": None,
                         "message": f"the job ran longer than its wall_time of {job['wall_time']:g} s"}
            await transition(self.db, job, State.KILLED, fence=fence, killed_at=job.get("killed_at") or now,
                             last_error=error, **ended)
        elif outcome is None:  # shutdown: back to the queue without using an attempt
            await transition(self.db, job, State.PENDING, fence=fence, locked=None, query_at=now, **seq)
        elif outcome.kind == "result":
            await transition(self.db, job, State.COMPLETE, fence=fence, result=outcome.value,
                             prog={"value": 1.0, "message": self._message}, **ended)
        elif outcome.kind == "defer":
            since_first = (now - job["started_at"]).total_seconds()
            error = {"exception": "Deferred", "message": outcome.message, "traceback": None, "at": now}
            if since_first >= job["defer_max"]:
                error["message"] = f"deferred for {since_first:.0f} s, past defer_max: {outcome.message}"
                await transition(self.db, job, State.INACTIVE, fence=fence, last_error=error, **ended)
            else:
                await transition(self.db, job, State.DEFERRED, fence=fence, locked=None, last_error=error,
                                 query_at=now + timedelta(seconds=job["defer_time"]), **seq)
        else:
            error = {"exception": outcome.exception, "message": outcome.message,
                     "traceback": outcome.traceback, "at": now}
            await fail(self.db, job, error, now, retry_at=now + timedelta(seconds=job["error_time"]), fence=fence,
                       **seq)
