"""The worker: starts and stops its parts, and keeps at most ``slots`` runs going.

One ``Worker`` per process::

    worker = Worker(db, config, classes=classes, slots=2)
    await worker.start()
    ...
    await worker.stop()          # SIGTERM: finish within the grace period, requeue the rest

Its parts, each in a module of its own:

- **claiming** (``core.claim``): the most urgent due jobs of the classes this
  worker found, several at once when several slots are free, each by
  compare-and-set; the queue's change stream wakes the claim loop at once, a
  timer for the next retry that falls due, a scan every ``poll_seconds``
  without change streams;
- **running** (``core.run``): one ``Run`` per claimed job, which supervises its
  child process and writes its end, and which no database error ends;
- **leases** (``core.lease``): renewals fenced by each run's claim token, the
  worker's heartbeat, and reaping the jobs (and registry offers) of dead
  workers;
- **offering** (``core.registry``): at start the worker offers its job classes
  in the registry, after writing its ``worker`` document (whose heartbeat says
  it is alive), and withdraws the offer when it stops. A failed write is
  retried every half second: ``start`` waits for it at most a lease, then it
  goes on in the background; the withdrawal gets ``_WITHDRAW_SECONDS``, after
  which the offer is left to expire with the worker's heartbeat;
- **retention** (``core.retention``): with ``journal_retention_days`` set, a
  sweep every ten minutes removes older finished jobs and their log records;
- **starting processes** (``core.forkserver``): with ``job_start = "fork"``
  (the default) a launcher process that imported the job modules once forks
  each job's process; with ``"spawn"``, or where fork is unavailable, each job
  starts a fresh ``python -m core.runner``.

The claim loop is supervised: an error in it is logged and the loop goes on,
so a worker never looks alive while it claims nothing.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import secrets
import socket
from typing import TYPE_CHECKING, Any

from pymongo.errors import PyMongoError

from core import claim as claiming
from core import counts, flow, forkserver, registry, states
from core.lease import Leases, reap_expired
from core.process import JobProcess
from core.retention import Sweeper
from core.run import Run

if TYPE_CHECKING:
    from core.config import Config
    from core.db import Database
    from core.job import Job

__all__ = ["Worker", "reap_expired"]

log = logging.getLogger(__name__)

#: Seconds the end of runs may take to be written after a shutdown, beyond the kill grace.
_WRITE_GRACE = 10.0
#: Seconds between attempts to write the worker's registry offer.
_RETRY_SECONDS = 0.5
#: Least seconds between claims while due jobs wait for a concurrency slot (its release wakes the worker).
_BLOCKED_SECONDS = 5.0
#: Seconds a stopping worker tries to withdraw its offer (it runs while the runs end).
_WITHDRAW_SECONDS = 5.0


class Worker:
    """Runs jobs from the queue in child processes; see the module docstring."""

    def __init__(self, db: Database, config: Config, *, classes: dict[str, type[Job]],
                 slots: int = 1, kill_grace: float = 10.0, shutdown_grace: float = 30.0,
                 poll_seconds: float = 1.0, import_errors: list[dict[str, str]] | None = None) -> None:
        """``import_errors``: the job modules ``registry.discover`` could not import (kept in the
        worker's document)."""
        self.db = db
        self.config = config
        self.classes = classes
        self.slots = slots
        self.kill_grace = kill_grace
        self.shutdown_grace = shutdown_grace
        self.poll_seconds = poll_seconds
        self.host = socket.gethostname()
        self.id = f"{self.host}:{os.getpid()}:{secrets.token_hex(2)}"
        self.import_errors = list(import_errors or [])
        self.provider = registry.Provider(self.id, "worker", self.host)
        self._offering: asyncio.Task[None] | None = None
        self.runs: dict[Any, Run] = {}
        self._wake = asyncio.Event()
        self._stopping = False
        self._claimer: asyncio.Task[None] | None = None
        self.tags = list(config.worker_tags)
        self.pool = (config.worker_pool, config.max_running) if config.max_running else None
        self.claimer = claiming.Claimer(db, worker=self.id, host=self.host, classes=classes, tags=self.tags,
                                        pool=self.pool)
        #: Held while claiming: a change of what is paused is acknowledged once no claim by the old one runs.
        self._claiming = asyncio.Lock()
        self._flow_task: asyncio.Task[None] | None = None
        self._flow_again = False
        self._acknowledged = -1  # the flow version acknowledged last
        self.leases = Leases(db, worker_id=self.id, lease_seconds=config.lease_seconds,
                             heartbeat_seconds=config.heartbeat_seconds, runs=lambda: self.runs.values(),
                             on_reaped=self._queue_changed, on_reconnected=self._offer_again)
        self.watcher = claiming.QueueWatcher(db, wake=self._queue_changed, killed=self._killed,
                                             reopened=self._reopened, inserted=self._job_inserted,
                                             freed=self._slot_freed, flow_changed=self._flow_changed,
                                             retry_seconds=poll_seconds)
        self.sweeper = Sweeper(db, retention_days=config.journal_retention_days)
        self.folder = counts.Folder(db)
        self._checks: set[asyncio.Task[None]] = set()
        #: The fork server, while jobs are started by fork (None: spawned).
        self.launcher: forkserver.ForkServer | None = None

    # -- life cycle ------------------------------------------------------

    async def start(self) -> None:
        """Register, offer the job classes, finish interrupted journal moves, and start claiming."""
        paused = await flow.read(self.db)
        self.claimer.set_flow(paused)
        self._acknowledged = paused.version
        await self.db.worker.update_one({"_id": self.id}, [{"$set": {
            "flow_version": paused.version,
            "_id": self.id, "host": self.host, "pid": os.getpid(), "started": "$$NOW", "heartbeat": "$$NOW",
            "slots": self.slots, "running": [], "jobs": sorted(self.classes), "tags": self.tags,
            "pool": self.config.worker_pool, "max_running": self.config.max_running,
            "import_errors": {"$literal": self.import_errors},
            "sessions": {"$literal": list(self.db.sessions.values())}}}], upsert=True)
        self.db.publish_sessions = self._publish_sessions
        self._offer_again()
        offering = self._offering
        await asyncio.wait({offering}, timeout=self.config.lease_seconds)
        if offering.done():
            offering.result()  # a bug shows at start, not as a task nobody awaited
        await states.complete_moves(self.db)
        await self._start_launcher()
        # Without change streams nothing tells the ready list of new jobs: it is read every poll.
        self.claimer.max_age = 30.0 if self.db.change_streams else self.poll_seconds
        self._claimer = asyncio.create_task(self._claim_loop(), name="worker-claim")
        self.leases.start()
        self.sweeper.start()
        self.folder.start()
        if self.db.change_streams:
            self.watcher.start()
        log.info("worker %s started with %d slots for %d job classes, jobs started by %s", self.id, self.slots,
                 len(self.classes), "fork" if self.launcher else "spawn")

    async def _start_launcher(self) -> None:
        if self.config.job_start != "fork":
            return
        if not forkserver.is_available():
            log.warning("job_start is fork, but this platform cannot run the fork server; jobs are spawned")
            return
        launcher = forkserver.ForkServer([cls.__module__ for cls in self.classes.values()])
        try:
            await launcher.start()
        except OSError as exc:
            log.error("cannot start the job launcher (%s); jobs are spawned instead", exc)
            await launcher.stop()
            return
        self.launcher = launcher

    def hurry(self) -> None:
        """Stop running jobs now instead of waiting for the grace period (they go back to pending)."""
        for run in list(self.runs.values()):
            run.request_stop("shutdown")

    async def stop(self) -> None:
        """Stop claiming; let running jobs finish within ``shutdown_grace`` s; requeue the rest.

        Ends within ``shutdown_grace + kill_grace + 10`` s even when the
        database is gone: runs whose end cannot be written by then are left
        to their leases (they are reaped and run again).
        """
        self._stopping = True
        self._wake.set()
        # Runs while the runs end: a stopping worker takes on no job, so none should wait for it.
        withdrawing = asyncio.create_task(self._withdraw(), name=f"withdraw-{self.id}")
        if self._claimer is not None:
            await asyncio.gather(self._claimer, return_exceptions=True)
        pending = [run.task for run in self.runs.values() if run.task]
        if pending:
            log.info("waiting up to %g s for %d running jobs", self.shutdown_grace, len(pending))
            _, still = await asyncio.wait(pending, timeout=self.shutdown_grace)
            self.hurry()
            if still:
                _, still = await asyncio.wait(still, timeout=self.kill_grace + _WRITE_GRACE)
            for run in list(self.runs.values()):
                run.abandon.set()
            if still:
                await asyncio.wait(still)
        await self.watcher.stop()
        await self.leases.stop()
        await self.sweeper.stop()
        await self.folder.stop()
        for task in [*self._checks, *([self._flow_task] if self._flow_task else [])]:
            task.cancel()
        if self.launcher is not None:
            await self.launcher.stop()
        await withdrawing
        with contextlib.suppress(PyMongoError):
            await self.db.worker.delete_one({"_id": self.id})
        log.info("worker %s stopped", self.id)

    async def _publish_sessions(self, sessions: list[dict[str, Any]]) -> None:
        """Where the reaper finds them if this process dies in a transaction (see ``Database.session``)."""
        await self.db.worker.update_one({"_id": self.id}, {"$set": {"sessions": sessions}})

    # -- offering ------------------------------------------------------------

    def _offer_again(self) -> None:
        """Write this worker's offer (again) in the background, unless that is under way or it stops."""
        if self._stopping or (self._offering is not None and not self._offering.done()):
            return
        self._offering = asyncio.create_task(self._offer(), name=f"offer-{self.id}")

    async def _offer(self) -> None:
        warned = False
        while not self._stopping:
            try:
                await registry.sync(self.db, self.classes, provider=self.provider)
                if warned:
                    log.info("worker %s offers its %d job classes now", self.id, len(self.classes))
                return
            except PyMongoError as exc:
                if not warned:
                    log.warning("worker %s cannot offer its job classes in the registry (%s); retrying every "
                                "%g s", self.id, exc, _RETRY_SECONDS)
                    warned = True
                await asyncio.sleep(_RETRY_SECONDS)

    async def _withdraw(self) -> None:
        """Withdraw this worker's offer, retried for ``_WITHDRAW_SECONDS``; then leave it to expire."""
        if self._offering is not None:
            self._offering.cancel()
            await asyncio.gather(self._offering, return_exceptions=True)
        error: Exception | None = None
        try:
            async with asyncio.timeout(_WITHDRAW_SECONDS):
                while True:
                    try:
                        await registry.withdraw(self.db, self.id)
                        return
                    except PyMongoError as exc:
                        error = exc
                        await asyncio.sleep(_RETRY_SECONDS)
        except TimeoutError:
            log.warning("worker %s could not withdraw its offer of job classes (%s); it expires with the "
                        "worker's heartbeat within %g s", self.id, error or "timeout", self.config.lease_seconds)

    # -- claiming --------------------------------------------------------

    async def claim(self) -> list[dict[str, Any]]:
        """Claim as many due jobs as there are free slots; return them (now ``running``)."""
        async with self._claiming:
            if not self.db.change_streams:
                self.claimer.set_flow(await flow.read(self.db))  # nothing tells of a pause: read it each time
            return await self.claimer.claim(self.free_slots(), running=self.runs)

    def free_slots(self) -> int:
        """Slots without a job process. A run whose process has ended frees its slot while its end is
        written, so the next job starts meanwhile; at most ``slots`` such runs wait for the database."""
        busy = sum(1 for run in self.runs.values() if not run.exited)
        return max(0, min(self.slots - busy, 2 * self.slots - len(self.runs)))

    def _job_inserted(self, job: dict[str, Any]) -> None:
        self.claimer.offer(job)
        self._wake.set()

    def _slot_freed(self) -> None:
        """A concurrency slot freed: jobs passed over for want of one may be claimed now."""
        if self.claimer.blocked:
            self._queue_changed()

    def _reopened(self) -> None:
        """The change stream (re)opened: kills and pauses that came meanwhile sent no event."""
        self._check_kills()
        self._flow_changed()

    def _flow_changed(self) -> None:
        """What is paused changed: apply and acknowledge it in the background (once more if it changes again)."""
        if self._flow_task is not None and not self._flow_task.done():
            self._flow_again = True
            return
        self._flow_task = asyncio.create_task(self._follow_flow(), name=f"flow-{self.id}")

    async def _follow_flow(self) -> None:
        while True:
            self._flow_again = False
            try:
                await self._apply_flow()
            except PyMongoError as exc:
                log.warning("cannot read what is paused (%s); retrying", exc)
                await asyncio.sleep(self.poll_seconds)
                self._flow_again = True
            if not self._flow_again or self._stopping:
                return

    async def _apply_flow(self) -> None:
        """Read what is paused, claim by it from now on, and acknowledge it (``core.flow``)."""
        paused = await flow.read(self.db)
        async with self._claiming:  # a claim under way by the old one ends first
            self.claimer.set_flow(paused)
        self._wake.set()
        if paused.version != self._acknowledged:
            await flow.acknowledge(self.db, self.id, paused.version)
            self._acknowledged = paused.version

    def _queue_changed(self) -> None:
        """A job came, fell due or was reaped: claim from a fresh scan."""
        self.claimer.invalidate()
        self._wake.set()

    async def _next_due_in(self) -> float:
        """Seconds until the next waiting job falls due (at most ``poll_seconds`` without change streams)."""
        ceiling = 30.0 if self.db.change_streams else self.poll_seconds
        claimable = [name for name in self.classes if not self.claimer.flow.paused(name)]
        seconds = await claiming.next_due_in(self.db, claimable, ceiling, tags=self.tags) if claimable else ceiling
        if self.claimer.blocked:
            # A due job waits for a slot: the slot's release wakes this worker, not a timer (no busy loop).
            seconds = max(seconds, min(ceiling, _BLOCKED_SECONDS))
        if seconds < ceiling:
            self.claimer.due_in(seconds)
        return seconds

    async def _claim_loop(self) -> None:
        while not self._stopping:
            try:
                # Clear before claiming: a wake-up (or stop) that comes while
                # claim() awaits the database must end the wait below at once.
                self._wake.clear()
                if self.free_slots() and (jobs := await self.claim()):
                    for job in jobs:
                        self._launch(job)
                    continue
                timeout = await self._next_due_in() if self.free_slots() else None
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout)
                except asyncio.TimeoutError:
                    self.claimer.invalidate()  # a job fell due (or, without change streams, anything)
            except PyMongoError as exc:  # not only ConnectionFailure: any error must not end claiming
                log.warning("database error while claiming (%s); retrying", exc)
                await asyncio.sleep(self.poll_seconds)
            except Exception:  # noqa: BLE001 - supervised: a bug must not leave a live worker that claims nothing
                log.exception("the claim loop failed; it goes on")
                await asyncio.sleep(self.poll_seconds)

    def _launch(self, job: dict[str, Any]) -> None:
        run = Run(self.db, job, kill_grace=self.kill_grace,
                  start=functools.partial(JobProcess, launcher=self.launcher), on_exit=self._wake.set)
        if self._stopping:
            run.request_stop("shutdown")  # claimed while stopping: straight back to pending
        self.runs[run.id] = run
        run.task = asyncio.create_task(self._run(run), name=f"job-{run.id}")

    async def _run(self, run: Run) -> None:
        try:
            await run.run()
        finally:
            self.runs.pop(run.id, None)
            self._wake.set()

    # -- kills -------------------------------------------------------------

    def _killed(self, job_id: Any) -> None:
        run = self.runs.get(job_id)
        if run is not None:
            run.request_stop("kill")

    def _check_kills(self) -> None:
        """The change stream (re)opened: a kill asked for while it was closed sent no event."""
        if not self.runs:
            return
        task = asyncio.create_task(self._read_kills())
        self._checks.add(task)
        task.add_done_callback(self._checks.discard)

    async def _read_kills(self) -> None:
        with contextlib.suppress(PyMongoError):
            async for job in self.db.queue.find({"_id": {"$in": list(self.runs)}, "killed_at": {"$ne": None}},
                                                {"_id": 1}):
                self._killed(job["_id"])
