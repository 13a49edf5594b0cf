"""The child process that runs one job: ``python -m core.runner``.

Protocol with the worker (``core.process``):

- stdin: one JSON line ``{"job_id", "qual_name", "args", "trial"}``; then it
  stays open. End of file means the worker is gone: the child kills its whole
  process group, so a job never outlives its worker.
- stdout: newline-delimited JSON messages, in order: ``log`` records,
  ``progress`` reports, and one final ``result``, ``defer`` or ``error``.
  ``print`` and ``sys.stdout``/``sys.stderr`` writes become ``log`` records on
  this same channel, so they keep their order with ``self.logger``'s.
- stderr: anything written to file descriptors 1 or 2 directly (C code,
  subprocesses); the worker logs it line by line.

The worker validated the qual_name against its registry before starting this
process; the import below is of a registered job class only.
"""
from __future__ import annotations

import asyncio
import importlib
import inspect
import io
import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
from typing import Any, TextIO

from core.job import RESULT_MAX_BYTES, Deferred, Job

__all__ = ["main", "Channel"]

MAX_MESSAGE = 64 * 1024  # characters of one log message; longer ones are cut


class Channel:
    """Thread-safe writer of JSON messages to the worker."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.lock = threading.Lock()

    def send(self, message: dict[str, Any]) -> None:
        line = json.dumps(message, default=str, ensure_ascii=False)
        with self.lock:
            self.stream.write(line + "\n")
            self.stream.flush()

    def log(self, level: str, message: str, exception: str | None = None, stream: str | None = None) -> None:
        if len(message) > MAX_MESSAGE:
            message = message[:MAX_MESSAGE] + f" ... [cut, {len(message)} characters]"
        record: dict[str, Any] = {"t": "log", "level": level, "message": message, "at": time.time()}
        if exception:
            record["exception"] = exception
        if stream:
            record["stream"] = stream
        self.send(record)


class _LineWriter(io.TextIOBase):
    """A text stream that turns each written line into a log record."""

    def __init__(self, channel: Channel, level: str, stream: str) -> None:
        self.channel, self.level, self.stream_name = channel, level, stream
        self.buffer_text = ""
        self.lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self.lock:
            self.buffer_text += text
            *lines, self.buffer_text = self.buffer_text.split("\n")
        for line in lines:
            self.channel.log(self.level, line, stream=self.stream_name)
        return len(text)

    def flush(self) -> None:
        with self.lock:
            rest, self.buffer_text = self.buffer_text, ""
        if rest:
            self.channel.log(self.level, rest, stream=self.stream_name)


class _LogHandler(logging.Handler):
    def __init__(self, channel: Channel) -> None:
        super().__init__(logging.DEBUG)
        self.channel = channel

    def emit(self, record: logging.LogRecord) -> None:
        try:
            exception = None
            if record.exc_info:
                exception = "".join(traceback.format_exception(*record.exc_info))
            self.channel.log(record.levelname, record.getMessage(), exception=exception)
        except Exception:  # noqa: BLE001 - logging must never break the job
            self.handleError(record)


def _die_with_worker() -> None:
    """Wait for stdin to close (the worker died or gave up on us); kill our process group.

    Only when this process leads its group (the worker starts it so): run any
    other way, it must not take its caller's group down with it.
    """
    while sys.stdin.buffer.read(65536):
        pass
    if os.getpgrp() == os.getpid():
        os.killpg(os.getpgrp(), signal.SIGKILL)
    os._exit(1)


def _load(qual_name: str) -> type[Job]:
    module_name, _, class_name = qual_name.rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Job)):
        raise TypeError(f"{qual_name} is not a job class")
    return cls


def _outcome(job: Job, args: dict[str, Any]) -> dict[str, Any]:
    try:
        result = job.execute(**args)
        if inspect.isawaitable(result):
            result = asyncio.run(result)  # type: ignore[arg-type]
        try:
            text = json.dumps(result, allow_nan=False)
        except ValueError:  # NaN or Infinity: stored, they would make every reply invalid JSON
            raise ValueError("the job's result is not JSON: it holds NaN or Infinity, which JSON cannot "
                             "carry; return None or a string instead") from None
        if len(text) > RESULT_MAX_BYTES:
            raise ValueError(f"the job's result has {len(text)} bytes; the limit is {RESULT_MAX_BYTES}")
        return {"t": "result", "value": result}
    except Deferred as deferred:
        return {"t": "defer", "message": str(deferred)}
    except BaseException as exc:  # noqa: BLE001 - any failure of the job is reported
        if isinstance(exc, TypeError) and "is not JSON serializable" in str(exc):
            exc = TypeError(f"the job's result is not JSON: {exc}")
        return {"t": "error", "exception": type(exc).__name__, "message": str(exc),
                "traceback": "".join(traceback.format_exception(exc))}


def main() -> None:
    """Run the job described on stdin and report to the worker."""
    spec = json.loads(sys.stdin.readline())
    channel = Channel(os.fdopen(os.dup(1), "w", encoding="utf-8"))
    os.dup2(2, 1)  # raw writes to fd 1 join fd 2, which the worker logs line by line
    threading.Thread(target=_die_with_worker, daemon=True, name="die-with-worker").start()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    sys.stdout = _LineWriter(channel, "INFO", "stdout")
    sys.stderr = _LineWriter(channel, "WARNING", "stderr")
    root = logging.getLogger()
    root.handlers[:] = [_LogHandler(channel)]
    root.setLevel(logging.INFO)
    try:
        cls = _load(spec["qual_name"])
        job = cls(job_id=spec["job_id"], trial=spec["trial"])
        job.logger.setLevel(logging.DEBUG)
        job._emit = channel.send
    except BaseException as exc:  # noqa: BLE001
        channel.send({"t": "error", "exception": type(exc).__name__, "message": str(exc),
                      "traceback": "".join(traceback.format_exception(exc))})
        return
    outcome = _outcome(job, spec["args"])
    job.flush_progress()
    sys.stdout.flush()
    sys.stderr.flush()
    channel.send(outcome)


if __name__ == "__main__":
    main()
    # No interpreter shutdown: the watcher thread blocks on stdin, and the
    # job's own leftovers are the worker's to clean up (it kills the group).
    logging.shutdown()
    os._exit(0)
