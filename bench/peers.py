"""Benchmark of jobdeck's worker against RQ's forking worker, run one after the other on the same machine.

    .venv/bin/python bench/peers.py [--jobs 1000] [--mongo-url URL]

Needs Debian's redis-server and the ``bench`` extra (rq, redis)::

    apt-get install redis-server
    .venv/bin/python -m pip install -e '.[embedded,dev,bench]'

Without them it prints how to install them on one line and exits 2.

Prints no-op jobs per second, ``--jobs`` jobs queued before the workers start:
- RQ: its own ``redis-server`` (no persistence: ``--save '' --appendonly no``)
  on a free port in a temporary directory, then 2 ``rq worker --burst``
  processes of the default forking ``rq.Worker`` class (a work-horse forked
  per job, as jobdeck forks a process per job), logging at WARNING; the job is
  ``peer_jobs.noop`` (``bench/peer_jobs.py``);
- jobdeck: 1 worker x 2 slots (the same 2 execution slots), fork server,
  ``jobs.example.NoopJob``, measured by ``engine.throughput`` on the embedded
  server (in memory) started after RQ's run, or on ``--mongo-url``;
- the ratio jobdeck / RQ.

Both clocks are the jobs' own timestamps and run from the first job's start to
the last job's end: for RQ ``started_at`` (set by the worker when it takes the
job, before the fork) to ``ended_at`` (set in the work-horse when the function
returns), for jobdeck the first claim to the last ``finished_at``. The start-up
of the worker processes is thus left out of both; RQ's is shown apart, as the
time from launching its workers to the last job's end. Their exit is not
timed: a burst worker's teardown can wait up to 60 s for its pubsub thread
(RQ 3.0 with redis-py 8), so once every job is done they get 5 s, then are
killed.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

from common import database, free_port  # also puts the project on sys.path

from bson import ObjectId  # noqa: E402
from engine import throughput  # noqa: E402

from core import queue, registry  # noqa: E402
from core.db import Database  # noqa: E402

BENCH = Path(__file__).resolve().parent
SLOTS = 2
INSTALL = ("bench/peers.py needs redis-server and the rq and redis packages: "
           "apt-get install redis-server; .venv/bin/python -m pip install -e '.[bench]'")


def missing() -> list[str]:
    """What is missing to run RQ: 'redis-server', 'rq', 'redis'."""
    absent = [] if shutil.which("redis-server") else ["redis-server"]
    return absent + [name for name in ("rq", "redis") if importlib.util.find_spec(name) is None]


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A redis-server of its own, without persistence, on a free port in a temporary directory; yields its URL."""
    from redis import Redis
    from redis.exceptions import ConnectionError as RedisConnectionError

    directory = tempfile.mkdtemp(prefix="jobdeck-peers-")
    port = free_port()
    log = Path(directory, "redis.log")
    process = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no", "--dir", directory, "--logfile", str(log)],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with Redis.from_url(url, socket_timeout=1) as client:
                    if client.ping():
                        break
            except RedisConnectionError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise RuntimeError(f"redis-server did not come up on port {port}:\n{tail}")
            time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(directory, ignore_errors=True)


