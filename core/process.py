"""One job's child process, seen from the worker: start it, read its messages, kill its group.

The child runs ``python -m core.runner`` in a new session, so it leads its own
process group and a kill reaches everything it started. See ``core.runner``
for the protocol.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable

__all__ = ["JobProcess", "Outcome"]

log = logging.getLogger(__name__)

_LINE_LIMIT = 8 * 1024 * 1024
_DRAIN_SECONDS = 10.0


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


class JobProcess:
    """Runs one trial of a job in a child process and collects what it reports."""

    def __init__(self, job: dict[str, Any], trial: int, *, on_log: LogSink,
                 on_progress: ProgressSink) -> None:
        self.job = job
        self.trial = trial
        self.on_log = on_log
        self.on_progress = on_progress
        self.process: asyncio.subprocess.Process | None = None
        self._final: dict[str, Any] | None = None

    @property
    def pid(self) -> int | None:
        """The child's pid (also its process group id) once started."""
        return self.process.pid if self.process else None

    async def start(self) -> None:
        """Start the child and hand it the job."""
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "core.runner",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, start_new_session=True, limit=_LINE_LIMIT)
        spec = {"job_id": str(self.job["_id"]), "qual_name": self.job["qual_name"],
                "args": self.job.get("args") or {}, "trial": self.trial}
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(spec).encode() + b"\n")
        await self.process.stdin.drain()

    async def wait(self) -> Outcome:
        """Relay the child's messages until it exits; return how it ended."""
        assert self.process is not None
        readers = asyncio.gather(self._read_channel(), self._read_output())
        code = await self.process.wait()
        self._close_stdin()
        # Whatever the job left behind goes too; that also closes the pipes
        # its leftovers inherited, which ends the readers.
        self._kill_group(signal.SIGKILL)
        try:
            await asyncio.wait_for(readers, _DRAIN_SECONDS)
        except asyncio.TimeoutError:  # a process that left our group holds a pipe open
            log.warning("output of job %s still open %g s after it exited; ignoring the rest",
                        self.job["_id"], _DRAIN_SECONDS)
        if self._final is None:
            how = f"killed by signal {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
            return Outcome("error", exception="ProcessExit",
                           message=f"the job process {how} before reporting a result")
        final = self._final
        if final["t"] == "result":
            return Outcome("result", value=final.get("value"))
        if final["t"] == "defer":
            return Outcome("defer", message=final.get("message", ""))
        return Outcome("error", exception=final.get("exception"), message=final.get("message", ""),
                       traceback=final.get("traceback"))

    async def _read_channel(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        while line := await self.process.stdout.readline():
            try:
                message = json.loads(line)
            except ValueError:
                await self.on_log("INFO", line.decode("utf-8", "replace").rstrip("\n"), stream="output")
                continue
            kind = message.get("t")
            if kind == "log":
                created = datetime.fromtimestamp(message.get("at", 0), timezone.utc)
                await self.on_log(message.get("level", "INFO"), str(message.get("message", "")),
                                  created=created, exception=message.get("exception"),
                                  stream=message.get("stream"))
            elif kind == "progress":
                await self.on_progress(float(message.get("value", 0)), message.get("message"))
            elif kind in ("result", "defer", "error"):
                self._final = message

    async def _read_output(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        while line := await self.process.stderr.readline():
            await self.on_log("INFO", line.decode("utf-8", "replace").rstrip("\n"), stream="output")

    async def kill(self, grace: float) -> None:
        """SIGTERM the job's process group; SIGKILL it if still alive after ``grace`` s."""
        if self.process is None or self.process.returncode is not None:
            return
        self._kill_group(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(self.process.wait()), grace)
        except asyncio.TimeoutError:
            log.info("job %s ignored SIGTERM for %g s; sending SIGKILL", self.job["_id"], grace)
        self._kill_group(signal.SIGKILL)

    def _kill_group(self, sig: signal.Signals) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)

    def _close_stdin(self) -> None:
        if self.process is not None and self.process.stdin is not None:
            with contextlib.suppress(Exception):
                self.process.stdin.close()
