"""What the benchmarks share: a database server, a jobdeck server process, percentiles."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.db import Database  # noqa: E402
from core.embedded import EmbeddedServer  # noqa: E402

__all__ = ["ROOT", "database", "drop_database", "jobdeck_server", "percentile", "free_port"]


def percentile(values: list[float], fraction: float) -> float:
    """The ``fraction`` percentile of ``values`` (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def database(url: str | None) -> Iterator[str]:
    """``url``, or a fresh in-memory embedded server for the run."""
    if url:
        yield url
        return
    server = EmbeddedServer(tempfile.mkdtemp(prefix="jobdeck-bench-"), storage=":memory:")
    try:
        yield server.start(write_state=False)
    finally:
        server.stop()


@contextlib.contextmanager
def jobdeck_server(url: str, database_name: str, *, password: str = "bench",
                   **settings: object) -> Iterator[tuple[str, subprocess.Popen]]:
    """A ``jobdeck serve`` process on a free port; yields (API base URL, process).

    ``settings`` are configuration keys, e.g. ``max_streams_per_user=2000``.
    """
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBDECK_")}
    env.update(JOBDECK_MONGO_URL=url, JOBDECK_DATABASE=database_name, JOBDECK_PORT=str(port),
               JOBDECK_ADMIN_PASSWORD=password, JOBDECK_LOG_LEVEL="WARNING")
    env.update({f"JOBDECK_{key.upper()}": str(value) for key, value in settings.items()})
    process = subprocess.Popen([sys.executable, "-m", "jobdeck", "serve"], env=env, cwd=ROOT)
    base = f"http://127.0.0.1:{port}/api/v1"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("jobdeck serve did not come up")
            time.sleep(0.1)
        yield base, process
    finally:
        process.terminate()
        process.wait(30)


async def drop_database(url: str, name: str) -> None:
    """Drop the benchmark's database ``name``."""
    db = Database.connect(url, name)
    await db.client.drop_database(name)
    await db.close()
