"""Run blocking or CPU-heavy work off the event loop, on a bounded thread pool."""
from __future__ import annotations

import asyncio
import functools
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

__all__ = ["run_blocking"]

T = TypeVar("T")

# Argon2 releases the GIL, so a few threads verify passwords in parallel; more
# would only make each verification slower on a small machine.
_executor = ThreadPoolExecutor(max_workers=max(2, min(8, (os.cpu_count() or 1) + 1)),
                               thread_name_prefix="jobdeck-blocking")


async def run_blocking(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call ``fn(*args, **kwargs)`` in the shared pool and await its result."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_executor, functools.partial(fn, *args, **kwargs))
