"""A job package outside the installed ones, found through ``job_paths`` by every process that needs it."""
from __future__ import annotations

import json
import textwrap
import uuid
from pathlib import Path

from tests.test_cli_jobs import Deck

REPORT = '''
from jobs import Job


class Report(Job):
    """Builds the monthly report."""

    def execute(self, month: str, rows: int = 3) -> dict:
        self.logger.info("report for %s", month)
        return {"month": month, "rows": rows}
'''


def test_a_package_on_job_paths_is_registered_and_run_by_a_forked_job_process(tmp_path: Path) -> None:
    source = tmp_path / "src"
    package = source / f"acme_{uuid.uuid4().hex[:8]}"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "report.py").write_text(textwrap.dedent(REPORT))
    data_dir = tmp_path / "var"
    data_dir.mkdir()
    deck = Deck(data_dir)  # runs in data_dir: the package is not on the import path by itself
    deck.env.update(JOBDECK_JOB_PACKAGES=package.name, JOBDECK_JOB_PATHS=str(source))
    deck.start()
    try:
        listed = json.loads(deck.ok("jobs", "--json"))
        assert f"{package.name}.report.Report" in [entry["_id"] for entry in listed]
        deck.ok("enqueue", f"{package.name}.report.Report", "month=202611", "--follow")
        [job] = json.loads(deck.ok("journal", "--json"))["items"]
        assert job["state"] == "complete" and job["result"] == {"month": "202611", "rows": 3}
        assert "cannot import" not in deck.log()
    finally:
        assert deck.stop() == 0
