"""Caps on long-lived requests: event streams, long polls and stop waits, per user and in all.

Each open one holds a slot for as long as it lasts. A caller past
``per_user`` slots, or a server past ``total``, is refused with
``TooManyRequests`` (429), so one user cannot tie up the server's
connections and memory with streams.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

from core.errors import TooManyRequests

__all__ = ["StreamLimit"]

_RETRY_AFTER = 5  # s: streams end when their job does; try again soon


class StreamLimit:
    """Counts open long-lived requests per user name; ``with limit.slot(name):`` holds one."""

    def __init__(self, *, per_user: int, total: int) -> None:
        self.per_user = per_user
        self.total = total
        self._open: dict[str, int] = {}
        self.open = 0  # slots held now, by all users

    @contextlib.contextmanager
    def slot(self, name: str) -> Iterator[None]:
        """Hold a slot for ``name`` while the block runs; raise ``TooManyRequests`` if none is free."""
        held = self._open.get(name, 0)
        if held >= self.per_user:
            raise TooManyRequests(f"user {name!r} already has {held} open streams and long polls "
                                  f"(the limit is {self.per_user}); close one first",
                                  retry_after=_RETRY_AFTER)
        if self.open >= self.total:
            raise TooManyRequests(f"the server has {self.total} open streams and long polls, its limit; "
                                  "try again later", retry_after=_RETRY_AFTER)
        self._open[name] = held + 1
        self.open += 1
        try:
            yield
        finally:
            self.open -= 1
            left = self._open[name] - 1
            if left:
                self._open[name] = left
            else:
                del self._open[name]
