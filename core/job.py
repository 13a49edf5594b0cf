"""The job base class (users import it as ``jobs.Job``).

A job is a class with an ``execute`` method::

    class Report(Job):
        \"\"\"Builds the monthly report.\"\"\"
        author = "ops"
        attempts = 3

        def execute(self, month: str, dry_run: bool = False) -> dict:
            self.progress(0.1, "loading %s", month)
            self.logger.info("rows: %d", 42)
            return {"rows": 42}

Each run happens in a child process of a worker (``core.runner``). The
child sends log records, progress and the outcome to the worker, which
writes them to MongoDB. The class attributes are the defaults of the enqueue
options; the argument schema comes from ``execute``'s signature.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, ClassVar, NoReturn

__all__ = ["Job", "Deferred", "OPTIONS", "RESULT_MAX_BYTES"]

#: Enqueue options a job class sets defaults for, and a caller may override.
OPTIONS = ("attempts", "error_time", "defer_time", "defer_max", "wall_time", "priority", "max_parallel", "requires")
#: Largest JSON result a job may return.
RESULT_MAX_BYTES = 256 * 1024


class Deferred(Exception):
    """Raised by ``Job.defer``: the job asks to be run again later."""


class Job:
    """Base class of jobs: subclass it and implement ``execute(**args)``.

    Class attributes give defaults for the enqueue options:

    ``attempts`` (starts allowed before the job ends ``error``), ``error_time``
    (seconds before a failed job is retried), ``defer_time`` (seconds before a
    deferred job runs again), ``defer_max`` (seconds after the first start
    after which a job that still defers ends ``inactive``), ``wall_time``
    (seconds a run may take before it is killed; None = no limit),
    ``priority`` (higher runs first), ``max_parallel`` (at most this many
    jobs of the class run at once, across every worker; None = no limit),
    ``requires`` (worker tags a worker must all have to run it), ``unique``
    (refuse a second live job with the same arguments), ``tags`` (labels),
    ``author``, ``schedule`` (cron).
    """

    author: ClassVar[str | None] = None
    attempts: ClassVar[int] = 1
    error_time: ClassVar[float] = 60.0
    defer_time: ClassVar[float] = 60.0
    defer_max: ClassVar[float] = 3600.0
    wall_time: ClassVar[float | None] = None
    priority: ClassVar[int] = 0
    max_parallel: ClassVar[int | None] = None
    requires: ClassVar[tuple[str, ...]] = ()
    unique: ClassVar[bool] = False
    tags: ClassVar[tuple[str, ...]] = ()
    schedule: ClassVar[str | None] = None
    #: A job of the class is enqueued at each tick of ``schedule`` (cron, see ``core.schedules``), with
    #: ``schedule_args``, the cron read in the IANA time zone ``schedule_tz``.
    schedule_args: ClassVar[dict[str, Any] | None] = None
    schedule_tz: ClassVar[str] = "UTC"
    #: Progress reports closer together than this (seconds) are coalesced.
    progress_interval: ClassVar[float] = 1.0

    def __init__(self, job_id: str | None = None, trial: int = 1) -> None:
        self.job_id = job_id
        self.trial = trial
        self.logger = logging.getLogger(self.qual_name())
        self._emit: Callable[[dict[str, Any]], None] | None = None
        self._last_progress = float("-inf")
        self._pending_progress: dict[str, Any] | None = None

    @classmethod
    def qual_name(cls) -> str:
        """``module.ClassName``: the name clients enqueue the job by."""
        return f"{cls.__module__}.{cls.__qualname__}"

    def execute(self, **args: Any) -> Any:
        """Do the work; return a JSON-serialisable result (or None)."""
        raise NotImplementedError

    def progress(self, value: float, message: str | None = None, *fmt: Any) -> None:
        """Report progress ``value`` (0..1) with an optional ``%``-formatted message.

        Reports closer together than ``progress_interval`` are coalesced: the
        latest one is sent when the interval has passed or the job ends.
        """
        if not 0 <= value <= 1:
            raise ValueError(f"progress value must be between 0 and 1, got {value!r}")
        text = (message % fmt if fmt else message) if message is not None else None
        self._pending_progress = {"t": "progress", "value": float(value), "message": text}
        now = time.monotonic()
        if value >= 1 or now - self._last_progress >= self.progress_interval:
            self.flush_progress()
            self._last_progress = now

    def flush_progress(self) -> None:
        """Send a coalesced progress report now, if one waits."""
        pending, self._pending_progress = self._pending_progress, None
        if pending is not None and self._emit is not None:
            self._emit(pending)

    def defer(self, message: str = "") -> NoReturn:
        """Stop this run and ask to run again after ``defer_time`` (no attempt is used)."""
        raise Deferred(message)
