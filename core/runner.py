"""The child process that runs one job: ``python -m core.runner``.

Protocol with the worker (``core.process``):

- stdin: one JSON line ``{"job_id", "qual_name", "args", "trial"}``; then it
  stays open. End of file means the worker is gone: the child kills its whole
  process group, so a job never outlives its worker.
- stdout: newline-delimited JSON messages, in order: ``log`` records,
  ``progress`` reports, and one final ``result``, ``defer`` or ``error``.
  ``print`` and ``sys.stdout``/``sys.stderr`` writes become ``log`` records on
  this same channel, so they keep their order with ``self.logger``'s. A line
  ends at ``\\n``, ``\\r\\n`` or a lone ``\\r``; a progress bar's updates
  (redraws, see ``LineSplitter``) closer together than ``REDRAW_INTERVAL``
  are coalesced into the latest (see ``Channel``). No text field of a
  message (``message``, ``exception``, ``traceback``) holds more than
  ``MAX_MESSAGE`` characters: longer ones are cut, with a note of their
  length, so a message (the final one above all) always gets through.
- stderr: anything written to file descriptors 1 or 2 directly (C code,
  subprocesses); the worker logs it line by line.
- SIGTERM raises ``JobKilled`` in the job's main thread, so its ``finally``
  blocks and context managers run while the worker waits out its kill grace;
  the process then dies of SIGTERM without reporting an outcome. Once the job
  has returned, SIGTERM no longer interrupts: its outcome is on its way.

``main`` is the spawn path. ``run`` does the work in a process that is
already running (a fork server's freshly forked child calls it), given the
three descriptors.

The worker validated the qual_name against its registry before starting this
process; the import below is of a registered job class only.
"""
from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import io
import json
import logging
import math
import os
import re
import signal
import sys
import threading
import time
import traceback
from typing import Any, Iterator

from core.job import RESULT_MAX_BYTES, Deferred, Job

__all__ = ["main", "run", "Channel", "JobKilled", "LineSplitter", "cut", "MAX_MESSAGE", "REDRAW_INTERVAL"]

MAX_MESSAGE = 64 * 1024  # characters of one log message (and of an error's message or traceback)
REDRAW_INTERVAL = 1.0     # seconds: a progress bar's updates closer together are coalesced

_LINE_END = re.compile(r"\r\n|\r|\n")
_TEXT_FIELDS = ("message", "exception", "traceback")


def cut(text: str, limit: int = MAX_MESSAGE, length: int | None = None) -> str:
    """``text`` if it has at most ``limit`` characters; else its start and a note of its length, ``limit`` in all.

    ``length`` is the length of the whole text when ``text`` is only its start.
    A cut text is short enough to pass through ``cut`` unchanged.
    """
    length = len(text) if length is None else length
    if length <= limit:
        return text
    note = f" ... [cut, {length} characters]"
    return text[:max(0, limit - len(note))] + note


