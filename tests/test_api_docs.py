"""The API's documentation: Swagger UI at ``/docs`` from local files only, and the route index at ``/api/v1``.

The browser test needs Chromium (Debian package ``chromium``) and is skipped
where it is not installed.
"""
from __future__ import annotations

from html.parser import HTMLParser
from urllib.parse import urlsplit

import httpx
import pytest

from core import queue
from handlers.app import PREFIXES
from handlers.docs import CONTENT_SECURITY_POLICY
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS

DUMMY = "jobs.example.DummyJob"


class _Assets(HTMLParser):
    """The URLs a page loads: scripts, style sheets, icons, images."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline_scripts = 0
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "script":
            if attributes.get("src"):
                self.urls.append(attributes["src"])
            else:
                self._in_script = True
        elif tag == "link" and attributes.get("href"):
            self.urls.append(attributes["href"])
        elif tag in ("img", "source", "iframe") and attributes.get("src"):
            self.urls.append(attributes["src"])

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline_scripts += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False


@pytest.fixture
async def site(server):
    """An anonymous client on the server's origin (``/docs`` is outside ``/api/v1``)."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=30) as http:
        yield http


async def test_docs_page_loads_only_local_files_and_each_answers(site):
    page = await site.get("/docs")
    assert page.status_code == 200, page.text
    assert page.headers["Content-Type"].startswith("text/html")
    assert page.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert "script-src 'self';" in CONTENT_SECURITY_POLICY and "unsafe" not in CONTENT_SECURITY_POLICY
    assets = _Assets()
    assets.feed(page.text)
    assert assets.inline_scripts == 0
    assert any("swagger-ui-bundle.js" in url for url in assets.urls), assets.urls
    assert any("swagger-ui.css" in url for url in assets.urls), assets.urls
    for url in assets.urls:
        parts = urlsplit(url)
        assert not parts.scheme and not parts.netloc and url.startswith("/"), f"not a local URL: {url}"
        reply = await site.get(url)
        assert reply.status_code == 200, (url, reply.status_code)
        assert reply.headers["X-Content-Type-Options"] == "nosniff"
        assert reply.content, url


async def test_docs_page_needs_no_login_and_points_at_the_openapi_document(site):
    page = await site.get("/docs")  # no credentials
    assert page.status_code == 200
    assert 'data-url="/api/v1/openapi.json"' in page.text


async def test_other_files_of_the_package_are_not_served(site):
    for path in ("/docs/static/swagger-editor.js", "/docs/static/../__init__.py", "/docs/static/",
                 "/docs/nothing.js"):
        assert (await site.get(path)).status_code == 404, path


@pytest.mark.parametrize("path", ["/docs/", "/swagger", "/swagger/"])
async def test_docs_aliases_redirect_to_docs(site, path):
    reply = await site.get(path)
    assert reply.status_code in (301, 302) and reply.headers["Location"] == "/docs"


@pytest.mark.parametrize("prefix", [*PREFIXES, PREFIXES[0] + "/"])
async def test_api_index_lists_every_operation_of_the_openapi_document(server, team_clients, prefix):
    http = team_clients["reader"]
    document = (await http.get(f"http://127.0.0.1:{server.port}{prefix.rstrip('/')}/openapi.json")).json()
    reply = await http.get(f"http://127.0.0.1:{server.port}{prefix}")
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["code"] == 200 and body["_id"] == reply.headers["X-Request-Id"]
    base = prefix.rstrip("/")
    assert body["data"]["links"] == {"docs": "/docs", "openapi": f"{base}/openapi.json", "dashboard": "/"}
    listed = [(route["method"], route["path"], route["summary"]) for route in body["data"]["routes"]]
    described = [(method.upper(), base + path, operation["summary"])
                 for path, item in document["paths"].items() for method, operation in item.items()]
    assert sorted(listed) == sorted(described)
    assert ("GET", f"{base}/", document["paths"]["/"]["get"]["summary"]) in listed  # the index itself


