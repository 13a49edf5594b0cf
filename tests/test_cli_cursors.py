"""Keyset cursors on the command line: ``--after``/``--before`` of ``queue``, ``journal`` and ``log``.

A page prints, on stderr, the options that show the pages after and before it
(``next: --after CURSOR``, ``prev: --before CURSOR``); ``--json`` has them as
``next`` and ``prev``, as the HTTP API replies. A bad cursor is a one-line
error and exit 1.
"""
from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from bson import ObjectId
from click.testing import Result

from core.config import Config
from core.db import Database
from tests.conftest import in_database
from tests.test_cli_jobs import DUMMY, HEX_ID, as_json, fails, ok, run  # noqa: F401  (run: the CLI runner fixture)

Run = Callable[..., Result]


def cursors(result: Result) -> dict[str, str]:
    """The ``next``/``prev`` options a page printed on stderr: ``{"next": CURSOR, "prev": CURSOR}``."""
    ok(result)
    found = dict(re.findall(r"^(next|prev): --(?:after|before) (\S+)$", result.stderr, re.M))
    assert len(found) == len([line for line in result.stderr.splitlines() if line.startswith(("next", "prev"))])
    return found


def ids_of(result: Result) -> list[str]:
    """The ids of a table's rows."""
    return [line.split()[0] for line in ok(result).splitlines()[1:]]


def enqueue_many(run: Run, count: int) -> list[str]:
    """``count`` pending jobs of one priority, enqueued in this order; their ids."""
    lines = "".join(json.dumps({"qual_name": DUMMY, "args": {"message": str(n)}}) + "\n" for n in range(count))
    ids = ok(run("enqueue", "--from", "-", input=lines)).split()
    assert len(ids) == count and all(HEX_ID.match(i) for i in ids)
    return ids


def finished(config: Config, count: int, *, records: int = 0) -> list[str]:
    """``count`` journaled jobs, finished a minute apart up to now, newest first, each with ``records``
    log records; their ids in the journal's order."""
    now = datetime.now(timezone.utc)
    jobs = [{"_id": ObjectId(), "qual_name": DUMMY, "state": "complete", "finished_at": now - timedelta(minutes=n),
             "args": {}, "version": 2} for n in range(count)]

    async def insert(db: Database) -> None:
        await db.journal.insert_many(jobs)
        if records:
            await db.log.insert_many([{"job_id": job["_id"], "seq": seq, "created": now, "level": "INFO",
                                       "message": f"line {seq}", "qual_name": DUMMY, "trial": 1}
                                      for job in jobs for seq in range(1, records + 1)])
    in_database(config, insert)
    return [str(job["_id"]) for job in jobs]


def messages(result: Result) -> list[str]:
    """The messages of the log lines a ``log`` command printed."""
    return re.findall(r"(line \d+)$", ok(result), re.M)


# --- walking with the printed options -------------------------------------------------

def test_queue_is_walked_by_the_printed_after_and_back_by_before(run: Run) -> None:
    ids = enqueue_many(run, 5)
    first = run("queue", "--per-page", "2")
    assert ids_of(first) == ids[:2]
    assert "page 1 of 3, 2 of 5 jobs" in first.stderr
    assert set(cursors(first)) == {"next"}  # nothing before the first page

    seen, page = ids_of(first), first
    while "next" in cursors(page):
        page = run("queue", "--per-page", "2", "--after", cursors(page)["next"])
        assert "page ? of 3" in page.stderr
        seen += ids_of(page)
    assert seen == ids
    assert ids_of(page) == ids[4:] and set(cursors(page)) == {"prev"}

    back = run("queue", "--per-page", "2", "--before", cursors(page)["prev"])
    assert ids_of(back) == ids[2:4] and set(cursors(back)) == {"next", "prev"}


def test_journal_json_pages_carry_next_and_prev_for_a_script(run: Run, config: Config) -> None:
    ids = finished(config, 7)
    seen: list[str] = []
    cursor = ""  # a script's loop starts with an empty cursor: the first page
    while True:
        page = as_json(run("journal", "--json", "--per-page", "3", "--after", cursor))
        assert {"next", "prev", "total_exact", "items"} <= set(page)
        seen += [job["_id"] for job in page["items"]]
        if page["next"] is None:
            break
        cursor = page["next"]
    assert seen == ids
    assert page["page"] is None and page["prev"]
    before = as_json(run("journal", "--json", "--per-page", "3", "--before", page["prev"]))
    assert [job["_id"] for job in before["items"]] == ids[3:6]


