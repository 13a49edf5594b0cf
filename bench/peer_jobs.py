"""The no-op job RQ's workers run in ``bench/peers.py`` (imported by them as ``peer_jobs``)."""
from __future__ import annotations

__all__ = ["noop"]


def noop() -> None:
    """Does nothing: what is measured is the queue and the work-horse around it."""
    return None
