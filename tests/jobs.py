"""Job classes the tests run (found with ``registry.discover(["tests.jobs"])``)."""
from __future__ import annotations

from jobs import Job


class NanResultJob(Job):
    """Returns a result JSON cannot carry."""

    def execute(self, value: str = "nan") -> dict:
        return {"ratio": float(value)}
