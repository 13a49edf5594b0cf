"""``jobdeck journal export``: finished jobs as JSON lines, in ``finished_at`` order, optionally with their logs."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

from bson import ObjectId
from click.testing import Result

from core.config import Config
from core.db import Database
from tests.conftest import in_database
from tests.test_cli_jobs import HEX_ID, ISO_UTC, run  # noqa: F401  (run: the CLI runner fixture)

DAY = datetime(2026, 3, 1, tzinfo=timezone.utc)


def journal(config: Config, *finished: datetime, records: int = 0) -> list[ObjectId]:
    """Journaled jobs finished at ``finished``, each with ``records`` log records; their ids."""
    ids = [ObjectId() for _ in finished]

    async def insert(db: Database) -> None:
        await db.journal.insert_many([{"_id": job_id, "qual_name": "jobs.example.DummyJob", "state": "complete",
                                       "finished_at": at, "args": {"n": i}, "version": 2}
                                      for i, (job_id, at) in enumerate(zip(ids, finished))])
        if records:
            await db.log.insert_many([{"job_id": job_id, "seq": seq, "created": at, "level": "INFO",
                                       "message": f"{job_id} {seq}", "qual_name": "jobs.example.DummyJob",
                                       "trial": 1} for job_id, at in zip(ids, finished)
                                      for seq in range(1, records + 1)])
    in_database(config, insert)
    return ids


def lines(result: Result) -> list[dict[str, Any]]:
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_export_writes_finished_jobs_until_a_date_oldest_first_as_json_lines(
        run: Callable[..., Result], config: Config) -> None:
    ids = journal(config, DAY + timedelta(hours=5), DAY - timedelta(days=700), DAY + timedelta(days=2),
                  DAY - timedelta(days=1), datetime(2001, 1, 1, tzinfo=timezone.utc))
    result = run("journal", "export", "--until", "2026-03-02")
    exported = lines(result)
    assert [job["_id"] for job in exported] == [str(ids[i]) for i in (4, 1, 3, 0)]
    assert all(HEX_ID.match(job["_id"]) and ISO_UTC.match(job["finished_at"]) for job in exported)
    assert exported[0]["args"] == {"n": 4} and exported[0]["state"] == "complete"
    assert "exported 4 jobs" in result.stderr


def test_export_since_and_into_a_file(run: Callable[..., Result], config: Config, tmp_path: Path) -> None:
    ids = journal(config, DAY - timedelta(days=3), DAY - timedelta(days=1), DAY)
    target = tmp_path / "archive.jsonl"
    result = run("journal", "export", "--since", "2026-02-26T12:00:00", "--until", "2026-03-01",
                 "--output", str(target))
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert [json.loads(line)["_id"] for line in target.read_text().splitlines()] == [str(ids[1])]


def test_export_with_logs_follows_each_job_by_its_records(run: Callable[..., Result], config: Config) -> None:
    ids = journal(config, DAY - timedelta(days=2), DAY - timedelta(days=1), records=3)
    exported = lines(run("journal", "export", "--until", "2026-03-01", "--with-logs"))
    assert [(line.get("_id"), line.get("job_id"), line.get("seq")) for line in exported] == [
        (str(ids[0]), None, None), (None, str(ids[0]), 1), (None, str(ids[0]), 2), (None, str(ids[0]), 3),
        (str(ids[1]), None, None), (None, str(ids[1]), 1), (None, str(ids[1]), 2), (None, str(ids[1]), 3)]
    assert ISO_UTC.match(exported[1]["created"]) and exported[1]["message"] == f"{ids[0]} 1"


def test_export_needs_until_and_listing_the_journal_still_works(run: Callable[..., Result],
                                                                 config: Config) -> None:
    journal(config, DAY)
    result = run("journal", "export")
    assert result.exit_code == 2 and "--until" in result.output
    listed = run("journal", "--json")
    assert listed.exit_code == 0, listed.output
    assert json.loads(listed.stdout)["total_count"] == 1
