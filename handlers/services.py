"""What the handlers of one server process share: configuration, database, authenticator, hub, caps."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from core.audit import RecordedInserts
from core.auth import Authenticator
from core.cache import Cache
from core.config import Config
from core.db import Database
from core.events import JobEvents
from core.hub import Hub
from core.metrics import Metrics
from core.proxies import TrustedProxies
from core.streams import StreamLimit

__all__ = ["Services"]


@dataclass
class Services:
    """The shared services of the handlers, kept in the application's settings.

    ``routes`` is the route table the application was built from (the OpenAPI
    document describes it). ``registry_cache`` holds the registry entries
    enqueue reads (``core.cache``), and ``job_inserts`` writes the jobs of
    concurrent enqueues together (``core.audit``), if any. ``proxies`` holds
    ``trusted_proxies`` parsed (``core.proxies``). ``job_import_errors`` are
    the job modules this process could not import (``registry.discover``).
    """

    config: Config
    db: Database
    auth: Authenticator
    hub: Hub
    routes: list[tuple[str, type]] = field(default_factory=list)
    metrics: Metrics = field(default_factory=Metrics)
    keepalive: float = 15.0
    started: float = field(default_factory=time.monotonic)
    streams: StreamLimit | None = None
    registry_cache: Cache | None = None
    job_inserts: RecordedInserts | None = None
    proxies: TrustedProxies | None = None
    job_import_errors: list[dict[str, str]] = field(default_factory=list)
    #: Every job change, filtered for each client of ``GET /job/events`` (``core.events``); fed by ``hub``.
    events: JobEvents | None = None

    def __post_init__(self) -> None:
        if self.events is None:
            self.events = JobEvents(self.hub)
        if self.streams is None:
            self.streams = StreamLimit(per_user=self.config.max_streams_per_user,
                                       total=self.config.max_streams)
        self.metrics.watch(self.hub)
        if self.proxies is None:
            self.proxies = TrustedProxies(self.config.trusted_proxies)
