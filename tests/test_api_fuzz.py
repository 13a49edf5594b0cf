"""Schemathesis against ``/api/v1/openapi.json``: generated bad input never gets a 500, and every reply is
what the document says (status, content type, headers, body, each event of a stream).

Three runs of the ``st`` command line against a real server on the test
database: one as admin with the generated arguments and bodies, and one
whose credentials (Basic, Bearer, cookie) are generated too, as UTF-8 text,
so non-ASCII header values reach the server; no worker runs for these, so
they enqueue without following. The third also follows the document's
links (its stateful phase enqueues a job, then follows, kills, restarts
it...); a worker runs and the registry holds ``NoopJob`` alone, so every
job a generated request starts ends at once and every stream closes.

The coverage phase is left out: on CPython 3.11.7 it trips an interpreter bug
in hypothesis' source inspection ("AST constructor recursion depth
mismatch"), a failure of the tool, not of the server (still so with
schemathesis 4.32.5).
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import shutil
import sys
from pathlib import Path
from typing import AsyncIterator

import httpx
import pytest

from core import registry, users
from core.config import Config
from core.db import Database
from core.worker import Worker

ST = shutil.which("st") or str(Path(sys.executable).with_name("st"))
pytestmark = pytest.mark.skipif(not Path(ST).exists(), reason="schemathesis is not installed")

COMMON = ["--generation-deterministic", "--generation-codec", "utf-8", "--workers", "2", "--request-timeout", "5",
          "--no-color"]
CHECKS = ["--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
          "response_schema_conformance,response_headers_conformance"]
FUZZING = CHECKS + ["--phases", "examples,fuzzing"]
CONFORMANCE = CHECKS + ["--phases", "examples,fuzzing,stateful"]
NOOP = "jobs.example.NoopJob"
#: The class the run with a worker may pause: never NoopJob, whose jobs it follows to their end.
FAIL = "jobs.example.FailJob"

#: Without a worker, the stream of a job a generated request enqueues would only end with the request's
#: timeout; the run with a worker reads streams. GET /job/events ends after its timeout, pinned short (in
#: every run).
NO_STREAMS = """
[[operations]]
include-name = ["POST /job", "POST /job/enqueue", "PUT /job/restart/{id}"]
parameters = { "query.follow" = "false", "body.follow" = false }

[[operations]]
include-name = "GET /job/events"
parameters = { "query.timeout" = "0.5", "body.timeout" = 0.5 }
"""

#: The runs authenticate as admin:hans, whom a generated PUT or DELETE /user/{id} naming "admin" could lock out
#: (a new password) or, with another admin added by POST /user, demote, disable or remove. So the operations on
#: one user act on a throwaway user (which POST /user may add, and PUT and DELETE change or remove), never on
#: the admin; ``still_admin`` checks after each run.
THROWAWAY = "fuzz-target"
PINNED_USER = f"""
[[operations]]
include-name = ["GET /user/{{id}}", "PUT /user/{{id}}", "DELETE /user/{{id}}"]
parameters = {{ "path.id" = "{THROWAWAY}" }}
"""
NO_STREAMS += PINNED_USER

#: Generated qual_names are mostly one that exists, and scenarios are long enough to enqueue a job, then act on
#: it. The jobs of those that it streams or follows start at once (delay 0; with a run_at too, a 400; no
#: required worker tags; pauses only of another class): a delayed or held job's stream, or a poll of it,
#: would outlast the request timeout. Only the JSON reply of an enqueue carries the id its links lead on with: POST /job replies it, while
#: POST /job/enqueue, the same operation, streams as it likes.
CONFORMANCE_SETTINGS = f"""
generation.max-examples = 6

[dictionaries.jobs]
values = ["{NOOP}"]

[parameters]
"query.qual_name" = {{ dictionary = "jobs", probability = 0.8 }}
"body.qual_name" = {{ dictionary = "jobs", probability = 0.8 }}

[phases.stateful]
max-steps = 10

[phases.stateful.generation]
max-examples = 25

[[operations]]
include-name = "POST /job"
parameters = {{ "query.follow" = "false", "body.follow" = false, "query.delay" = "0", "body.delay" = 0, "query.requires" = "[]", "body.requires" = [] }}

[[operations]]
include-name = "POST /job/enqueue"
parameters = {{ "query.delay" = "0", "body.delay" = 0, "query.requires" = "[]", "body.requires" = [] }}

