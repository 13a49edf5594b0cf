"""One job's child process, seen from the worker: start it, read its messages, kill its group.

The child runs ``core.runner`` in a new session, so it leads its own process
group and a kill reaches everything it started: forked by the worker's
launcher (``core.forkserver``), or spawned as ``python -m core.runner``. See
``core.runner`` for the protocol.

The end of a run is learnt from the child's exit, through a pidfd, not from
its pipes: a helper it started may hold those open for as long as it lives,
even in a session of its own, out of the group's reach. On exit the group is
SIGKILLed (the child is a zombie until reaped, so its pid, the group's id,
cannot have been reused yet), the pipes are drained (everything they held at
the exit, then whatever comes while they keep busy: a pause of
``_DRAIN_IDLE`` s or ``_DRAIN_SECONDS`` s in all end it) and every
descriptor is closed. The outcome the child reported stands whatever
happened to the process afterwards.

Both pipes are read in chunks and split into lines here (``LineSplitter``), so
a line of any length costs bounded memory: raw output lines longer than
``MAX_MESSAGE`` are cut. Raw output is not coalesced: each redraw of a
progress bar a subprocess draws is a record.
"""
from __future__ import annotations

import asyncio
import codecs
import contextlib
import fcntl
import json
import logging
import os
import signal
import struct
import subprocess
import sys
import termios
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from core.runner import MAX_MESSAGE, LineSplitter, cut

if TYPE_CHECKING:
    from core.forkserver import ForkServer

__all__ = ["JobProcess", "Outcome"]

log = logging.getLogger(__name__)

_CHUNK = 64 * 1024
_CHANNEL_LIMIT = 4 * 1024 * 1024  # characters of a channel line; the runner's messages stay far below
_DRAIN_IDLE = 0.5
_DRAIN_SECONDS = 10.0
_FINAL = ("result", "defer", "error")


@dataclass
class Outcome:
    """How a run ended: ``result``, ``defer`` or ``error`` (with details)."""

    kind: str
    value: Any = None
    message: str = ""
    exception: str | None = None
    traceback: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


LogSink = Callable[..., Awaitable[None]]
ProgressSink = Callable[[float, "str | None"], Awaitable[None]]


class _Pipe:
    """The read end of one of the child's pipes."""

    def __init__(self, fd: int, name: str, limit: int) -> None:
        self.fd = fd
        self.name = name
        self.splitter = LineSplitter(limit)
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.owed = 0          # bytes it held when the child exited: read whatever the drain's clock says
        self.at_end = False    # end of file seen


