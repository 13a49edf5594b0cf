"""Job classes the tests run (found with ``registry.discover(["tests.jobs"])``)."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from jobs import Job
from jobs.example import DummyJob


class NanResultJob(Job):
    """Returns a result JSON cannot carry."""

    def execute(self, value: str = "nan") -> dict:
        return {"ratio": float(value)}


class QuickDummyJob(DummyJob):
    """``DummyJob`` on a clock twenty times as fast: ``{"sleep": 60}`` runs 3 s and reports ``slept: 60``.

    The core4 walkthrough (``tests/test_api_walkthrough.py``) runs with it as written.
    """

    def execute(self, sleep: float = 3, loop_time: float = 0.5, message: str = "dummy") -> dict:
        done = super().execute(sleep / 20, loop_time, message)
        return {**done, "slept": sleep}


# --- the engine (tests/test_process.py) ----------------------------------------------------

class HelperJob(Job):
    """Starts ``sleep`` holding its stdout/stderr (in its own session if told) and returns at once."""

    def execute(self, session: bool = False, seconds: int = 120) -> dict:
        helper = subprocess.Popen(["sleep", str(seconds)], start_new_session=session)
        return {"helper": helper.pid}


class HugeOutputJob(Job):
    """Writes one line of ``size`` bytes without a newline (``fd`` 2, ``stderr``) or raises with it."""

    def execute(self, how: str = "fd", size: int = 9 * 1024 * 1024) -> dict:
        if how == "fd":
            os.write(2, b"x" * size)
        elif how == "stderr":
            sys.stderr.write("y" * size)
        else:
            raise RuntimeError("z" * size)
        return {"how": how}


class ProgressBarJob(Job):
    """Draws a progress bar of ``updates`` updates on sys.stderr, then prints a line.

    ``style`` ``cr``: each update ends with ``\\r``; ``tqdm``: each starts with
    ``\\r`` and is flushed, and a ``\\n`` ends the bar.
    """

    def execute(self, updates: int = 40_000, style: str = "cr") -> dict:
        for done in range(1, updates + 1):
            filled = done * 40 // updates
            bar = f"{done * 100 // updates:3d}%|{'#' * filled}{' ' * (40 - filled)}| {done}/{updates}"
            if style == "cr":
                sys.stderr.write(bar + "\r")
            else:
                sys.stderr.write("\r" + bar)
                sys.stderr.flush()
        if style != "cr":
            sys.stderr.write("\n")
        print("after the bar")
        return {"updates": updates}


class CleanupJob(Job):
    """Sleeps in a ``try``; its ``finally`` logs and writes ``marker`` (which a kill must still run)."""

    def execute(self, marker: str, seconds: float = 60) -> None:
        self.logger.info("cleanup job sleeping")
        try:
            time.sleep(seconds)
        finally:
            self.logger.info("cleanup job cleaning up")
            Path(marker).write_text("cleaned up")


class LingeringJob(Job):
    """Returns its result, then lingers: a logging handler it added takes ``seconds`` to close."""

    def execute(self, seconds: float = 60) -> dict:
        class SlowHandler(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                pass

            def close(self) -> None:
                print("lingering after the result", file=sys.__stderr__, flush=True)
                time.sleep(seconds)
                super().close()

        logging.getLogger("lingering").addHandler(SlowHandler())
        return {"done": True}


class OrderJob(Job):
    """Writes through every path a job's output takes: print, logging, sys.stderr, fd 2, a subprocess."""

    def execute(self) -> None:
        print("one")
        self.logger.info("two")
        sys.stderr.write("three\r\nfour\rfive\n")
        sys.stdout.flush()
        os.write(2, b"raw six\r\nraw seven\rraw eight\n")
        subprocess.run(["echo", "raw nine"], check=True)
        print("ten")


class LogThenDeferJob(Job):
    """Logs a line, then defers until trial ``until``."""

    defer_time = 0.2

    def execute(self, until: int = 2) -> dict:
        self.logger.info("trial %d", self.trial)
        if self.trial < until:
            self.defer(f"trial {self.trial} of {until}: not yet")
        return {"trial": self.trial}


class ProcessFactsJob(Job):
    """Returns what its process looks like: ids, session, open descriptors, modules already imported."""

    def execute(self, module: str = "jobs.example") -> dict:
        return {"pid": os.getpid(), "pgid": os.getpgrp(), "sid": os.getsid(0), "ppid": os.getppid(),
                "fds": sorted(int(fd) for fd in os.listdir("/proc/self/fd")), "imported": module in sys.modules}
