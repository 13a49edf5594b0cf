"""``jobdeck audit``: the audit trail on the command line, as a table or ``--json``, with the filters of ``GET /audit``."""
from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import pytest
from bson import ObjectId
from click.testing import CliRunner, Result

import jobdeck.audit  # noqa: F401  (registers the command)
import jobdeck.users  # noqa: F401  (registers the commands)
from core.config import Config
from core.db import Database
from jobdeck.audit import compact
from jobdeck.cli import cli
from jobdeck.command import actor
from tests.conftest import in_database

FIELDS = {"_id", "at", "action", "actor", "target", "detail"}


pytestmark = pytest.mark.usefixtures("cli_isolated")


@pytest.fixture
def run(cli_env: dict[str, str]) -> Callable[..., Result]:
    runner = CliRunner()

    def invoke(*args: str) -> Result:
        return runner.invoke(cli, list(args), env=cli_env, prog_name="jobdeck")
    return invoke


def ok(result: Result) -> Result:
    assert result.exit_code == 0, f"exit {result.exit_code}: {result.output}\n{result.exception!r}"
    return result


def page(run: Callable[..., Result], *args: str) -> dict[str, Any]:
    return json.loads(ok(run("audit", "--json", *args)).stdout)


def seed(config: Config, entries: list[dict[str, Any]]) -> None:
    async def insert(db: Database) -> None:
        await db.audit.delete_many({})
        await db.audit.insert_many(entries)
    in_database(config, insert)


def test_the_table_shows_what_user_commands_wrote_newest_first(run):
    ok(run("user", "add", "alice", "--password", "alice-pw", "--perm", "job:jobs.example.*:r"))
    ok(run("user", "disable", "alice"))
    result = ok(run("audit"))
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["TIME", "ACTOR", "ACTION", "TARGET", "DETAIL"]
    rows = [line.split(None, 5) for line in lines[1:]]
    assert [(row[2], row[3], row[4]) for row in rows] == [(actor(), "user.disable", "alice"),
                                                          (actor(), "user.add", "alice")]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", " ".join(rows[0][:2]))
    assert rows[0][5] == "-"  # no detail
    assert rows[1][5] == 'roles=[] perms=["job:jobs.example.*:r"]'
    assert "page 1 of 1, 2 of 2 entries" in result.stderr


def test_filters_and_json(run, config):
    now = datetime.now(timezone.utc)
    seed(config, [
        {"at": now - timedelta(hours=5), "action": "job.enqueue", "actor": "bob", "target": "j1",
         "detail": {"qual_name": "jobs.example.DummyJob"}},
        {"at": now - timedelta(hours=3), "action": "job.kill", "actor": "bob", "target": "j1", "detail": {}},
        {"at": now - timedelta(hours=1), "action": "user.add", "actor": "carol", "target": "dave",
         "detail": {"roles": ["admin"], "perms": []}},
        {"at": now - timedelta(minutes=5), "action": "login.failed", "actor": "eve", "target": "eve",
         "detail": {"address": "10.0.0.7"}, "expires": now + timedelta(days=30)},
    ])

    def actions(*args: str) -> list[str]:
        return [entry["action"] for entry in page(run, *args)["items"]]

    everything = page(run)
    assert [entry["action"] for entry in everything["items"]] == ["login.failed", "user.add", "job.kill",
                                                                  "job.enqueue"]
    assert all(set(entry) == FIELDS for entry in everything["items"])  # never "expires"
    assert everything["total_count"] == 4 and everything["next"] is None
    assert actions("--user", "bob") == ["job.kill", "job.enqueue"]
    assert actions("--action", "job.*") == ["job.kill", "job.enqueue"]
    assert actions("--action", "job.kill") == ["job.kill"]
    assert actions("--target", "j1", "--user", "bob", "--action", "job.") == ["job.kill", "job.enqueue"]
    assert actions("--since", "2h") == ["login.failed", "user.add"]
    assert actions("--since", "4h", "--until", "2h") == ["job.kill"]
    until = (now - timedelta(hours=4)).replace(tzinfo=None).isoformat(timespec="seconds")
    assert actions("--until", until) == ["job.enqueue"]

    table = ok(run("audit", "--user", "carol")).stdout.splitlines()
    assert len(table) == 2 and table[1].endswith('roles=["admin"] perms=[]')
    assert ok(run("audit", "--user", "eve")).stdout.splitlines()[1].endswith("address=10.0.0.7")


def test_pages_follow_their_cursors_without_loss_or_repeats(run, config):
    now = datetime.now(timezone.utc).replace(microsecond=0)
    seed(config, [{"_id": ObjectId(), "at": now - timedelta(seconds=index // 2), "action": "job.kill",
                   "actor": "bob", "target": f"t{index}", "detail": {}} for index in range(11)])
    first = page(run, "--per-page", "3")
    seen, current = [], first
    while True:
        seen += [entry["target"] for entry in current["items"]]
        if not current["next"]:
            break
        current = page(run, "--per-page", "3", "--after", current["next"])
    assert len(seen) == 11 and set(seen) == {f"t{index}" for index in range(11)}
    back = page(run, "--per-page", "3", "--before", current["prev"])
    assert [entry["target"] for entry in back["items"]] == seen[6:9]
    numbered = [entry["target"] for number in range(4) for entry in page(run, "--per-page", "3", "--page",
                                                                         str(number))["items"]]
    assert numbered == seen
    table = ok(run("audit", "--per-page", "3"))
    assert "next: --after " in table.stderr and len(table.stdout.splitlines()) == 4


@pytest.mark.parametrize(("args", "message"), [
    (["--since", "yesterday"], "since: expected an ISO 8601 time"),
    (["--until", "2026-13-01"], "until: expected an ISO 8601 time"),
    (["--since", "2h", "--until", "3h"], "is later than until"),
    (["--user", "x" * 101], "user: at most 100 characters"),
    (["--action", "job*"], "action: expected an action such as job.kill"),
    (["--per-page", "0"], "per_page must be between 1 and 1000"),
    (["--after", "nonsense"], "after: not a cursor of this listing"),
])
def test_bad_filters_are_a_one_line_error(run, args, message):
    result = run("audit", *args)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert message in result.output and "Traceback" not in result.output


def test_compact_detail_writes_plain_words_bare_and_the_rest_as_json():
    assert compact({}) == "-" and compact(None) == "-"
    assert compact({"qual_name": "jobs.x.Y", "n": 3, "ok": True, "note": "two words", "new_id": None}) == \
        'qual_name=jobs.x.Y n=3 ok=true note="two words" new_id=null'