class LineSplitter:
    """Splits text that arrives in pieces into lines; ``\\n``, ``\\r\\n`` and a lone ``\\r`` end one.

    ``feed`` and ``rest`` give ``(line, is_redraw)`` pairs. A redraw is a
    progress bar's update, which a terminal would overwrite: a line a lone
    ``\\r`` ends, or an unfinished line begun after one that ``rest`` hands
    out (tqdm writes ``"\\r" + bar`` and flushes). A line a lone ``\\r`` ends
    empty is dropped, and so is the line end that finishes a line ``rest``
    already handed out. Lines longer than ``limit`` are ``cut``; only ``limit``
    characters of the line being built are held, however long it grows.

    A line is handed out as soon as its end arrives, to keep its place among
    other streams' lines; so a ``\\r\\n`` split between two pieces ends one
    line, but that line counts as a redraw.
    """

    def __init__(self, limit: int = MAX_MESSAGE) -> None:
        self.limit = limit
        self._parts: list[str] = []
        self._kept = 0                        # characters held in _parts
        self._length = 0                      # characters of the line so far
        self._after_cr = False                # the line began right after a lone "\r"
        self._ended_by_cr: bool | None = None  # the last piece ended with "\r": whether it ended a line handed out
        self._handed_out = False              # the (empty) line continues one that rest() handed out

    def feed(self, text: str) -> list[tuple[str, bool]]:
        """The lines that ``text`` completes, each with whether it is a redraw."""
        lines: list[tuple[str, bool]] = []
        start = 0
        if text and self._ended_by_cr is not None:
            if text[0] == "\n":  # the "\r" was half of a "\r\n"
                if not self._ended_by_cr:
                    lines.append(("", False))
                self._after_cr = False
                start = 1
            self._ended_by_cr = None
        for match in _LINE_END.finditer(text, start):
            self._add(text[start:match.start()])
            start = match.end()
            if match.group() != "\r":
                self._end(lines, lone_cr=False)
            else:
                handed = self._end(lines, lone_cr=True)
                if start == len(text):
                    self._ended_by_cr = handed
        self._add(text[start:])
        return lines

    def rest(self) -> list[tuple[str, bool]]:
        """The unfinished line as a finished one (the writer flushed, or the text ended), if there is one."""
        if not self._length:
            return []
        self._handed_out = True
        return [(self._take(), self._after_cr)]

    def _end(self, lines: list[tuple[str, bool]], *, lone_cr: bool) -> bool:
        """End the line; whether it was handed out."""
        handed = bool(self._length) or not (lone_cr or self._handed_out)
        if handed:
            lines.append((self._take(), lone_cr))
        self._after_cr = lone_cr
        self._handed_out = False
        return handed

    def _add(self, piece: str) -> None:
        if not piece:
            return
        self._handed_out = False
        self._length += len(piece)
        room = self.limit - self._kept
        if room > 0:
            kept = piece[:room]
            self._parts.append(kept)
            self._kept += len(kept)

    def _take(self) -> str:
        line = cut("".join(self._parts), self.limit, self._length)
        self._parts.clear()
        self._kept = self._length = 0
        return line


class JobKilled(BaseException):
    """Raised in the job's main thread when the worker stops it (SIGTERM).

    A ``BaseException``, so that a job's ``except Exception`` does not swallow it.
    """


