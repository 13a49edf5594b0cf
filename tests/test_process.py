"""The job process: real ``JobProcess``es running ``python -m core.runner`` (and a real worker where it matters)."""
from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import sys
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import psutil
import pytest
from bson import ObjectId

from core import queue, registry
from core.db import Database
from core.job import Job
from core.process import JobProcess, Outcome
from core.runner import MAX_MESSAGE, REDRAW_INTERVAL, Channel, LineSplitter, cut
from core.worker import Worker
from tests.conftest import wait_for

ADMIN = queue.operator("test")
HUGE = 9 * 1024 * 1024
ROOT = Path(__file__).resolve().parents[1]

StartWorker = Callable[..., Awaitable[Worker]]


@pytest.fixture
async def job_classes(db: Database) -> dict[str, type[Job]]:
    """The example jobs and ``tests.jobs``, registered (the worker fixture runs these)."""
    found = registry.discover(["tests.jobs"])
    await registry.sync(db, found)
    return found


class Run:
    """A ``JobProcess`` of one job, with what it logged and reported."""

    def __init__(self, qual_name: str, **args: Any) -> None:
        self.records: list[dict[str, Any]] = []
        self.progress: list[tuple[float, str | None]] = []
        self.process = JobProcess({"_id": ObjectId(), "qual_name": qual_name, "args": args}, 1,
                                  on_log=self._log, on_progress=self._progress)

    async def _log(self, level: str, message: str, **fields: Any) -> None:
        self.records.append({"level": level, "message": message, **fields})

    async def _progress(self, value: float, message: str | None) -> None:
        self.progress.append((value, message))

    async def start(self) -> Run:
        """Start the process and, as the worker does, relay what it sends at once."""
        await self.process.start()
        self.waiter = asyncio.ensure_future(self.process.wait())
        return self

    async def wait(self, timeout: float = 30) -> Outcome:
        return await asyncio.wait_for(self.waiter, timeout)

    def messages(self, stream: str | None = "*") -> list[str]:
        return [r["message"] for r in self.records if stream == "*" or r.get("stream") == stream]

    async def said(self, text: str) -> None:
        await wait_for(lambda: any(text in m for m in self.messages()), 20, message=f"the job to say {text!r}")


async def run_job(qual_name: str, timeout: float = 30, **args: Any) -> tuple[Run, Outcome]:
    run = await Run(qual_name, **args).start()
    return run, await run.wait(timeout)


def is_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def finished(db: Database, job_id: ObjectId, timeout: float = 30.0) -> dict[str, Any]:
    return await wait_for(lambda: db.journal.find_one({"_id": job_id}), timeout, message=f"job {job_id} to finish")


async def log_of(db: Database, job_id: ObjectId) -> list[dict[str, Any]]:
    return await db.log.find({"job_id": job_id}, {"_id": 0}).sort("seq", 1).to_list()


# --- lines ----------------------------------------------------------------------------------

@pytest.mark.parametrize("pieces, lines", [
    (["a\nb\n"], [("a", False), ("b", False)]),
    (["a\r\nb\r\n"], [("a", False), ("b", False)]),
    (["a\r", "\nb\n"], [("a", True), ("b", False)]),       # "\r\n" split between writes is one line end
    (["a\n\r", "\nb\n"], [("a", False), ("", False), ("b", False)]),  # ... also when it ends an empty line
    (["1%\r2%\r", "3%\r"], [("1%", True), ("2%", True), ("3%", True)]),
    (["\r1%", "\r2%", "\r3%\n"], [("1%", True), ("2%", True), ("3%", False)]),  # a lone "\r" ending nothing: no line
    (["\n\n"], [("", False), ("", False)]),
    (["no end"], [("no end", False)]),
])
def test_line_splitter_ends_lines_at_newline_crlf_and_lone_cr(pieces: list[str], lines: list[tuple[str, bool]]
                                                              ) -> None:
    splitter = LineSplitter()
    got = [line for piece in pieces for line in splitter.feed(piece)]
    assert got + splitter.rest() == lines


def test_line_splitter_takes_a_flushed_tqdm_bar_for_redraws_ended_by_its_newline() -> None:
    splitter = LineSplitter()
    got = []
    for piece in ["\r 0%", "\r50%", "\r100%", "\n", "done\n"]:
        got += splitter.feed(piece) + splitter.rest()  # tqdm flushes after each write

    assert got == [(" 0%", True), ("50%", True), ("100%", True), ("done", False)]


def test_line_splitter_cuts_a_long_line_to_its_limit_with_its_length() -> None:
    splitter = LineSplitter(limit=100)
    got = [line for _ in range(1000) for line in splitter.feed("x" * 1000)] + splitter.feed("\nnext\n")

    assert got == [(cut("x" * 1_000_000, 100), False), ("next", False)]
    assert len(got[0][0]) == 100 and got[0][0].endswith(" ... [cut, 1000000 characters]")
    assert sum(map(len, splitter._parts)) == 0


