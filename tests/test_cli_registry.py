"""The command line registers the configured job packages itself, and ``jobdeck jobs`` says who runs what.

In process through click's CliRunner against this test's database (nothing
synced beforehand: the commands do it), and two real ``jobdeck worker``
processes with different job packages.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from bson import ObjectId
from click.testing import CliRunner, Result

import jobdeck.jobs  # noqa: F401  (registers the commands)
import jobdeck.service  # noqa: F401  (registers the commands)
from core import registry
from core.config import Config
from core.db import Database
from jobdeck.cli import cli
from tests.conftest import clean_env, forget_package, in_database, make_package, wait_until

DUMMY = "jobs.example.DummyJob"
ACME = '''
from jobs import Job


class Report(Job):
    """Writes the monthly report."""

    def execute(self, month: int = 1) -> dict:
        return {"month": month}
'''


@pytest.fixture
def acme(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An importable job package (here and in child processes): its name."""
    package = make_package(tmp_path, monkeypatch, {"report": ACME})
    yield package
    forget_package(package)


@pytest.fixture
def run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, config: Config, cli_env: dict[str, str]
        ) -> Iterator[Callable[..., Result]]:
    """``run("jobs", packages=[...])``: the command group against this test's empty database."""
    for name in list(os.environ):
        if name.startswith("JOBDECK_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()

    def invoke(*args: str, packages: list[str] = ()) -> Result:
        return runner.invoke(cli, list(args), env={**cli_env, "JOBDECK_JOB_PACKAGES": ",".join(packages)},
                             prog_name="jobdeck")
    yield invoke
    in_database(config, lambda db: db.client.drop_database(config.database))


def test_enqueue_works_before_any_worker_has_started(run: Callable[..., Result], config: Config,
                                                     acme: str) -> None:
    first = run("enqueue", DUMMY, "sleep=0")
    second = run("enqueue", f"{acme}.report.Report", "month=4", packages=[acme])

    assert first.exit_code == 0, first.output
    assert second.exit_code == 0, second.output
    jobs = in_database(config, lambda db: db.queue.find({}, {"qual_name": 1, "state": 1}).to_list())
    assert sorted((job["qual_name"], job["state"]) for job in jobs) == [
        (DUMMY, "pending"), (f"{acme}.report.Report", "pending")]
    assert {str(job["_id"]) for job in jobs} == {first.stdout.strip(), second.stdout.strip()}


def test_enqueue_of_a_class_nobody_registered_is_an_unknown_job(run: Callable[..., Result], acme: str) -> None:
    result = run("enqueue", f"{acme}.report.Report")  # the package is not configured here

    assert result.exit_code == 1
    assert f"unknown job '{acme}.report.Report'" in result.stderr


def test_jobs_shows_the_live_workers_of_each_class_and_names_broken_packages(
        run: Callable[..., Result], config: Config, acme: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    broken = make_package(tmp_path, monkeypatch, {"bad": "raise RuntimeError('bad job module')\n"})

    async def a_live_worker(db: Database) -> None:
        await db.setup(log_retention_days=1)
        await db.worker.insert_one({"_id": "web1:7:ab", "host": "web1", "heartbeat": datetime.now(timezone.utc),
                                    "import_errors": [{"module": "other_pkg", "error": "ImportError: nope"}]})
        await registry.sync(db, registry.discover(), provider=registry.Provider("web1:7:ab", "worker", "web1"))
    in_database(config, a_live_worker)

    result = run("jobs", packages=[acme, broken])

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["QUAL_NAME", "ARGUMENTS", "WORKERS", "DOC"]
    row = {line.split()[0]: line for line in lines[1:]}
    assert "web1:7:ab" in row[DUMMY]
    assert "none" in row[f"{acme}.report.Report"]  # registered here; jobs wait for a worker with it
    assert f"warning: cannot import job module {broken}.bad: RuntimeError: bad job module" in result.stderr
    assert "warning: worker web1:7:ab cannot import job module other_pkg: ImportError: nope" in result.stderr
    listed = {entry["_id"]: entry for entry in json.loads(run("jobs", "--json").stdout)}
    assert listed[DUMMY]["workers"] == [{"id": "web1:7:ab", "host": "web1"}]
    forget_package(broken)


# --- two real workers with different job packages -------------------------------------------------

@pytest.fixture
def worker_processes(config: Config, tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """``start(packages)``: a ``jobdeck worker`` on the test database (killed at teardown if still running)."""
    started: list[subprocess.Popen[str]] = []

    def start(packages: list[str]) -> subprocess.Popen[str]:
        env = clean_env(JOBDECK_MONGO_URL=config.mongo_url, JOBDECK_DATABASE=config.database,
                        JOBDECK_DATA_DIR=config.data_dir, JOBDECK_JOB_PACKAGES=",".join(packages),
                        JOBDECK_LEASE_SECONDS="4", JOBDECK_HEARTBEAT_SECONDS="1",
                        JOBDECK_SHUTDOWN_GRACE_SECONDS="1", JOBDECK_KILL_GRACE_SECONDS="1",
                        PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
        process = subprocess.Popen([sys.executable, "-m", "jobdeck", "worker", "--slots", "1"], env=env,
                                   cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(30)


def test_a_worker_with_other_packages_does_not_disable_the_first_workers_jobs(
        run: Callable[..., Result], config: Config, acme: str, worker_processes: Any) -> None:
    report = f"{acme}.report.Report"
    started: list[subprocess.Popen[str]] = []

    def offered_by(qual_name: str) -> int:
        entry = in_database(config, lambda db: db.registry.find_one({"_id": qual_name}))
        return len((entry or {}).get("offered_by") or [])

    def valid(qual_name: str) -> bool:
        return in_database(config, lambda db: db.registry.find_one({"_id": qual_name}))["valid"]

    def workers() -> int:
        for process in started:
            assert process.poll() is None, process.stderr.read()
        return in_database(config, lambda db: db.worker.count_documents({}))

    first = worker_processes([acme])
    started.append(first)
    wait_until(lambda: workers() == 1 and in_database(config, lambda db: db.registry.find_one({"_id": report})),
               timeout=60,
               message="the first worker to offer its classes")
    second = worker_processes([])  # no job_packages: it has only the example jobs
    started.append(second)
    wait_until(lambda: workers() == 2, timeout=60, message="the second worker to start")

    assert valid(report)
    wait_until(lambda: offered_by(DUMMY) == 2, timeout=60, message="the second worker to offer its classes")
    enqueued = run("enqueue", report, "month=1")  # the command line does not have the package either
    assert enqueued.exit_code == 0, enqueued.output
    job_id = ObjectId(enqueued.stdout.strip())
    wait_until(lambda: in_database(config, lambda db: db.journal.find_one({"_id": job_id})), timeout=60,
               message="the first worker to run the report")

    first.send_signal(signal.SIGTERM)
    assert first.wait(60) == 0, first.stderr.read()
    assert not valid(report) and valid(DUMMY)
    refused = run("enqueue", report)
    assert refused.exit_code == 1 and "is no longer available" in refused.stderr
    assert "withdrew the last offer" in first.stderr.read()
    second.send_signal(signal.SIGTERM)
    assert second.wait(60) == 0
