"""Built-in jobs for demos and tests."""
from __future__ import annotations

import os
import signal
import sys
import time

from jobs import Job

__all__ = ["DummyJob", "FailJob", "DeferJob", "ChattyJob", "StubbornJob", "NoopJob"]


class DummyJob(Job):
    """Sleeps for a while, logging and reporting progress as it goes."""

    author = "jobdeck"

    def execute(self, sleep: float = 3, loop_time: float = 0.5, message: str = "dummy") -> dict:
        self.logger.info("%s: sleeping %g s in steps of %g s", message, sleep, loop_time)
        started = time.monotonic()
        steps = 0
        while (elapsed := time.monotonic() - started) < sleep:
            self.progress(min(elapsed / sleep, 1.0), "%s: %.1f of %g s", message, elapsed, sleep)
            self.logger.info("%s: step %d at %.1f s", message, steps, elapsed)
            time.sleep(max(0.0, min(loop_time, sleep - elapsed)))
            steps += 1
        self.progress(1.0, "%s: done", message)
        return {"slept": sleep, "steps": steps}


class FailJob(Job):
    """Raises an exception (after logging a line), to show failures and retries."""

    author = "jobdeck"

    def execute(self, message: str = "this job fails on purpose") -> None:
        self.logger.info("about to fail (trial %d)", self.trial)
        raise RuntimeError(message)


class DeferJob(Job):
    """Defers until its trial number reaches ``until``, then completes."""

    author = "jobdeck"
    defer_time = 1.0

    def execute(self, until: int = 3) -> dict:
        if self.trial < until:
            self.defer(f"trial {self.trial} of {until}: not yet")
        return {"trials": self.trial}


class ChattyJob(Job):
    """Prints and logs many lines fast (log throughput and ordering)."""

    author = "jobdeck"

    def execute(self, lines: int = 1000) -> dict:
        for number in range(1, lines + 1):
            if number % 2:
                print(f"line {number}")
            else:
                self.logger.info("line %d", number)
        return {"lines": lines}


class StubbornJob(Job):
    """Ignores SIGTERM (and starts a child that does too), so only SIGKILL ends it."""

    author = "jobdeck"

    def execute(self, sleep: float = 3600) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        child = os.fork()
        if child == 0:  # a grandchild in the same process group, also stubborn
            time.sleep(sleep)
            os._exit(0)
        print(f"ignoring SIGTERM; child pid {child}", file=sys.stderr)
        time.sleep(sleep)


class NoopJob(Job):
    """Does nothing and returns at once (to measure the engine's own cost)."""

    author = "jobdeck"

    def execute(self) -> None:
        return None
