"""Prometheus metrics of one server process.

Request counts; jobs finished and their durations by ``qual_name``, counted
from the hub's change stream (every job any worker finishes, from this
server's start: with several servers, each counts them all); the hub's own
figures; and the queue, journal, job classes and workers, read at scrape time
(from ``core.stats``, which reads the counts ``core.counts`` keeps).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from core.permissions import READ, require_admin
from core.states import State
from core.stats import stats

if TYPE_CHECKING:
    from core.db import Database
    from core.hub import Hub

__all__ = ["Metrics", "DURATION_BUCKETS"]

#: Upper bounds of the job duration histogram, in seconds: 10 ms to 4 h.
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600, float("inf"))


class Metrics:
    """The metrics registry of a server process; ``watch`` a hub, then ``render`` (admin-only)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("jobdeck_http_requests", "HTTP requests answered", ["method", "code"],
                                registry=self.registry)
        self.finished = Counter("jobdeck_jobs_finished", "Jobs that reached a final state, seen by this server "
                                "since it started", ["qual_name", "state"], registry=self.registry)
        self.durations = Histogram("jobdeck_job_duration_seconds", "Run time of finished jobs (their last trial)",
                                   ["qual_name"], buckets=DURATION_BUCKETS, registry=self.registry)
        self.jobs = Gauge("jobdeck_jobs", "Jobs per collection and state", ["collection", "state"],
                          registry=self.registry)
        self.classes = Gauge("jobdeck_class_jobs", "Jobs per class and state (queue and journal)",
                             ["qual_name", "state"], registry=self.registry)
        self.oldest_pending = Gauge("jobdeck_oldest_pending_seconds", "Age of the oldest pending job",
                                    registry=self.registry)
        self.workers_alive = Gauge("jobdeck_workers_alive", "Workers with a heartbeat within the lease",
                                   registry=self.registry)
        self.last_minute = Gauge("jobdeck_jobs_finished_last_minute", "Jobs finished in the last minute",
                                 registry=self.registry)
        self.hub: Hub | None = None
        self.registry.register(_HubFigures(self))

    def watch(self, hub: Hub) -> None:
        """Count the jobs ``hub`` sees finish, and report its figures."""
        self.hub = hub
        hub.on_final.append(self.observe_final)

    def observe_request(self, method: str, code: int) -> None:
        """Count one answered request."""
        self.requests.labels(method, str(code)).inc()

    def observe_final(self, job: dict[str, Any]) -> None:
        """Count one job that reached a final state (its journal document)."""
        qual_name = str(job.get("qual_name"))
        self.finished.labels(qual_name, str(job.get("state"))).inc()
        runtime = job.get("runtime")
        if isinstance(runtime, (int, float)) and not isinstance(runtime, bool) and runtime >= 0:
            self.durations.labels(qual_name).observe(runtime)

    async def render(self, db: Database, *, user: dict[str, Any], lease_seconds: float) -> bytes:
        """The Prometheus text exposition; raises ``Forbidden`` unless ``user`` is an admin."""
        require_admin(user, READ)
        figures = await stats(db, user=user, lease_seconds=lease_seconds)
        for collection in ("queue", "journal"):
            for state, count in figures[collection].items():
                self.jobs.labels(collection, state).set(count)
        # Cleared first, so a class that has no jobs any more is no longer reported. No await
        # between here and generate_latest: a concurrent scrape never sees it half set.
        self.classes.clear()
        for qual_name, states in figures["classes"].items():
            for state in State:
                self.classes.labels(qual_name, state.value).set(states.get(state.value, 0))
        self.oldest_pending.set(figures["oldest_pending_seconds"] or 0)
        self.workers_alive.set(figures["workers_alive"])
        self.last_minute.set(figures["finished_per_minute"]["last_minute"])
        return generate_latest(self.registry)


class _HubFigures:
    """The hub's counters and subscriber count, read when scraped."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        hub = self.metrics.hub
        yield GaugeMetricFamily("jobdeck_hub_subscribers", "Open follower subscriptions",
                                value=hub.subscribers if hub else 0)
        yield CounterMetricFamily("jobdeck_hub_change_streams_opened", "Change streams the hub opened",
                                  value=hub.streams_opened if hub else 0)
        yield CounterMetricFamily("jobdeck_hub_events", "Change events the hub received",
                                  value=hub.events if hub else 0)