class JobProcess:
    """Runs one trial of a job in a child process and collects what it reports.

    Besides what ``wait()`` returns: ``reported`` is the outcome the child
    reported (None until it does, or if it never does), ``returncode`` its
    exit status once known (negative: the signal that ended it; None while it
    runs, or if it is not this process's child), ``was_killed`` whether
    ``kill()`` signalled it.
    """

    def __init__(self, job: dict[str, Any], trial: int, *, on_log: LogSink,
                 on_progress: ProgressSink, launcher: ForkServer | None = None) -> None:
        self.job = job
        self.launcher = launcher
        self.trial = trial
        self.on_log = on_log
        self.on_progress = on_progress
        self.reported: Outcome | None = None
        self.returncode: int | None = None
        self.was_killed = False
        self._pid: int | None = None
        self._popen: subprocess.Popen[bytes] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stdin: int | None = None
        self._pipes: list[_Pipe] = []
        self._pidfd: int | None = None
        self._exit: asyncio.Future[None] | None = None
        self._exited_at = 0.0
        self._closed = False
        self._released = False  # the launcher was told to reap the child

    @property
    def pid(self) -> int | None:
        """The child's pid (also its process group id) once started."""
        return self._pid

    @property
    def has_reported(self) -> bool:
        """Whether the child reported its final outcome (``reported``)."""
        return self.reported is not None

    @property
    def has_exited(self) -> bool:
        """Whether the child has exited."""
        return self._exit is not None and self._exit.done()

    async def start(self) -> None:
        """Start the child (forked by ``launcher``, or spawned) and hand it the job.

        Raises ``OSError`` if the process cannot be started.
        """
        stdin_r, stdin_w = os.pipe()
        channel_r, channel_w = os.pipe()
        output_r, output_w = os.pipe()
        try:
            if self.launcher is not None:
                pid = await self.launcher.launch(stdin_r, channel_w, output_w)
            else:
                self._popen = subprocess.Popen([sys.executable, "-m", "core.runner"], stdin=stdin_r,
                                               stdout=channel_w, stderr=output_w, start_new_session=True)
                pid = self._popen.pid
        except BaseException:
            for fd in (stdin_w, channel_r, output_r):
                os.close(fd)
            raise
        finally:
            for fd in (stdin_r, channel_w, output_w):
                os.close(fd)
        self._attach(pid, stdin=stdin_w, channel=channel_r, output=output_r)
        spec = {"job_id": str(self.job["_id"]), "qual_name": self.job["qual_name"],
                "args": self.job.get("args") or {}, "trial": self.trial}
        await self._send(json.dumps(spec).encode() + b"\n")

    def _attach(self, pid: int, *, stdin: int, channel: int, output: int) -> None:
        """Supervise process ``pid``, which reads ``stdin`` and writes ``channel`` and ``output``.

        The descriptors are this object's from now on (``wait`` closes them).
        The process need not be this one's child (a fork server's is not): its
        exit is learnt through a pidfd, and its exit status is then unknown
        (``returncode`` None) unless someone sets it.
        """
        self._loop = asyncio.get_running_loop()
        self._pid = pid
        self._stdin = stdin
        self._pipes = [_Pipe(channel, "channel", _CHANNEL_LIMIT), _Pipe(output, "output", MAX_MESSAGE)]
        for fd in (stdin, channel, output):
            os.set_blocking(fd, False)
        self._exit = self._loop.create_future()
        try:
            self._pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            # Not Linux >= 5.3, or forbidden: wait for our own child in a
            # thread (which reaps it before the group kill: a small pid-reuse risk).
            if self._popen is None:
                raise
            threading.Thread(target=self._wait_in_thread, daemon=True, name=f"wait-{pid}").start()
        else:
            self._loop.add_reader(self._pidfd, self._on_exit)

    def _wait_in_thread(self) -> None:
        assert self._popen is not None and self._loop is not None
        self._popen.wait()
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            self._loop.call_soon_threadsafe(self._on_exit)

    def _on_exit(self) -> None:
        """The child exited: kill what it left behind, learn its status, start the drain's clock."""
        assert self._exit is not None and self._loop is not None
        if self._exit.done():
            return
        if self._pidfd is not None:
            self._loop.remove_reader(self._pidfd)
        # Still a zombie (with the pidfd): the group id is the child's own.
        # Killing the leftovers also closes the pipes they inherited.
        self._kill_group(signal.SIGKILL)
        self._reap()
        self._exited_at = self._loop.time()
        for pipe in self._pipes:
            pipe.owed = _unread(pipe.fd)
        self._exit.set_result(None)

    def _reap(self) -> None:
        if self._popen is not None and self.returncode is None:
            self.returncode = self._popen.poll()

    async def wait(self) -> Outcome:
        """Relay the child's messages until it has exited and its pipes are drained; return how it ended.

        That is the outcome the child reported, even if the process was killed
        after it reported it; without one, an ``error`` (``ProcessExit``)
        saying how the process ended. Every descriptor of the run is closed
        when this returns; cancelled, it also kills the process group.
        """
        assert self._exit is not None, "start() first"
        channel, output = self._pipes
        readers = [asyncio.ensure_future(self._pump(channel, self._relay_messages)),
                   asyncio.ensure_future(self._pump(output, self._relay_output))]
        try:
            await asyncio.gather(*readers)
            await self._exit
            if self.launcher is not None and self._pid is not None:
                self.returncode = await self.launcher.release(self._pid)
                self._released = True
        finally:
            for reader in readers:
                reader.cancel()
            await asyncio.wait(readers)
            self._close()
        self._reap()  # in case the exit status was not there yet when the pidfd said it exited
        if self.reported is not None:
            return self.reported
        return Outcome("error", exception="ProcessExit",
                       message=f"the job process {_how(self.returncode)} before reporting a result")

    async def _pump(self, pipe: _Pipe, relay: Callable[[list[str]], Awaitable[None]]) -> None:
        """Read ``pipe`` to its end, or to the end of the drain, handing its lines to ``relay``."""
        while chunk := await self._read(pipe):
            await relay([line for line, _ in pipe.splitter.feed(pipe.decoder.decode(chunk))])
        ending = pipe.splitter.feed(pipe.decoder.decode(b"", final=True)) + pipe.splitter.rest()
        await relay([line for line, _ in ending])
        if not pipe.at_end:
            log.warning("the %s of job %s is still open after it exited: a process it started holds it; "
                        "ignoring the rest", pipe.name, self.job["_id"])

    async def _read(self, pipe: _Pipe) -> bytes:
        """The next chunk of ``pipe``; empty at its end or when the drain is over."""
        assert self._loop is not None
        while True:
            if self.has_exited and pipe.owed <= 0 and self._loop.time() - self._exited_at > _DRAIN_SECONDS:
                return b""  # someone keeps writing after the job ended
            try:
                chunk = os.read(pipe.fd, _CHUNK)
            except BlockingIOError:
                if not await self._readable(pipe):
                    return b""
                continue
            pipe.owed -= len(chunk)
            pipe.at_end = not chunk
            return chunk

    async def _readable(self, pipe: _Pipe) -> bool:
        """Wait until ``pipe`` can be read; False if the child exited and the pipe stayed quiet."""
        assert self._loop is not None and self._exit is not None
        ready = self._loop.create_future()
        self._loop.add_reader(pipe.fd, _resolve, ready)
        try:
            if not self._exit.done():
                await asyncio.wait((ready, self._exit), return_when=asyncio.FIRST_COMPLETED)
            if not ready.done():
                timeout = min(_DRAIN_IDLE, self._exited_at + _DRAIN_SECONDS - self._loop.time())
                if timeout > 0:
                    await asyncio.wait((ready,), timeout=timeout)
            return ready.done()
        finally:
            self._loop.remove_reader(pipe.fd)

    async def _relay_messages(self, lines: list[str]) -> None:
        for line in lines:
            try:
                message = json.loads(line)
            except ValueError:
                message = None
            if not isinstance(message, dict):
                if line:
                    await self.on_log("INFO", cut(line), stream="output")
                continue
            kind = message.get("t")
            if kind == "log":
                created = datetime.fromtimestamp(message.get("at", 0), timezone.utc)
                await self.on_log(message.get("level", "INFO"), str(message.get("message", "")),
                                  created=created, exception=message.get("exception"),
                                  stream=message.get("stream"))
            elif kind == "progress":
                await self.on_progress(float(message.get("value", 0)), message.get("message"))
            elif kind in _FINAL:
                if self.reported is None:
                    self.reported = _outcome_of(message)
                else:
                    log.warning("job %s reported a second outcome (%s); keeping the first", self.job["_id"], kind)

    async def _relay_output(self, lines: list[str]) -> None:
        for line in lines:
            await self.on_log("INFO", line, stream="output")

    async def kill(self, grace: float) -> None:
        """SIGTERM the job's process group; SIGKILL it if the child is still alive after ``grace`` s.

        The job's ``finally`` blocks run in the grace (the runner turns
        SIGTERM into ``JobKilled``). An outcome reported before stays ``reported``.
        """
        if self._exit is None or self._exit.done():
            return
        self.was_killed = True
        self._kill_group(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(self._exit), grace)
        except asyncio.TimeoutError:
            log.info("job %s ignored SIGTERM for %g s; sending SIGKILL", self.job["_id"], grace)
            self._kill_group(signal.SIGKILL)

    async def _send(self, data: bytes) -> None:
        """Write ``data`` to the child's stdin without blocking the loop."""
        assert self._loop is not None and self._stdin is not None
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self._stdin, view):]
            except BlockingIOError:
                ready = self._loop.create_future()
                self._loop.add_writer(self._stdin, _resolve, ready)
                try:
                    await ready
                finally:
                    self._loop.remove_writer(self._stdin)
            except BrokenPipeError:  # it died before reading the job; wait() says how
                return

    def _kill_group(self, sig: signal.Signals) -> None:
        if self._pid is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._pid, sig)

    def _close(self) -> None:
        """Close every descriptor of the run; a child still running is killed (nobody would read it)."""
        if self._closed:
            return
        self._closed = True
        assert self._loop is not None
        if self._pidfd is not None:
            if not self.has_exited:
                self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
        if not self.has_exited:
            self._kill_group(signal.SIGKILL)
            if self._popen is not None:  # reap it when it is gone
                threading.Thread(target=self._popen.wait, daemon=True, name=f"reap-{self._pid}").start()

        if self.launcher is not None and self._pid is not None and not self._released:
            self.launcher.forget(self._pid)  # the launcher reaps it whenever it exits
        for fd in [self._stdin, *(pipe.fd for pipe in self._pipes)]:
            if fd is not None:
                os.close(fd)



def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _unread(fd: int) -> int:
    """Bytes waiting in pipe ``fd``."""
    try:
        return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]
    except OSError:
        return 0


def _how(code: int | None) -> str:
    if code is None:
        return "ended"
    if code >= 0:
        return f"exited with code {code}"
    try:
        return f"was killed by signal {signal.Signals(-code).name}"
    except ValueError:
        return f"was killed by signal {-code}"


def _outcome_of(message: dict[str, Any]) -> Outcome:
    if message["t"] == "result":
        return Outcome("result", value=message.get("value"))
    if message["t"] == "defer":
        return Outcome("defer", message=message.get("message", ""))
    return Outcome("error", exception=message.get("exception"), message=message.get("message", ""),
                   traceback=message.get("traceback"))
