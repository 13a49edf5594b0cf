"""Prometheus metrics: counters are counters, and finished jobs are counted by class and state."""
from __future__ import annotations

import re

import httpx

from core import queue
from core.db import Database
from handlers.app import Server
from tests.conftest import wait_for


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
