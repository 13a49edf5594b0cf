"""``jobdeck pause|resume``, ``enqueue --max-parallel --require``, what ``show`` and ``stats`` say of them."""
from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Callable

from click.testing import Result

from core.config import Config
from core.db import Database
from tests.conftest import in_database
from tests.test_cli_jobs import fails, ok, run  # noqa: F401  (the run fixture)

NOOP = "jobs.example.NoopJob"


def test_pause_and_resume_a_class_and_the_queue(run: Callable[..., Result]) -> None:
    out = ok(run("pause", NOOP, "--wait", "0"))
    assert f"paused: {NOOP}" in out and "acknowledged by 0 of 0 live workers" in out
    assert json.loads(ok(run("pause", "--wait", "0", "--json")))["flow"] == {"all": True, "classes": [NOOP],
                                                                           "version": 2}
    stats = ok(run("stats"))
    assert f"paused: the whole queue, {NOOP}" in stats
    assert "PAUSED" in ok(run("jobs"))
    ok(run("resume", "--wait", "0"))
    out = ok(run("resume", NOOP, "--wait", "0"))
    assert "paused: nothing" in out
    assert "paused" not in ok(run("stats"))


def test_enqueue_with_limits_and_tags_shows_them_and_why_it_waits(run: Callable[..., Result], config: Config) -> None:
    async def gpu_worker(db: Database) -> None:
        await db.worker.insert_one({"_id": "w:1:aa", "host": "h", "tags": ["gpu"],
                                    "heartbeat": datetime.now(timezone.utc)})
    in_database(config, gpu_worker)
    job_id = ok(run("enqueue", NOOP, "--max-parallel", "2", "--require", "gpu", "--require", "eu")).strip()
    shown = ok(run("show", job_id))
    assert "max_parallel 2, requires eu, gpu" in shown
    assert "no live worker has tags eu, gpu" in shown
    assert "waiting: 1 jobs requiring eu, gpu: no live worker has tags eu, gpu" in ok(run("stats"))
    fails(run("enqueue", NOOP, "--require", "no space"), "bad tag")
    fails(run("enqueue", NOOP, "--max-parallel", "0"), "max_parallel")


def test_worker_refuses_a_bad_tag_before_starting(run: Callable[..., Result]) -> None:
    result = run("worker", "--tag", "a b")
    assert result.exit_code == 2 and "bad tag 'a b'" in result.output
