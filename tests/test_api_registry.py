"""``GET /job/list`` says which live workers offer each job class; ``GET /health`` names broken job modules."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, AsyncIterator

import httpx
import pytest

from core import registry
from core.config import Config
from core.db import Database
from handlers.app import Server
from tests.conftest import forget_package, make_package

DUMMY = "jobs.example.DummyJob"


async def offering_worker(db: Database, worker_id: str, host: str, *, age: float = 0.0) -> None:
    """A worker document with a heartbeat ``age`` seconds old, offering the example jobs."""
    await db.worker.insert_one({"_id": worker_id, "host": host, "pid": 1, "slots": 1, "running": [],
                                "heartbeat": datetime.now(timezone.utc) - timedelta(seconds=age)})
    await registry.sync(db, registry.discover(), provider=registry.Provider(worker_id, "worker", host))


async def listed(http: httpx.AsyncClient) -> dict[str, Any]:
    reply = await http.get("/job/list", params={"per_page": 100})
    assert reply.status_code == 200, reply.text
    return {entry["_id"]: entry for entry in reply.json()["data"]}


async def test_job_list_names_the_live_workers_of_each_class(db: Database, job_classes: Any,
                                                             team_clients: dict[str | None, httpx.AsyncClient]
                                                             ) -> None:
    assert (await listed(team_clients["admin"]))[DUMMY]["workers"] == []  # registered, no worker yet
    await offering_worker(db, "alive:1:aa", "web1")
    await offering_worker(db, "dead:1:bb", "web2", age=600)

    admin = await listed(team_clients["admin"])
    executor = await listed(team_clients["executor"])

    assert admin[DUMMY]["workers"] == [{"id": "alive:1:aa", "host": "web1"}]
    assert "offered_by" not in admin[DUMMY]
    assert executor[DUMMY]["workers"] == [{"id": "alive:1:aa"}]  # hosts are for admins (as GET /worker)
    refused = await team_clients["admin"].get("/job/list", params={"sort": "offered_by"})
    assert refused.status_code == 400


@pytest.fixture
async def broken_server(config: Config, db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                        ) -> AsyncIterator[tuple[Server, str]]:
    """A server whose process found a job package with a module that fails to import."""
    package = make_package(tmp_path, monkeypatch, {"broken": "import no_such_dependency_here\n"})
    found = registry.discover([package], log_errors=False)
    server = Server(config, db, job_import_errors=found.import_errors)
    await server.start()
    yield server, package
    await server.stop()
    forget_package(package)


async def test_health_names_the_job_modules_this_server_could_not_import(broken_server: tuple[Server, str]
                                                                        ) -> None:
    server, package = broken_server
    async with httpx.AsyncClient(base_url=server.url) as http:
        reply = await http.get("/health")

    assert reply.status_code == 200
    assert reply.json()["data"]["job_import_errors"] == [
        {"module": f"{package}.broken", "error": "ModuleNotFoundError: No module named 'no_such_dependency_here'"}]


async def test_health_of_a_server_that_imported_everything_lists_no_errors(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health")).json()["data"]["job_import_errors"] == []
