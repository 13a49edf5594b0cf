"""Prometheus metrics: counters are counters, finished jobs are counted by class and state, jobs per class."""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import httpx

from core import queue
from core.db import Database
from core.retention import sweep
from core.states import State
from core.stats import stats
from handlers.app import Server
from tests.conftest import wait_for


def class_jobs(text: str) -> dict[str, dict[str, float]]:
    """Every ``jobdeck_class_jobs`` sample: qual_name -> state -> value."""
    found: dict[str, dict[str, float]] = {}
    for qual_name, state, value in re.findall(
            r'^jobdeck_class_jobs\{qual_name="([^"]*)",state="([^"]*)"\} (\S+)$', text, re.M):
        found.setdefault(qual_name, {})[state] = float(value)
    return found


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in a Prometheus text exposition (None if absent)."""
    inside = ",".join(f'{key}="{value}"' for key, value in labels.items())
    series = f"{name}{{{inside}}}" if labels else name
    found = re.search(rf"^{re.escape(series)} (\S+)$", text, re.M)
    return float(found.group(1)) if found else None


async def test_finished_jobs_are_counted_by_class_and_state_with_their_durations(server: Server, admin,
                                                                                 db: Database, worker):
    async with httpx.AsyncClient(base_url=server.url, auth=("admin", "hans"), timeout=30) as http:
        for qual_name in ("jobs.example.NoopJob", "jobs.example.NoopJob", "jobs.example.FailJob"):
            await queue.enqueue(db, qual_name, {}, user=admin, attempts=1)

        async def counted() -> str | None:
            text = (await http.get("/metrics")).text
            done = sample(text, "jobdeck_jobs_finished_total", qual_name="jobs.example.NoopJob", state="complete")
            failed = sample(text, "jobdeck_jobs_finished_total", qual_name="jobs.example.FailJob", state="error")
            return text if (done, failed) == (2, 1) else None

        text = await wait_for(counted, timeout=60, message="three finished jobs in /metrics")
    assert sample(text, "jobdeck_job_duration_seconds_count", qual_name="jobs.example.NoopJob") == 2
    assert sample(text, "jobdeck_job_duration_seconds_bucket", le="+Inf", qual_name="jobs.example.NoopJob") == 2
    assert 0 < sample(text, "jobdeck_job_duration_seconds_sum", qual_name="jobs.example.NoopJob") < 60


async def test_counters_that_only_grow_are_typed_as_counters(server: Server, admin):
    async with httpx.AsyncClient(base_url=server.url, auth=("admin", "hans"), timeout=30) as http:
        text = (await http.get("/metrics")).text
    for name in ("jobdeck_hub_events", "jobdeck_hub_change_streams_opened", "jobdeck_jobs_finished",
                 "jobdeck_http_requests"):
        assert f"# TYPE {name}_total counter" in text, name
    assert "# TYPE jobdeck_hub_subscribers gauge" in text
    assert sample(text, "jobdeck_hub_change_streams_opened_total") == 1
    assert "# TYPE jobdeck_job_duration_seconds histogram" in text


async def test_jobs_per_class_equal_the_counts_and_a_class_without_jobs_is_dropped(server: Server, admin,
                                                                                  db: Database, worker):
    async with httpx.AsyncClient(base_url=server.url, auth=("admin", "hans"), timeout=30) as http:
        for qual_name in ("jobs.example.NoopJob", "jobs.example.NoopJob", "jobs.example.FailJob"):
            await queue.enqueue(db, qual_name, {}, user=admin, attempts=1)
        await queue.enqueue(db, "jobs.example.DummyJob", {}, user=admin, delay=3600)  # waits, pending

        async def finished() -> dict[str, dict[str, float]] | None:
            found = class_jobs((await http.get("/metrics")).text)
            done = (found.get("jobs.example.NoopJob", {}).get("complete"),
                    found.get("jobs.example.FailJob", {}).get("error"))
            return found if done == (2, 1) else None

        found = await wait_for(finished, timeout=60, message="three finished jobs in jobdeck_class_jobs")
        # Nothing changes any more: the gauge is the counts, every state of a class (0 included).
        classes = (await stats(db, user=admin, lease_seconds=60))["classes"]
        assert found == {name: {state.value: float(states.get(state.value, 0)) for state in State}
                         for name, states in classes.items()}
        assert found["jobs.example.DummyJob"]["pending"] == 1
        assert found["jobs.example.NoopJob"]["pending"] == 0

        # The finished jobs leave the journal: their classes have no jobs, and are no longer reported.
        await sweep(db, 0, now=datetime.now(timezone.utc) + timedelta(days=1))
        found = class_jobs((await http.get("/metrics")).text)
    assert set(found) == {"jobs.example.DummyJob"}
    assert found["jobs.example.DummyJob"]["pending"] == 1
