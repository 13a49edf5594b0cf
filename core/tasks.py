"""Stopping a long-lived task for sure.

A task blocked inside the driver (server selection during an outage) may
swallow one cancellation and carry on; ``stop_task`` cancels until it has ended.
"""
from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["stop_task"]


async def stop_task(task: asyncio.Task[Any] | None, *, every: float = 1.0) -> None:
    """Cancel ``task`` and wait until it has ended, cancelling again every ``every`` seconds."""
    while task is not None and not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=every)
    if task is not None and not task.cancelled():
        task.exception()  # retrieved: ending with an error is fine here
