"""Fixtures: one embedded server per session, a fresh database per test, a real HTTP server."""
from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import inspect
import os
import socket
import ssl
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator

import httpx
import pytest

from core import registry, users
from core.config import Config
from core.db import Database
from core.embedded import EmbeddedServer
from core.job import Job
from core.worker import Worker
from handlers.app import Server


@pytest.fixture(scope="session")
def mongo_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One secantusd-py for the whole session, in memory, with test commands."""
    server = EmbeddedServer(tmp_path_factory.mktemp("secantus"), storage=":memory:", test_commands=True)
    url = server.start(write_state=False)
    yield url
    server.stop()


@pytest.fixture
def own_server(tmp_path: Path) -> Any:
    """An embedded server of the test's own, on disk (its data survives a restart), on a stable port."""
    servers: list[EmbeddedServer] = []

    def start() -> str:
        server = EmbeddedServer(tmp_path / "db", test_commands=True)
        servers.append(server)
        return server.start()

    def stop() -> None:
        servers[-1].stop()

    yield start, stop
    for server in servers:
        if server.process is not None and server.process.poll() is None:
            server.stop()


@pytest.fixture
def database_name() -> str:
    return f"test_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def config(mongo_url: str, database_name: str, tmp_path) -> Config:
    return Config(mongo_url=mongo_url, database=database_name, data_dir=str(tmp_path / "var"),
                  port=0, lease_seconds=5, heartbeat_seconds=1)


@pytest.fixture
async def db(config: Config) -> AsyncIterator[Database]:
    database = Database.connect(config.mongo_url, config.database)
    await database.setup(log_retention_days=config.log_retention_days)
    yield database
    # A worker process the test SIGKILLed in a transaction, or a fault the test made in one of its
    # own, left it open, its locks held for the server's transaction lifetime (60 s): dropping the
    # database would wait for them (and, on the embedded server, stall every command meanwhile).
    sessions = [lsid async for worker in database.worker.find({}, {"sessions": 1})
                for lsid in worker.get("sessions") or ()]
    sessions += list(database.sessions.values())
    if sessions:
        await database.kill_sessions(sessions)
    await database.client.drop_database(config.database)
    await database.close()


#: The users of the API tests: name -> (password, roles, permissions).
TEAM = {
    "admin": ("hans", ["admin"], []),
    "executor": ("exec-pw", [], ["job:jobs.example.*:x"]),
    "reader": ("read-pw", [], ["job:jobs.example.*:r"]),
    "stranger": ("other-pw", [], ["job:other.*:x"]),
}
_TEAM_DOCS: list[dict[str, Any]] = []  # as users.add stored them: argon2 is slow, so hash once per session


@functools.cache
def _client_tls() -> ssl.SSLContext:
    return ssl.create_default_context()


@pytest.fixture
async def team(db: Database) -> dict[str, dict[str, Any]]:
    """The ``TEAM`` users in the test database (``admin`` is admin/hans), by name.

    The first test creates them with ``users.add``; later ones get copies of
    those documents, hashes included. Not to be combined with ``admin``.
    """
    if not _TEAM_DOCS:
        for name, (password, roles, perms) in TEAM.items():
            await users.add(db, name, password, roles=roles, perms=perms, actor="test")
        _TEAM_DOCS.extend(await db.user.find({"name": {"$in": list(TEAM)}}).to_list())
    else:
        await db.user.insert_many([dict(doc) for doc in _TEAM_DOCS])
    return {doc["name"]: doc for doc in _TEAM_DOCS}


@pytest.fixture
async def team_clients(server: Server, team: dict[str, dict[str, Any]]
                       ) -> AsyncIterator[dict[str | None, httpx.AsyncClient]]:
    """A client per ``TEAM`` user, and an anonymous one under ``None``.

    They authenticate with bearer tokens of the server's authenticator (what
    ``POST /login`` hands out): Basic auth would cost an argon2 verification
    per user and server, and ``test_api_auth`` covers it.
    """
    # One TLS context for all: building one per client costs more than the test.
    verify = _client_tls()
    opened: dict[str | None, httpx.AsyncClient] = {None: httpx.AsyncClient(base_url=server.url, timeout=30,
                                                                            verify=verify)}
    for name, user in team.items():
        token, _ = await server.auth.issue_token(user)
        opened[name] = httpx.AsyncClient(base_url=server.url, timeout=30, verify=verify,
                                         headers={"Authorization": f"Bearer {token}"})
    yield opened
    for http in opened.values():
        await http.aclose()


class SessionAuth(httpx.Auth):
    """httpx auth by a login session of ``user`` on ``server``, started at the first request
    (what ``POST /login`` hands out, without its argon2 verification)."""

    def __init__(self, server: Server, user: dict[str, Any]) -> None:
        self.server = server
        self.user = user
        self.token: str | None = None

    async def async_auth_flow(self, request: httpx.Request) -> Any:
        if self.token is None:
            self.token, _ = await self.server.auth.issue_token(self.user)
        request.headers["Authorization"] = f"Bearer {self.token}"
        yield request