def read_messages(fd: int, count: int, timeout: float = 10) -> list[str]:
    """The messages of the first ``count`` channel lines on pipe ``fd``."""
    data, deadline = b"", time.monotonic() + timeout
    while data.count(b"\n") < count:
        assert select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0], f"no {count} lines: {data!r}"
        data += os.read(fd, 65536)
    return [json.loads(line)["message"] for line in data.splitlines()]


def test_channel_coalesces_redraws_into_the_latest_and_sends_it_when_the_interval_has_passed() -> None:
    read_end, write_end = os.pipe()
    try:
        channel = Channel(write_end, redraw_interval=0.2)
        for n in range(1, 4):
            channel.redraw("INFO", f"bar {n}", "stderr")

        assert read_messages(read_end, 2) == ["bar 1", "bar 3"]  # no other write sent bar 3
    finally:
        os.close(read_end)
        os.close(write_end)


def test_channel_sends_waiting_redraws_before_any_other_message() -> None:
    read_end, write_end = os.pipe()
    try:
        channel = Channel(write_end, redraw_interval=60)
        for n in range(1, 4):
            channel.redraw("INFO", f"bar {n}", "stderr")
        channel.log("INFO", "a line", stream="stdout")
        channel.redraw("INFO", "   ", "stderr")  # a bar clearing its line
        channel.redraw("INFO", "bar 4", "stderr")
        channel.flush()

        assert read_messages(read_end, 4) == ["bar 1", "bar 3", "a line", "bar 4"]
    finally:
        os.close(read_end)
        os.close(write_end)


# --- a helper holding the pipes -------------------------------------------------------------

@pytest.mark.parametrize("session", [False, True], ids=["in-group", "own-session"])
async def test_a_helper_holding_the_output_open_does_not_hold_up_the_end(session: bool) -> None:
    started = time.monotonic()
    run, outcome = await run_job("tests.jobs.HelperJob", session=session, seconds=120)
    helper = outcome.value["helper"]
    try:
        assert time.monotonic() - started < 5
        assert outcome.kind == "result" and run.process.returncode == 0
        if not session:
            await wait_for(lambda: is_gone(helper), 10, message="the helper in the job's group to be killed")
    finally:
        if session:
            os.kill(helper, signal.SIGKILL)


async def test_a_job_leaving_a_helper_in_its_own_session_completes_despite_its_wall_time(
        db: Database, worker_factory: StartWorker) -> None:
    job = await queue.enqueue(db, "tests.jobs.HelperJob", {"session": True, "seconds": 120}, user=ADMIN,
                              wall_time=20)
    await worker_factory()

    done = await finished(db, job["_id"], timeout=15)
    os.kill(done["result"]["helper"], signal.SIGKILL)

    assert done["state"] == "complete", done["last_error"]
    assert done["runtime"] < 5


# --- huge lines -----------------------------------------------------------------------------

@pytest.mark.parametrize("how, stream, letter", [("fd", "output", "x"), ("stderr", "stderr", "y")])
async def test_a_huge_line_is_cut_and_the_job_completes(how: str, stream: str, letter: str) -> None:
    run, outcome = await run_job("tests.jobs.HugeOutputJob", how=how, size=HUGE)

    assert outcome == Outcome("result", value={"how": how})
    [line] = run.messages(stream)
    assert len(line) <= MAX_MESSAGE
    assert line.startswith(letter * 1000) and line.endswith(f" ... [cut, {HUGE} characters]")


async def test_a_huge_error_message_is_cut_and_reported() -> None:
    run, outcome = await run_job("tests.jobs.HugeOutputJob", how="raise", size=HUGE)

    assert outcome.kind == "error" and outcome.exception == "RuntimeError"
    assert len(outcome.message) <= MAX_MESSAGE and len(outcome.traceback) <= MAX_MESSAGE
    assert outcome.message.startswith("z" * 1000) and outcome.message.endswith(f"[cut, {HUGE} characters]")
    assert outcome.traceback.startswith("Traceback") and "in execute" in outcome.traceback


# --- progress bars ------------------------------------------------------------------------

@pytest.mark.parametrize("style", ["cr", "tqdm"])
async def test_a_progress_bar_of_40000_updates_is_quick_and_logs_about_one_update_a_second(
        db: Database, worker_factory: StartWorker, style: str) -> None:
    # Updates closer together than REDRAW_INTERVAL are coalesced into the
    # latest: a record per update would cost the database 40,000 writes.
    updates = 40_000
    job = await queue.enqueue(db, "tests.jobs.ProgressBarJob", {"updates": updates, "style": style}, user=ADMIN)
    await worker_factory()
    asked = time.monotonic()

    done = await finished(db, job["_id"], timeout=60)

    assert time.monotonic() - asked < 20
    assert done["state"] == "complete", done["last_error"]
    records = [(r.get("stream"), r["message"]) for r in await log_of(db, job["_id"])]
    assert records[0] == ("stderr", f"  0%|{' ' * 40}| 1/{updates}")
    assert records[-2:] == [("stderr", f"100%|{'#' * 40}| {updates}/{updates}"), ("stdout", "after the bar")]
    assert len(records) <= 3 + done["runtime"] / REDRAW_INTERVAL