async def test_api_index_authenticates_as_the_openapi_document_does(team_clients):
    anonymous = team_clients[None]
    index, document = await anonymous.get(""), await anonymous.get("/openapi.json")
    assert index.status_code == document.status_code
    if index.status_code == 401:
        assert index.headers["WWW-Authenticate"].startswith("Basic")


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed")
async def test_try_it_out_works_after_cookie_login_and_with_basic_credentials(server, db, team, job_classes):
    """Log in (cookie) in the page, try GET /job/stats, GET /job/queue and PUT /job/kill/{id}; then Authorize
    with Basic credentials of another user and try GET /whoami."""
    from playwright.async_api import async_playwright, expect

    job = await queue.enqueue(db, DUMMY, {}, user=queue.operator("admin"))
    origin = f"http://127.0.0.1:{server.port}"
    foreign: list[str] = []
    problems: list[str] = []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            await page.add_init_script("""document.addEventListener("securitypolicyviolation",
                event => console.error(`Content Security Policy: ${event.violatedDirective} ${event.blockedURI}`))""")
            page.on("request", lambda request: None if request.url.startswith((origin, "data:"))
                    else foreign.append(request.url))
            page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
            await page.goto(f"{origin}/api/v1/health")
            status = await page.evaluate("""async () => (await fetch("/api/v1/login", {method: "POST",
                headers: {"Content-Type": "application/json"},
                body: JSON.stringify({username: "admin", password: "hans", cookie_only: true})})).status""")
            assert status == 200
            await page.goto(f"{origin}/docs")

            stats = page.locator("#operations-jobs-get_job_stats")
            await stats.locator(".opblock-summary-control").click()
            await stats.get_by_role("button", name="Try it out").click()
            await stats.get_by_role("button", name="Execute").click()
            await expect(stats.locator(".live-responses-table tr.response .response-col_status").first).to_have_text(
                "200", timeout=10_000)
            await expect(stats.locator(".live-responses-table .microlight").first).to_contain_text('"queue"')

            # A GET whose arguments the document also allows in a body: the page sends the query string only.
            listing = page.locator("#operations-jobs-get_job_queue")
            await listing.locator(".opblock-summary-control").click()
            await listing.get_by_role("button", name="Try it out").click()
            await listing.get_by_role("button", name="Execute").click()
            await expect(listing.locator(".live-responses-table tr.response .response-col_status").first).to_have_text(
                "200", timeout=10_000)
            await expect(listing.locator(".live-responses-table .microlight").first).to_contain_text(str(job["_id"]))

            # A call that changes something, authenticated by the cookie: it passes the cross-site checks.
            kill = page.locator("#operations-jobs-put_job_kill_by_id")
            await kill.locator(".opblock-summary-control").click()
            await kill.get_by_role("button", name="Try it out").click()
            await kill.locator('tr[data-param-name="id"] input').fill(str(job["_id"]))
            await kill.get_by_role("button", name="Execute").click()
            await expect(kill.locator(".live-responses-table tr.response .response-col_status").first).to_have_text(
                "200", timeout=10_000)
            assert (await db.journal.find_one({"_id": job["_id"]}))["state"] == "killed"

            # Authorize with Basic credentials: they win over the cookie.
            await page.locator(".auth-wrapper .authorize").click()
            await page.locator("#auth-basic-username").fill("reader")
            await page.locator("#auth-basic-password").fill("read-pw")
            basic = page.locator(".auth-container").filter(has=page.locator("#auth-basic-username"))
            await basic.locator("button.authorize").click()
            await page.locator(".close-modal").click()
            whoami = page.locator("#operations-service-get_whoami")
            await whoami.locator(".opblock-summary-control").click()
            await whoami.get_by_role("button", name="Try it out").click()
            await whoami.get_by_role("button", name="Execute").click()
            await expect(whoami.locator(".live-responses-table tr.response .response-col_status").first).to_have_text(
                "200", timeout=10_000)
            await expect(whoami.locator(".live-responses-table .microlight").first).to_contain_text('"reader"')
        finally:
            await browser.close()
    assert not foreign, f"the page fetched from elsewhere: {foreign}"
    assert not [text for text in problems if "Content Security Policy" in text], problems
