"""``jobdeck schedule add|list|show|pause|resume|remove``, and schedulers in real ``jobdeck serve`` processes.

The commands run in process through click's CliRunner against this test's
database; the take-over runs two ``jobdeck serve`` processes against it and
SIGKILLs the one holding the scheduler lease.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from click.testing import CliRunner, Result

from core import queue, schedules
from core.config import Config
from core.scheduler import LEASE_ID
from jobdeck.cli import cli
from tests.conftest import clean_env, free_port, in_database, wait_for

DUMMY = "jobs.example.DummyJob"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, config: Config,
        cli_env: dict[str, str]) -> Iterator[Callable[..., Result]]:
    """``run("schedule", "list")``: the real command group against this test's database."""
    for name in list(os.environ):
        if name.startswith("JOBDECK_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()

    def invoke(*args: str) -> Result:
        return runner.invoke(cli, list(args), env=cli_env, prog_name="jobdeck")
    yield invoke
    in_database(config, lambda db: db.client.drop_database(config.database))


def ok(result: Result) -> str:
    assert result.exit_code == 0, f"exit {result.exit_code}: {result.output}\n{result.exception!r}"
    return result.stdout


def test_schedule_commands_add_list_show_pause_resume_and_remove(run, config):
    schedule_id = ok(run("schedule", "add", DUMMY, "*/10 * * * *", "sleep=2", "--tz", "Europe/Berlin",
                         "--priority", "4", "--overlap", "queue")).strip()
    listed = json.loads(ok(run("schedule", "list", "--json")))
    assert [(s["_id"], s["cron"], s["tz"], s["args"], s["options"], s["source"], s["acts_as"]) for s in listed] == [
        (schedule_id, "*/10 * * * *", "Europe/Berlin", {"sleep": 2}, {"priority": 4}, "api", listed[0]["acts_as"])]
    assert listed[0]["acts_as"].startswith("cli") and listed[0]["next_run"] and listed[0]["last_tick"] is None
    table = ok(run("schedule", "list"))
    assert table.splitlines()[0].split()[:4] == ["_ID", "QUAL_NAME", "CRON", "TZ"] and schedule_id in table
    assert "next_run:" in ok(run("schedule", "show", schedule_id))
    assert ok(run("schedule", "pause", schedule_id)).strip() == f"{schedule_id} paused"
    assert json.loads(ok(run("schedule", "show", schedule_id, "--json")))["enabled"] is False
    assert json.loads(ok(run("schedule", "resume", schedule_id, "--json")))["enabled"] is True
    assert ok(run("schedule", "remove", schedule_id)).strip() == f"{schedule_id} removed"
    assert json.loads(ok(run("schedule", "list", "--json"))) == []
    actions = in_database(config, lambda db: db.audit.distinct("action", {"target": schedule_id}))
    assert set(actions) == {"schedule.add", "schedule.pause", "schedule.resume", "schedule.remove"}


def test_bad_schedules_are_refused_with_a_message_and_no_traceback(run):
    for args, message in ((("schedule", "add", DUMMY, "61 * * * *"), "bad cron"),
                          (("schedule", "add", DUMMY, "* * * * *", "--tz", "Moon/Base"), "unknown time zone"),
                          (("schedule", "add", "jobs.nope.Job", "* * * * *"), "unknown job"),
                          (("schedule", "show", "0123456789abcdef01234567"), "no schedule")):
        result = run(*args)
        assert result.exit_code != 0 and message in result.output, (args, result.output)
        assert "Traceback" not in result.output


# ---------------------------------------------------------------- two real servers

async def _serve(config: Config, port: int) -> asyncio.subprocess.Process:
    env = clean_env(JOBDECK_MONGO_URL=config.mongo_url, JOBDECK_DATABASE=config.database,
                    JOBDECK_DATA_DIR=config.data_dir, JOBDECK_PORT=str(port), JOBDECK_ADMIN_PASSWORD="hans",
                    JOBDECK_SCHEDULER_LEASE_SECONDS="2", JOBDECK_LOG_LEVEL="WARNING")
    return await asyncio.create_subprocess_exec(sys.executable, "-m", "jobdeck", "serve", cwd=ROOT, env=env,
                                                stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.DEVNULL, start_new_session=True)


async def test_a_server_takes_over_the_schedules_within_a_lease_of_the_active_ones_sigkill(db, config, job_classes):
    schedule = await schedules.add(db, user=queue.operator("test"), qual_name=DUMMY, cron="* * * * * *",
                                   overlap="queue", args={"sleep": 0})
    servers = [await _serve(config, free_port()) for _ in range(2)]

    async def ticks() -> list[datetime]:
        query = {"schedule.id": schedule["_id"]}
        found = [*await db.queue.find(query, {"schedule": 1}).to_list(),
                 *await db.journal.find(query, {"schedule": 1}).to_list()]
        return sorted(job["schedule"]["tick"] for job in found)

    async def holder() -> int | None:
        lease = await db.settings.find_one({"_id": LEASE_ID})
        return int(lease["holder"].split(":")[1]) if lease else None

    try:
        await wait_for(lambda: _at_least(ticks, 3), timeout=30, interval=0.1, message="3 ticks")
        active = await holder()
        victim = next(server for server in servers if server.pid == active)
        survivor = next(server for server in servers if server is not victim)
        # Right after a tick: the holder sleeps until the next one, not in the middle of writing this one.
        seen = len(await ticks())
        await wait_for(lambda: _at_least(ticks, seen + 1), timeout=5, interval=0.02, message="a tick")
        await asyncio.sleep(0.2)
        os.killpg(victim.pid, signal.SIGKILL)
        killed_at = datetime.now(timezone.utc)
        await victim.wait()
        await wait_for(lambda: _holder_is(holder, survivor.pid), timeout=5, interval=0.05, message="the take-over")
        taken_after = (datetime.now(timezone.utc) - killed_at).total_seconds()
        assert taken_after < 3.5, f"took over {taken_after:.1f} s after the kill (lease 2 s)"
        await wait_for(lambda: _has_tick_after(ticks, killed_at + timedelta(seconds=3)), timeout=15,
                       interval=0.1, message="ticks after the take-over")
    finally:
        for server in servers:
            if server.returncode is None:
                os.killpg(server.pid, signal.SIGTERM)
                await server.wait()
    seen = await ticks()
    assert len(seen) == len(set(seen)), "a tick was enqueued twice"
    assert seen == [seen[0] + timedelta(seconds=n) for n in range(len(seen))], f"a tick is missing: {seen}"


async def _at_least(ticks: Any, count: int) -> bool:
    return len(await ticks()) >= count


async def _holder_is(holder: Any, pid: int) -> bool:
    return await holder() == pid


async def _has_tick_after(ticks: Any, moment: datetime) -> bool:
    found = await ticks()
    return bool(found) and found[-1] >= moment