@pytest.fixture
def cli_isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, config: Config) -> Iterator[None]:
    """For in-process command-line tests: no JOBDECK_* settings or ./jobdeck.toml from outside;
    the test database dropped afterwards (the commands' own clients made it)."""
    for name in list(os.environ):
        if name.startswith("JOBDECK_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    yield
    in_database(config, lambda db: db.client.drop_database(config.database))


@pytest.fixture
def cli_env(config: Config) -> dict[str, str]:
    """Environment for command-line runs against this test's database."""
    return {"JOBDECK_MONGO_URL": config.mongo_url, "JOBDECK_DATABASE": config.database,
            "JOBDECK_DATA_DIR": config.data_dir}


_ADMIN_HASH: list[str] = []  # the argon2 hash of "hans" the first ``admin`` made


@pytest.fixture
async def admin(db: Database) -> dict[str, Any]:
    """admin/hans, added with ``users.add`` (its audit entry too).

    argon2 is slow (a quarter of a second): the first test hashes "hans",
    later ones get that hash again (its salt is in it, so it verifies).
    """
    if not _ADMIN_HASH:
        user = await users.add(db, "admin", "hans", roles=["admin"], actor="test")
        _ADMIN_HASH.append((await db.user.find_one({"name": "admin"}))["password"])
        return user
    real = users.PASSWORDS.hash
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(users.PASSWORDS, "hash", lambda secret, **kw: _ADMIN_HASH[0] if secret == "hans"
                      else real(secret, **kw))
        return await users.add(db, "admin", "hans", roles=["admin"], actor="test")


@pytest.fixture
async def server(config: Config, db: Database) -> AsyncIterator[Server]:
    http = Server(config, db)
    await http.start()
    yield http
    await http.stop()


@pytest.fixture
async def client(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        yield http


@pytest.fixture
async def job_classes(db: Database) -> dict[str, type[Job]]:
    """The discovered job classes, synced into the test database's registry (so they can be enqueued)."""
    found = registry.discover()
    await registry.sync(db, found)
    return found


@pytest.fixture
async def worker_factory(db: Database, config: Config,
                         job_classes: dict[str, type[Job]]) -> AsyncIterator[Callable[..., Awaitable[Worker]]]:
    """``await worker_factory()`` starts an in-process worker on the test database (stopped at teardown)."""
    started: list[Worker] = []

    async def start(*, slots: int = 4, kill_grace: float = 0.5, shutdown_grace: float = 0.2,
                    lease_seconds: float | None = None, heartbeat_seconds: float = 0.5,
                    poll_seconds: float = 0.2, job_start: str = "fork", **changes: Any) -> Worker:
        settings = dataclasses.replace(config, heartbeat_seconds=heartbeat_seconds,
                                       lease_seconds=lease_seconds or config.lease_seconds, job_start=job_start,
                                       **changes)
        worker = Worker(db, settings, classes=job_classes, slots=slots, kill_grace=kill_grace,
                        shutdown_grace=shutdown_grace, poll_seconds=poll_seconds)
        await worker.start()
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.hurry()
        await worker.stop()


@pytest.fixture
async def worker(worker_factory: Callable[..., Awaitable[Worker]]) -> Worker:
    """An in-process worker (4 slots, kill grace 0.5 s) running for the whole test."""
    return await worker_factory()


_WORKER_SCRIPT = """
import asyncio, json, sys
from core import registry
from core.config import Config
from core.db import Database
from core.worker import Worker

async def main(url, name, job_start, slots, lease, settings="{}"):
    config = Config(mongo_url=url, database=name, lease_seconds=float(lease), heartbeat_seconds=0.5,
                    job_start=job_start, **json.loads(settings))
    db = Database.connect(url, name)
    await db.setup(log_retention_days=config.log_retention_days)
    classes = registry.discover()
    await registry.sync(db, classes)
    worker = Worker(db, config, classes=classes, slots=int(slots), kill_grace=0.5, poll_seconds=0.2)
    await worker.start()
    print("started", worker.id, flush=True)
    await asyncio.Event().wait()

asyncio.run(main(*sys.argv[1:7]))
"""


async def worker_process(config: Config, *, job_start: str = "fork", slots: int = 1, lease_seconds: float = 3,
                         stderr: Any = asyncio.subprocess.DEVNULL, **settings: Any) -> asyncio.subprocess.Process:
    """A worker in a process of its own (and its own session: ``os.killpg`` kills it whole), once started.

    Heartbeat every 0.5 s; the example jobs; ``settings``: further ``Config`` fields (e.g. ``worker_tags``).
    Its first line on stdout was ``started <id>``.
    """
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _WORKER_SCRIPT, config.mongo_url, config.database, job_start, str(slots),
        str(lease_seconds), json.dumps(settings), cwd=Path(__file__).resolve().parents[1], stdout=asyncio.subprocess.PIPE,
        stderr=stderr, start_new_session=True)
    line = await asyncio.wait_for(process.stdout.readline(), 30)
    assert line.startswith(b"started"), f"the worker process did not start: {line!r}"
    return process


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """os.environ without JOBDECK_ settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBDECK_")}
    env.update(extra)
    return env


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.05, message: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value; fail after ``timeout`` seconds."""
    import time
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {message}")
        time.sleep(interval)


async def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.02,
                   message: str = "condition") -> Any:
    """``wait_until`` for async tests: poll ``predicate`` (sync or async) without blocking the loop."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {message}")
        await asyncio.sleep(interval)


def in_database(config: Config, work: Callable[[Database], Awaitable[Any]]) -> Any:
    """Run ``work(db)`` on a fresh loop with a fresh client, the way the CLI does (for sync tests)."""
    async def main() -> Any:
        db = Database.connect(config.mongo_url, config.database)
        try:
            return await work(db)
        finally:
            await db.close()
    return asyncio.run(main())


def make_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, modules: dict[str, str]) -> str:
    """Write a uniquely named package of ``modules`` under ``tmp_path``, importable; return its name."""
    name = f"testjobs_{uuid.uuid4().hex[:8]}"
    package = tmp_path / name
    package.mkdir()
    (package / "__init__.py").write_text('"""Test jobs."""\n')
    for module, source in modules.items():
        (package / f"{module}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def forget_package(name: str) -> None:
    """Drop a test package's modules from ``sys.modules``."""
    for module in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[module]