def start_rq_worker(url: str) -> subprocess.Popen:
    """``rq worker --burst`` with the default forking worker class, importing ``peer_jobs`` from bench/."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RQ_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BENCH), env.get("PYTHONPATH")]))
    return subprocess.Popen([sys.executable, "-m", "rq.cli", "worker", "--burst", "--quiet",
                             "--disable-job-desc-logging", "--worker-class", "rq.Worker", "--url", url,
                             "--path", str(BENCH), "default"], env=env, cwd=BENCH, stdin=subprocess.DEVNULL)


def rq_run(count: int, timeout: float) -> tuple[float, float, float, str]:
    """(jobs per second, seconds from the first start to the last end, seconds from launching the workers to the
    last end, versions) for ``count`` queued no-op jobs and 2 burst workers."""
    from redis import Redis
    from rq import Queue
    from rq.job import Job, JobStatus

    from peer_jobs import noop

    with redis_server() as url, Redis.from_url(url) as connection:
        versions = (f"RQ {importlib.metadata.version('rq')}, "
                    f"redis-server {connection.info('server')['redis_version']}")
        rq_queue = Queue("default", connection=connection)
        # result_ttl: the finished jobs (and their timestamps) outlive a long run; the default is 500 s.
        ids = [job.id for job in rq_queue.enqueue_many([Queue.prepare_data(noop, result_ttl=86400)
                                                        for _ in range(count)])]
        done = [rq_queue.finished_job_registry, rq_queue.failed_job_registry]
        launched = time.time()
        workers = [start_rq_worker(url) for _ in range(SLOTS)]
        try:
            deadline = time.monotonic() + timeout
            while sum(registry_.get_job_count(cleanup=False) for registry_ in done) < count:
                if all(worker.poll() is not None for worker in workers):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the RQ workers did not finish {count} jobs in {timeout:.0f} s")
                time.sleep(0.1)
            # A burst worker exits when the queue is empty, but its teardown can wait up to 60 s for its pubsub
            # thread (RQ 3.0 with redis-py 8), which is no part of running jobs: 5 s, then it is killed.
            grace = time.monotonic() + 5
            for worker in workers:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    worker.wait(max(0.0, grace - time.monotonic()))
        finally:
            for worker in workers:
                if worker.poll() is None:
                    worker.kill()
                    worker.wait()
        if any(worker.returncode not in (0, -9) for worker in workers):
            raise RuntimeError(f"an RQ worker failed: exit statuses {[w.returncode for w in workers]}")
        jobs = Job.fetch_many(ids, connection=connection)
        finished = [job for job in jobs if job is not None and job.get_status(refresh=False) == JobStatus.FINISHED
                    and job.started_at and job.ended_at]
        if len(finished) < count:
            raise RuntimeError(f"only {len(finished)} of {count} RQ jobs finished "
                               f"(failed: {rq_queue.failed_job_registry.count})")
        first_start = min(job.started_at.timestamp() for job in finished)
        last_end = max(job.ended_at.timestamp() for job in finished)
        return count / (last_end - first_start), last_end - first_start, last_end - launched, versions


async def jobdeck_run(url: str, count: int) -> tuple[float, float]:
    """(jobs per second, seconds from the first claim to the last end) for 1 worker x 2 slots, as bench/engine.py."""
    db = Database.connect(url, f"bench_{ObjectId()}")
    try:
        await db.setup(log_retention_days=1)
        await registry.sync(db, registry.discover())
        return await throughput(db, queue.operator("bench"), count, url)
    finally:
        await db.client.drop_database(db.name)
        await db.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=1000, help="no-op jobs for each run")
    parser.add_argument("--timeout", type=float, default=600, help="seconds RQ's workers get for the jobs")
    parser.add_argument("--mongo-url", help="run jobdeck on this server instead of an embedded one")
    args = parser.parse_args()
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    if absent := missing():
        print(f"{INSTALL} (missing: {', '.join(absent)})", file=sys.stderr)
        return 2

    print(f"no-op jobs, {args.jobs} queued before the workers start, clock from the first job's start "
          f"to the last job's end:", flush=True)
    rq_rate, rq_seconds, rq_wall, versions = rq_run(args.jobs, args.timeout)
    print(f"  RQ      2 forking workers (burst), {versions}: {args.jobs} jobs in {rq_seconds:.1f} s = "
          f"{rq_rate:.0f} jobs/s ({rq_wall:.1f} s from launching the workers)", flush=True)
    with database(args.mongo_url) as mongo_url:
        rate, seconds = asyncio.run(jobdeck_run(mongo_url, args.jobs))
    print(f"  jobdeck 1 worker x {SLOTS} slots, fork server: {args.jobs} jobs in {seconds:.1f} s = "
          f"{rate:.0f} jobs/s")
    print(f"  jobdeck / RQ: {rate / rq_rate:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