def test_log_prints_the_whole_log_or_one_page_with_the_options_for_the_next(run: Run, config: Config) -> None:
    [job_id] = finished(config, 1, records=25)
    whole = run("log", job_id)
    assert messages(whole) == [f"line {n}" for n in range(1, 26)] and not whole.stderr.strip()

    first = run("log", job_id, "--per-page", "10")
    assert messages(first) == [f"line {n}" for n in range(1, 11)]
    assert "page 1 of 3, 10 of 25 records" in first.stderr and set(cursors(first)) == {"next"}
    second = run("log", job_id, "--per-page", "10", "--after", cursors(first)["next"])
    assert messages(second) == [f"line {n}" for n in range(11, 21)]
    assert set(cursors(second)) == {"next", "prev"}
    back = run("log", job_id, "--per-page", "10", "--before", cursors(second)["prev"])
    assert messages(back) == messages(first)

    assert messages(run("log", job_id, "--page", "-1", "--per-page", "10")) == [f"line {n}" for n in range(21, 26)]


def test_log_json_page_is_one_document_as_the_api_replies(run: Run, config: Config) -> None:
    [job_id] = finished(config, 1, records=12)
    lines = ok(run("log", job_id, "--json")).splitlines()
    assert [json.loads(line)["seq"] for line in lines] == list(range(1, 13))  # no page: JSON lines, as before

    seqs: list[int] = []
    page: dict[str, Any] = {"next": ""}
    while page["next"] is not None:
        page = as_json(run("log", job_id, "--json", "--per-page", "5", "--after", page["next"]))
        assert page["per_page"] == 5 and page["total_count"] == 12
        seqs += [record["seq"] for record in page["items"]]
    assert seqs == list(range(1, 13))
    # An empty cursor alone is a page too (the first), not the whole log.
    first = as_json(run("log", job_id, "--json", "--after", ""))
    assert [record["seq"] for record in first["items"]] == list(range(1, 13)) and first["per_page"] == 100


# --- refused cursors --------------------------------------------------------------------

def one_line_error(result: Result, *fragments: str) -> None:
    """Exit 1 with a one-line message holding ``fragments`` (no traceback), nothing on stdout."""
    fails(result, *fragments, code=1)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not result.stdout


def test_a_tampered_or_foreign_cursor_is_a_one_line_error(run: Run, config: Config) -> None:
    job_id, other = finished(config, 2, records=3)
    log_cursor = cursors(run("log", job_id, "--per-page", "1"))["next"]
    journal_cursor = cursors(run("journal", "--per-page", "1"))["next"]
    body, mac = log_cursor.split(".")
    tampered = body[:-2] + ("A" if body[-2] != "A" else "B") + body[-1] + "." + mac

    not_a_cursor = "after: not a cursor of this listing"
    one_line_error(run("log", job_id, "--after", tampered), not_a_cursor)
    one_line_error(run("log", job_id, "--after", "garbage"), not_a_cursor)
    one_line_error(run("log", other, "--after", log_cursor), not_a_cursor)  # another job's log
    one_line_error(run("queue", "--after", journal_cursor), not_a_cursor)
    one_line_error(run("journal", "--json", "--after", log_cursor), not_a_cursor)
    one_line_error(run("journal", "--before", journal_cursor), "this is an after cursor; pass it as after")
    one_line_error(run("journal", "--sort", "_id", "--after", journal_cursor), "the cursor was made for sort")
    one_line_error(run("log", job_id, "--after", log_cursor, "--before", log_cursor), "give after or before, not both")
    one_line_error(run("journal", "--page", "1", "--after", journal_cursor), "give after or page, not both")


def test_follow_takes_no_page_options(run: Run, config: Config) -> None:
    [job_id] = finished(config, 1, records=1)
    fails(run("log", job_id, "--follow", "--after", "x"), "--follow prints the whole log", code=2)
    fails(run("log", job_id, "--follow", "--per-page", "5"), "--follow prints the whole log", code=2)
