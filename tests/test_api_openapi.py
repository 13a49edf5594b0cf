"""The OpenAPI 3.1 document: it describes every route of the application, and only routes that exist."""
from __future__ import annotations

import json
from typing import Any, Iterator

import jsonschema_rs
import pytest
from httpx_sse import aconnect_sse
from tornado.web import RequestHandler

from core import queue, schedules
from handlers.app import PREFIXES, ROUTES
from handlers.jobs import UnknownActionHandler
from handlers.openapi import build, path_template

METHODS = ("get", "post", "put", "delete")
DUMMY = "jobs.example.DummyJob"
PUBLIC = {("/health", "get"), ("/login", "post"), ("/logout", "post")}
SSE = {("/job", "post"), ("/job/enqueue", "post"), ("/job/follow/{id}", "get"), ("/job/log/{id}", "get"),
       ("/job/restart/{id}", "put"), ("/job/events", "get")}


def implemented() -> set[tuple[str, str]]:
    """(OpenAPI path, method) of every method a routed handler implements (the 405 catch-all aside)."""
    return {(path_template(pattern), method) for pattern, handler in ROUTES if handler is not UnknownActionHandler
            for method in METHODS if getattr(handler, method) is not getattr(RequestHandler, method)}


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            yield path, method, operation


def references(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from references(value)
    elif isinstance(node, list):
        for item in node:
            yield from references(item)


@pytest.fixture
async def document(team_clients) -> dict[str, Any]:
    reply = await team_clients["reader"].get("/openapi.json")
    assert reply.status_code == 200, reply.text
    assert reply.headers["Content-Type"].startswith("application/json")
    return reply.json()


async def test_openapi_document_is_version_3_1_and_served_under_its_prefix(document):
    assert document["openapi"] == "3.1.0"
    assert document["info"]["title"] == "jobdeck"
    assert document["servers"] == [{"url": "/api/v1"}]


async def test_a_trailing_slash_does_not_leak_into_the_server_url(team_clients, document):
    # "/api/v1/" would make generated clients call "//job".
    assert (await team_clients["reader"].get("/openapi.json/")).json()["servers"] == [{"url": "/api/v1"}]


async def test_requests_that_change_something_describe_403_and_415_and_streams_429(document):
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            if method in ("post", "put", "delete"):
                assert {"403", "415"} <= set(operation["responses"]), (path, method)
    assert "429" in document["paths"]["/job/follow/{id}"]["get"]["responses"]
    assert "429" in document["paths"]["/job/poll/{id}"]["get"]["responses"]


async def test_core4_prefix_serves_the_same_paths_under_its_own_server_url(server, team_clients, document):
    url = f"http://127.0.0.1:{server.port}{PREFIXES[1]}/openapi.json"
    alias = (await team_clients["reader"].get(url)).json()
    assert alias["servers"] == [{"url": "/core4/api/v1"}]
    assert alias["paths"] == document["paths"]


def test_every_implemented_method_is_found_on_the_routes():
    found = implemented()
    assert ("/job/{id}", "delete") in found and ("/job", "post") in found and ("/health", "get") in found
    assert not any(path == "/job/{id}/{id}" for path, _ in found)


async def test_every_route_and_method_of_the_application_is_described(document):
    described = {(path, method) for path, method, _ in operations(document)}
    missing = implemented() - described
    assert not missing, f"routes without a description: {sorted(missing)}"


async def test_every_described_operation_is_served(db, job_classes, team_clients, document):
    # A finished job: follow and log end at once, and nothing is started.
    job = await queue.enqueue(db, DUMMY, {}, user=queue.operator("operator"))
    await queue.kill(db, job["_id"], user=queue.operator("operator"))
    schedule = await schedules.add(db, user=queue.operator("operator"), qual_name=DUMMY, cron="0 * * * *")
    http = team_clients["admin"]
    for path, method, _ in operations(document):
        # follow=false: restart and enqueue answer instead of streaming the job they start.
        taken = schedule["_id"] if path.startswith("/schedule/") else "stranger" if path.startswith(
            "/user/") else job["_id"]
        reply = await http.request(method.upper(), path.format(id=taken), params={"follow": "false", "timeout": 1})
        assert reply.status_code not in (404, 405, 500), (method, path, reply.text)


async def test_the_unknown_action_catch_all_is_not_described(document):
    assert path_template(r"/job/([^/]+)/([^/]+)") not in document["paths"]


async def test_every_operation_describes_200_and_401_unless_public(document):
    for path, method, operation in operations(document):
        responses = operation["responses"]
        assert "200" in responses, (method, path)
        if (path, method) in PUBLIC:
            assert operation["security"] == [], (method, path)  # no credentials needed
        else:
            assert "401" in responses, (method, path)
            assert responses["401"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}


async def test_streaming_operations_list_event_stream_content(document):
    for path, method, operation in operations(document):
        content = operation["responses"]["200"]["content"]
        assert ("text/event-stream" in content) == ((path, method) in SSE), (method, path)
    # Those that stream only with follow=true can also answer JSON.
    for path, method in SSE - {("/job/follow/{id}", "get"), ("/job/events", "get")}:
        assert "application/json" in document["paths"][path][method]["responses"]["200"]["content"], (method, path)


async def test_path_parameters_are_declared(document):
    for path, method, operation in operations(document):
        declared = [p["name"] for p in operation["parameters"] if p["in"] == "path"]
        assert declared == (["id"] if "{id}" in path else []), (method, path)


async def test_components_hold_the_job_log_record_and_error_schemas(document):
    schemas = document["components"]["schemas"]
    assert {"Job", "LogRecord", "Error"} <= set(schemas)
    assert {"_id", "qual_name", "state", "version"} <= set(schemas["Job"]["properties"])
    assert {"job_id", "seq", "level", "message"} <= set(schemas["LogRecord"]["properties"])
    assert "error" in schemas["Error"]["required"]


async def test_every_reference_resolves_to_a_component(document):
    refs = set(references(document))
    assert refs, "the document uses no $ref at all"
    for ref in refs:
        assert ref.startswith("#/"), ref
        node: Any = document
        for part in ref[2:].split("/"):
            assert isinstance(node, dict) and part in node, f"{ref} does not resolve"
            node = node[part]


# --- what the document says the replies are ------------------------------------------------

def conforms(document: dict[str, Any], path: str, method: str, status: int, media: str, body: Any) -> list[str]:
    """Where ``body`` differs from what the document says ``method path`` answers with ``status`` as ``media``."""
    pointer = "/".join(part.replace("~", "~0").replace("/", "~1") for part in (
        "#", "paths", path, method, "responses", str(status), "content", media, "schema"))
    validator = jsonschema_rs.validator_for({**document, "$ref": pointer}, validate_formats=True)
    return [str(error) for error in validator.iter_errors(body)]


def test_the_document_is_valid_openapi_3_1():
    definitions = pytest.importorskip("schemathesis.specs.openapi.definitions")
    errors = [str(error) for error in definitions.OPENAPI_31_VALIDATOR.iter_errors(build(ROUTES))]
    assert not errors, errors[:5]


async def test_operation_ids_are_unique_and_links_lead_from_a_job_to_every_operation_taking_its_id(document):
    ids = [operation["operationId"] for _, _, operation in operations(document)]
    assert len(ids) == len(set(ids))
    taking_an_id = {operation["operationId"] for path, _, operation in operations(document)
                    if path.startswith("/job/") and "{id}" in path}
    assert len(taking_an_id) == 9  # detail, follow, log, poll, kill, remove, restart, GET and DELETE /job/{id}
    new_id = {("/job", "post"), ("/job/enqueue", "post"), ("/job/restart/{id}", "put")}
    a_job = {("/job/{id}", "get"), ("/job/detail/{id}", "get"), ("/job/poll/{id}", "get"), ("/job/kill/{id}", "put"),
             ("/job/remove/{id}", "put"), ("/job/{id}", "delete")}
    for path, method, operation in operations(document):
        links = operation["responses"]["200"].get("links", {})
        if (path, method) not in new_id | a_job:
            assert not links, (method, path)
            continue
        assert {link["operationId"] for link in links.values()} == taking_an_id, (method, path)
        where = "$response.body#/data" if (path, method) in new_id else "$response.body#/data/_id"
        assert {link["parameters"]["id"] for link in links.values()} == {where}, (method, path)


async def test_every_status_a_request_can_meet_is_described_with_its_headers(document):
    for path, method, operation in operations(document):
        responses = operation["responses"]
        assert {"413", "503"} <= set(responses), (method, path)  # a body too large, the database gone
        if (path, method) not in PUBLIC:
            assert "429" in responses, (method, path)  # Basic credentials are throttled on every route
        for status, response in responses.items():
            assert "X-Request-Id" in response["headers"], (status, method, path)
            if status != "200":
                assert response["content"] == {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
        assert "WWW-Authenticate" in responses.get("401", {"headers": {"WWW-Authenticate": 0}})["headers"]
        assert "Retry-After" in responses.get("429", {"headers": {"Retry-After": 0}})["headers"]


async def test_metrics_openapi_and_worker_replies_are_what_the_document_says(
        team_clients, document, worker_factory):
    await worker_factory(slots=2)
    admin, reader = team_clients["admin"], team_clients["reader"]

    metrics = await admin.get("/metrics")
    assert metrics.headers["Content-Type"].startswith("text/plain")
    assert list(document["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]
    assert not conforms(document, "/openapi.json", "get", 200, "application/json", document)
    for http in (admin, reader):  # host and pid only for admins
        workers = (await http.get("/worker")).json()
        assert len(workers["data"]) == 1
        assert not conforms(document, "/worker", "get", 200, "application/json", workers)
    assert conforms(document, "/worker", "get", 200, "application/json", {**workers, "data": workers["data"][0]})
    for route in ("/job/stats", "/whoami", "/health"):
        assert not conforms(document, route, "get", 200, "application/json", (await reader.get(route)).json())


async def test_every_event_of_a_stream_is_what_the_document_says(server, team_clients, document, worker_factory):
    await worker_factory(slots=2)
    schemas = {"state": "Job", "log": "LogRecord", "close": "Close"}
    validators = {kind: jsonschema_rs.validator_for(
        {**document, "$ref": f"#/components/schemas/{name}"}, validate_formats=True) for kind, name in schemas.items()}
    event_schema = {**document, "$ref": "#/paths/~1job/post/responses/200/content/text~1event-stream/schema"}

    seen = set()
    async with aconnect_sse(team_clients["admin"], "POST", "/job",
                            json={"qual_name": DUMMY, "args": {"sleep": 0.3, "loop_time": 0.1}}) as source:
        async for event in source.aiter_sse():
            wire = {"event": event.event, "id": event.id, "data": event.data,
                    **({"retry": event.retry} if event.retry is not None else {})}
            assert jsonschema_rs.is_valid(event_schema, wire), wire
            errors = [str(error) for error in validators[event.event].iter_errors(json.loads(event.data))]
            assert not errors, (event.event, errors)
            seen.add(event.event)
    assert seen == {"state", "log", "close"}