class _Sigterm:
    """The SIGTERM handler: raises ``JobKilled``, but not inside a write to the channel.

    A message half written would garble the channel, so within ``held()`` (in
    the main thread, where Python runs signal handlers) the exception waits
    until the write is complete.
    """

    def __init__(self) -> None:
        self.main_thread = threading.main_thread().ident
        self.depth = 0
        self.pending = False

    def install(self) -> None:
        self.main_thread = threading.get_ident()
        self.depth, self.pending = 0, False
        signal.signal(signal.SIGTERM, self)

    def __call__(self, signum: int, frame: Any) -> None:
        if self.depth:
            self.pending = True
        else:
            raise JobKilled("the job was stopped (SIGTERM)")

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Hold ``JobKilled`` back until the block is done (in the main thread; elsewhere a no-op)."""
        if threading.get_ident() != self.main_thread:
            yield
            return
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
            if not self.depth and self.pending:
                self.pending = False
                raise JobKilled("the job was stopped (SIGTERM)")


_sigterm = _Sigterm()


class Channel:
    """Thread-safe writer of JSON messages to the worker, one line each, on file descriptor ``fd``.

    Text fields longer than ``MAX_MESSAGE`` are cut. Text that is not valid
    Unicode (lone surrogates) is replaced, never refused.

    Redraws (``redraw``) of a stream closer together than ``redraw_interval``
    seconds are coalesced: the latest waits, and goes out when the interval
    has passed (a timer thread sends it), before any other message, or at
    ``flush``. So order holds, and only updates a later one overwrote within
    the interval are left out.
    """

    def __init__(self, fd: int, redraw_interval: float = REDRAW_INTERVAL) -> None:
        self.fd = fd
        self.redraw_interval = redraw_interval
        self.lock = threading.Lock()
        self._redraws: dict[str, bytes] = {}       # stream -> its latest redraw, not sent yet
        self._last_redraw: dict[str, float] = {}   # stream -> when one of its redraws was last sent
        self._timer: threading.Timer | None = None

    def send(self, message: dict[str, Any]) -> None:
        """Send one message (after the redraws that wait)."""
        data = self._encode(message)
        with _sigterm.held(), self.lock:
            self._write_redraws()
            self._write(data)

    def log(self, level: str, message: str, exception: str | None = None, stream: str | None = None) -> None:
        """Send a log record."""
        self.send(_record(level, message, exception, stream))

    def redraw(self, level: str, message: str, stream: str) -> None:
        """Send a progress bar's update (a log record), coalesced with the stream's others."""
        if not message.strip():  # a bar clearing its line
            return
        data = self._encode(_record(level, message, None, stream))
        with _sigterm.held(), self.lock:
            now = time.monotonic()
            due = self._last_redraw.get(stream, -math.inf) + self.redraw_interval
            self._redraws.pop(stream, None)  # overwritten
            if now >= due:
                self._write_redraws()
                self._write(data)
                self._last_redraw[stream] = now
                return
            self._redraws[stream] = data
            if self._timer is None:
                self._arm(due - now)

    def flush(self) -> None:
        """Send the redraws that wait."""
        with _sigterm.held(), self.lock:
            self._write_redraws()

    def _arm(self, delay: float) -> None:
        self._timer = threading.Timer(delay, self._send_due)
        self._timer.daemon = True
        self._timer.start()

    def _send_due(self) -> None:
        """(In the timer's thread.) Send the redraws whose interval has passed; wait for the others."""
        with self.lock:
            self._timer = None
            now = time.monotonic()
            wait = math.inf
            for stream, data in list(self._redraws.items()):
                due = self._last_redraw.get(stream, -math.inf) + self.redraw_interval
                if now >= due:
                    self._write(data)
                    self._last_redraw[stream] = now
                    del self._redraws[stream]
                else:
                    wait = min(wait, due - now)
            if self._redraws:
                self._arm(wait)

    def _write_redraws(self) -> None:
        now = time.monotonic()
        for stream, data in self._redraws.items():
            self._write(data)
            self._last_redraw[stream] = now
        self._redraws.clear()

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]

    @staticmethod
    def _encode(message: dict[str, Any]) -> bytes:
        for key in _TEXT_FIELDS:
            text = message.get(key)
            if isinstance(text, str) and len(text) > MAX_MESSAGE:
                message = {**message, key: cut(text)}
        return (json.dumps(message, default=str, ensure_ascii=False) + "\n").encode("utf-8", "replace")


def _record(level: str, message: str, exception: str | None, stream: str | None) -> dict[str, Any]:
    record: dict[str, Any] = {"t": "log", "level": level, "message": message, "at": time.time()}
    if exception:
        record["exception"] = exception
    if stream:
        record["stream"] = stream
    return record


class _LineWriter(io.TextIOBase):
    """A text stream that turns each written line into a log record (``flush`` ends an unfinished one).

    Redraws (see ``LineSplitter``) go to ``Channel.redraw``, which coalesces them.
    """

    def __init__(self, channel: Channel, level: str, stream: str) -> None:
        self.channel, self.level, self.stream_name = channel, level, stream
        self.splitter = LineSplitter()
        self.lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        # Sent under the lock: lines of two threads keep the order they were split in.
        with _sigterm.held(), self.lock:
            self._send(self.splitter.feed(text))
        return len(text)

    def flush(self) -> None:
        with _sigterm.held(), self.lock:
            self._send(self.splitter.rest())

    def _send(self, lines: list[tuple[str, bool]]) -> None:
        for line, is_redraw in lines:
            if is_redraw:
                self.channel.redraw(self.level, line, self.stream_name)
            else:
                self.channel.log(self.level, line, stream=self.stream_name)


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


def _die_with_worker(fd: int) -> None:
    """Wait for end of file on ``fd`` (the worker died or gave up on us); kill our process group.

    Only when this process leads its group (the worker starts it so): run any
    other way, it must not take its caller's group down with it.
    """
    with contextlib.suppress(OSError):
        while os.read(fd, 65536):
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


def _error(exc: BaseException) -> dict[str, Any]:
    return {"t": "error", "exception": type(exc).__name__, "message": cut(str(exc)),
            "traceback": cut("".join(traceback.format_exception(exc)))}