# --- kill -----------------------------------------------------------------------------------

async def test_a_killed_job_runs_its_finally_blocks_in_the_grace(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    run = await Run("tests.jobs.CleanupJob", marker=str(marker)).start()
    await run.said("cleanup job sleeping")

    asked = time.monotonic()
    await run.process.kill(grace=10)
    outcome = await run.wait()

    assert time.monotonic() - asked < 5, "it ended of SIGTERM, not of SIGKILL after the grace"
    assert marker.read_text() == "cleaned up"
    assert "cleanup job cleaning up" in run.messages()
    assert not run.process.has_reported and run.process.reported is None
    assert run.process.was_killed and run.process.returncode == -signal.SIGTERM
    assert outcome.kind == "error" and outcome.exception == "ProcessExit"
    assert "SIGTERM" in outcome.message


async def test_a_job_killed_by_the_worker_logs_what_its_finally_block_says(
        db: Database, worker_factory: StartWorker, tmp_path: Path) -> None:
    job = await queue.enqueue(db, "tests.jobs.CleanupJob", {"marker": str(tmp_path / "marker")}, user=ADMIN)
    await worker_factory(kill_grace=10)
    await wait_for(lambda: db.log.find_one({"job_id": job["_id"], "message": "cleanup job sleeping"}),
                   message="the job to start")

    await queue.kill(db, job["_id"], user=ADMIN)
    done = await finished(db, job["_id"], timeout=20)

    assert done["state"] == "killed"
    assert [r["message"] for r in await log_of(db, job["_id"])] == [
        "cleanup job sleeping", "cleanup job cleaning up"]
    assert (tmp_path / "marker").exists()


async def test_a_kill_after_the_job_reported_keeps_the_reported_outcome() -> None:
    run = await Run("tests.jobs.LingeringJob", seconds=60).start()
    await run.said("lingering after the result")

    await run.process.kill(grace=0.5)
    outcome = await run.wait()

    assert outcome == Outcome("result", value={"done": True})
    assert run.process.has_reported and run.process.reported == outcome
    assert run.process.was_killed and run.process.returncode == -signal.SIGTERM


# --- output, order, descriptors -------------------------------------------------------------

async def test_output_keeps_its_order_on_each_path() -> None:
    run, outcome = await run_job("tests.jobs.OrderJob")

    assert outcome.kind == "result"
    channel = [(r.get("stream"), r["message"]) for r in run.records if r.get("stream") != "output"]
    assert channel == [("stdout", "one"), (None, "two"), ("stderr", "three"), ("stderr", "four"),
                       ("stderr", "five"), ("stdout", "ten")]
    assert run.messages("output") == ["raw six", "raw seven", "raw eight", "raw nine"]


async def test_no_descriptor_is_left_open_after_50_runs(tmp_path: Path) -> None:
    async def killed() -> None:
        run = await Run("tests.jobs.CleanupJob", marker=str(tmp_path / "marker")).start()
        await run.said("cleanup job sleeping")
        await run.process.kill(grace=5)
        await run.wait()

    async def helper() -> None:
        _, outcome = await run_job("tests.jobs.HelperJob", session=True, seconds=30)
        os.kill(outcome.value["helper"], signal.SIGKILL)

    kinds = [lambda: run_job("jobs.example.NoopJob"), lambda: run_job("jobs.example.FailJob"),
             lambda: run_job("tests.jobs.HugeOutputJob", how="fd", size=HUGE), killed, helper]
    before = open_fds()

    for _ in range(50 // len(kinds)):  # one of each kind at a time, side by side
        await asyncio.gather(*(kind() for kind in kinds))

    assert open_fds() == before


async def test_the_job_kills_its_group_when_its_stdin_closes() -> None:
    # The worker died: end of file on stdin. The stubborn job ignores SIGTERM, and so does its child.
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "core.runner", cwd=ROOT, start_new_session=True,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    try:
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write(json.dumps({"job_id": "x", "qual_name": "jobs.example.StubbornJob", "args": {},
                                      "trial": 1}).encode() + b"\n")
        while "child pid" not in (message := json.loads(await asyncio.wait_for(child.stdout.readline(), 20))
                                  ).get("message", ""):
            pass
        grandchild = int(message["message"].rsplit(" ", 1)[1])

        child.stdin.close()

        assert await asyncio.wait_for(child.wait(), 10) == -signal.SIGKILL
        await wait_for(lambda: is_gone(grandchild), 10, message="the job's own child to die with it")
    finally:
        if child.returncode is None:
            os.killpg(child.pid, signal.SIGKILL)
            await child.wait()
