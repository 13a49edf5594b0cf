"""What a job returns: results that JSON cannot carry end the job with a clear error."""
from __future__ import annotations

from typing import Any

import pytest

from core import queue, registry
from core.db import Database
from tests.conftest import wait_for

ADMIN = queue.operator("test")


@pytest.fixture
async def job_classes(db: Database) -> dict[str, Any]:
    """The example jobs and ``tests.jobs``, registered (the worker fixture runs these)."""
    found = registry.discover(["tests.jobs"])
    await registry.sync(db, found)
    return found


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
async def test_a_result_with_nan_or_infinity_ends_the_job_error_naming_it(db: Database, worker, client,
                                                                          admin, value: str) -> None:
    job = await queue.enqueue(db, "tests.jobs.NanResultJob", {"value": value}, user=ADMIN, attempts=1)

    done = await wait_for(lambda: db.journal.find_one({"_id": job["_id"]}), message="the job to end")

    assert done["state"] == "error" and done["result"] is None
    assert done["last_error"]["exception"] == "ValueError"
    assert "NaN or Infinity" in done["last_error"]["message"]
    reply = await client.get(f"/job/{job['_id']}", auth=("admin", "hans"))
    assert reply.status_code == 200 and reply.json()["data"]["state"] == "error"  # valid JSON