[[operations]]
include-name = "GET /job/events"
parameters = {{ "query.timeout" = "0.5", "body.timeout" = 0.5 }}

[[operations]]
include-name = ["PUT /job/pause", "PUT /job/resume"]
parameters = {{ "query.qual_name" = "{FAIL}", "body.qual_name" = "{FAIL}" }}
""" + PINNED_USER


async def schemathesis(url: str, schema: Path, *options: str, settings: str, timeout: float = 240) -> str:
    """Run ``st run`` with ``schema`` against ``url`` and a configuration file holding ``settings``.

    Every check must pass; returns the report.
    """
    config = schema.with_name("schemathesis.toml")
    config.write_text(settings)
    process = await asyncio.create_subprocess_exec(
        ST, "--config-file", str(config), "run", str(schema), "--url", url, *COMMON, *options,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    output, _ = await asyncio.wait_for(process.communicate(), timeout)
    text = output.decode(errors="replace")
    assert process.returncode == 0, text[-8000:]
    cases = re.search(r"(\d+) generated, (\d+) passed", text)
    assert cases and cases[1] == cases[2], text[-3000:]
    return text


def figure(report: str, pattern: str) -> int:
    """The number ``pattern`` (a regular expression with one group) finds in a report."""
    found = re.search(pattern, report)
    assert found, f"{pattern!r} not in the report:\n{report[-3000:]}"
    return int(found[1])


async def still_admin(server) -> None:
    """The run's admin still logs in with its password and is an admin, and no generated request changed it."""
    async with httpx.AsyncClient(base_url=server.url, auth=("admin", "hans")) as http:
        reply = await http.get("/whoami")
    assert reply.status_code == 200 and reply.json()["data"]["admin"], reply.text
    # Its logins, logouts and tokens are its own doing; a change of the user would be a user.* entry.
    assert not await server.db.audit.count_documents({"target": "admin", "actor": {"$ne": "test"},
                                                      "action": {"$regex": "^user\\."}})


@pytest.fixture
async def schema(server, admin, tmp_path) -> Path:
    """The server's OpenAPI document, fetched as admin (it needs authentication too); and the throwaway user."""
    await users.add(server.db, THROWAWAY, "throwaway", actor="test")
    async with httpx.AsyncClient(base_url=server.url, auth=("admin", "hans")) as http:
        reply = await http.get("/openapi.json")
    path = tmp_path / "openapi.json"
    path.write_text(reply.text)
    return path


@pytest.mark.timeout(600)
async def test_generated_requests_as_admin_get_only_documented_replies(server, schema, job_classes):
    report = await schemathesis(server.url, schema, *FUZZING, "--auth", "admin:hans", "--max-examples", "12",
                                settings=NO_STREAMS)
    assert figure(report, r"(\d+) generated") > 300
    await still_admin(server)


@pytest.mark.timeout(600)
async def test_generated_credentials_in_any_script_get_only_documented_replies(server, schema, job_classes):
    report = await schemathesis(server.url, schema, *FUZZING, "--generation-with-security-parameters", "true",
                                "--max-examples", "6", "--mode", "negative", settings=NO_STREAMS)
    assert figure(report, r"(\d+) generated") > 150


@pytest.fixture
async def quick_jobs(db: Database, config: Config) -> AsyncIterator[None]:
    """A worker of ``NoopJob``, the only class in the registry: every job and every stream ends soon."""
    classes = {NOOP: registry.discover()[NOOP]}
    await registry.sync(db, classes)
    worker = Worker(db, dataclasses.replace(config, heartbeat_seconds=0.5), classes=classes, slots=4,
                    kill_grace=0.5, shutdown_grace=0.2, poll_seconds=0.2)
    await worker.start()
    yield
    worker.hurry()
    await worker.stop()


@pytest.mark.timeout(600)
async def test_every_reply_conforms_to_the_document_also_along_its_links(server, schema, quick_jobs):
    report = await schemathesis(server.url, schema, *CONFORMANCE, "--auth", "admin:hans",
                                settings=CONFORMANCE_SETTINGS)
    operations = sum(len(item) for item in json.loads(schema.read_text())["paths"].values())
    assert figure(report, r"Tested: (\d+)") == operations
    assert figure(report, r"(\d+) generated") > 350
    assert figure(report, r"API Links: +(\d+) covered") > 0  # the stateful phase acted on enqueued jobs
    await still_admin(server)