def _outcome(job: Job, args: dict[str, Any]) -> dict[str, Any]:
    """Run the job; its outcome message. ``JobKilled`` goes through: a killed job reports nothing."""
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
        try:
            json.dumps(result, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: the database could not store it
            raise ValueError("the job's result is not JSON: it holds a string that is not valid Unicode "
                             "(a lone surrogate, e.g. from a file name decoded with surrogateescape)") from None
        return {"t": "result", "value": result}
    except Deferred as deferred:
        return {"t": "defer", "message": cut(str(deferred))}
    except JobKilled:
        raise
    except BaseException as exc:  # noqa: BLE001 - any failure of the job is reported
        if isinstance(exc, TypeError) and "is not JSON serializable" in str(exc):
            exc = TypeError(f"the job's result is not JSON: {exc}")
        return _error(exc)


def run(spec: dict[str, Any], *, stdin_fd: int, channel_fd: int, output_fd: int) -> None:
    """Run the job ``spec`` describes in this process and report on ``channel_fd``.

    It takes the process over: file descriptors 1 and 2 become ``output_fd``,
    ``sys.stdout``/``sys.stderr`` and the root logger report on the channel
    (which must not be fd 1 or 2), SIGTERM raises ``JobKilled``, and a thread
    kills the process group when ``stdin_fd`` reaches end of file. Call it in
    the main thread of a process that leads its own process group, and end
    the process with ``os._exit`` after it: the job's leftovers (threads,
    handlers) must not hold the exit up.

    Raises ``JobKilled`` when SIGTERM stopped the job, after its ``finally``
    blocks ran; no outcome was reported then.
    """
    channel = Channel(channel_fd)
    for fd in (1, 2):
        if output_fd != fd:
            os.dup2(output_fd, fd)  # raw writes to fd 1 join fd 2, which the worker logs line by line
    threading.Thread(target=_die_with_worker, args=(stdin_fd,), daemon=True, name="die-with-worker").start()
    _sigterm.install()
    sys.stdout = _LineWriter(channel, "INFO", "stdout")
    sys.stderr = _LineWriter(channel, "WARNING", "stderr")
    root = logging.getLogger()
    root.handlers[:] = [_LogHandler(channel)]
    root.setLevel(logging.INFO)
    job: Job | None = None
    try:
        try:
            cls = _load(spec["qual_name"])
            job = cls(job_id=spec["job_id"], trial=spec["trial"])
            job.logger.setLevel(logging.DEBUG)
            job._emit = channel.send
        except JobKilled:
            raise
        except BaseException as exc:  # noqa: BLE001
            outcome = _error(exc)
        else:
            outcome = _outcome(job, spec["args"])
        # The job is done: a kill now would only lose its outcome.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    except JobKilled:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _flush(job, channel)
        raise
    _flush(job, channel)
    channel.send(outcome)
    # Reported: from now on SIGTERM ends the process at once (a handler the
    # job left may hold the exit up).
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _flush(job: Job | None, channel: Channel) -> None:
    """Send what the job left unsent: a coalesced progress report, unfinished lines."""
    if job is not None:
        job.flush_progress()
    sys.stdout.flush()
    sys.stderr.flush()
    channel.flush()


def _read_spec(fd: int) -> dict[str, Any]:
    """The first line on ``fd``, as JSON (the worker sends nothing after it)."""
    chunks: list[bytes] = []
    while not chunks or not chunks[-1].endswith(b"\n"):
        chunk = os.read(fd, 65536)
        if not chunk:  # the worker went before it sent the job
            os._exit(1)
        chunks.append(chunk)
    return json.loads(b"".join(chunks))


def main() -> None:
    """Run the job described on stdin and report to the worker (``python -m core.runner``)."""
    spec = _read_spec(0)
    try:
        run(spec, stdin_fd=0, channel_fd=os.dup(1), output_fd=2)
    except JobKilled:
        # Die of the signal, so the worker sees how the process ended.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        os._exit(128 + signal.SIGTERM)


if __name__ == "__main__":
    main()
    # No interpreter shutdown: the watcher thread blocks on stdin, and the
    # job's own leftovers are the worker's to clean up (it kills the group).
    logging.shutdown()
    os._exit(0)
