"""Fixtures: one embedded server per session, a fresh database per test, a real HTTP server."""
from __future__ import annotations

import os
import socket
import uuid
from typing import Any, AsyncIterator, Iterator

import httpx
import pytest

from core import users
from core.config import Config
from core.db import Database
from core.embedded import EmbeddedServer
from handlers.app import Server


@pytest.fixture(scope="session")
def mongo_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One secantusd-py for the whole session, in memory, with test commands."""
    server = EmbeddedServer(tmp_path_factory.mktemp("secantus"), storage=":memory:", test_commands=True)
    url = server.start(write_state=False)
    yield url
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
    await database.client.drop_database(config.database)
    await database.close()


@pytest.fixture
def cli_env(config: Config) -> dict[str, str]:
    """Environment for command-line runs against this test's database."""
    return {"JOBDECK_MONGO_URL": config.mongo_url, "JOBDECK_DATABASE": config.database,
            "JOBDECK_DATA_DIR": config.data_dir}


@pytest.fixture
async def admin(db: Database) -> dict[str, Any]:
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
