"""Prometheus metrics of one server process: request counts, and job and worker figures at scrape time."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from core.permissions import require_admin
from core.stats import stats

if TYPE_CHECKING:
    from core.db import Database
    from core.hub import Hub

__all__ = ["Metrics"]


class Metrics:
    """The metrics registry of a server process; ``render`` is admin-only."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("jobdeck_http_requests", "HTTP requests answered", ["method", "code"],
                                registry=self.registry)
        self.jobs = Gauge("jobdeck_jobs", "Jobs per collection and state", ["collection", "state"],
                          registry=self.registry)
        self.oldest_pending = Gauge("jobdeck_oldest_pending_seconds", "Age of the oldest pending job",
                                    registry=self.registry)
        self.workers_alive = Gauge("jobdeck_workers_alive", "Workers with a heartbeat within the lease",
                                   registry=self.registry)
        self.finished = Gauge("jobdeck_jobs_finished_last_minute", "Jobs finished in the last minute",
                              registry=self.registry)
        self.subscribers = Gauge("jobdeck_hub_subscribers", "Open follower subscriptions",
                                 registry=self.registry)
        self.streams = Gauge("jobdeck_hub_change_streams_opened", "Change streams the hub opened",
                             registry=self.registry)
        self.events = Gauge("jobdeck_hub_events", "Change events the hub received", registry=self.registry)

    def observe_request(self, method: str, code: int) -> None:
        """Count one answered request."""
        self.requests.labels(method, str(code)).inc()

    async def render(self, db: Database, *, user: dict[str, Any], hub: Hub, lease_seconds: float) -> bytes:
        """The Prometheus text exposition; raises ``Forbidden`` unless ``user`` is an admin."""
        require_admin(user)
        figures = await stats(db, user=user, lease_seconds=lease_seconds)
        for collection in ("queue", "journal"):
            for state, count in figures[collection].items():
                self.jobs.labels(collection, state).set(count)
        self.oldest_pending.set(figures["oldest_pending_seconds"] or 0)
        self.workers_alive.set(figures["workers_alive"])
        self.finished.set(figures["finished_per_minute"]["last_minute"])
        self.subscribers.set(hub.subscribers)
        self.streams.set(hub.streams_opened)
        self.events.set(hub.events)
        return generate_latest(self.registry)
