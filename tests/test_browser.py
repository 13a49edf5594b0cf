"""A real browser: log in (cookie), then follow a job with EventSource.

Needs Chromium (Debian package ``chromium``); skipped where it is not
installed. The page is served from another port, so this also exercises CORS
with credentials, as a dashboard on its own origin would.
"""
from __future__ import annotations

import asyncio
import dataclasses
import re
import shutil
from pathlib import Path

import pytest
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, StaticFileHandler

from handlers.app import Server
from tests.conftest import wait_for

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed")


@pytest.fixture
async def page_origin():
    sockets = bind_sockets(0, "127.0.0.1")
    pages = HTTPServer(Application([(r"/(.*)", StaticFileHandler, {"path": str(Path(__file__).parent / "browser")})]))
    pages.add_sockets(sockets)
    yield f"http://127.0.0.1:{sockets[0].getsockname()[1]}"
    pages.stop()


async def test_browser_event_source_follows_a_job_after_cookie_login(config, db, admin, worker, page_origin, tmp_path):
    server = Server(dataclasses.replace(config, cors_origins=[page_origin]), db)
    await server.start()
    try:
        browser = await asyncio.create_subprocess_exec(
            CHROMIUM, "--headless", *CHROMIUM_ARGS, f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=20000", "--dump-dom",
            f"{page_origin}/follow.html?api={server.url}",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
        dom, _ = await asyncio.wait_for(browser.communicate(), 90)
    finally:
        await server.stop()
    text = dom.decode()
    assert "login 200" in text
    assert re.search(r"state \w+ \d+\.\d+", text), text
    assert re.search(r"log 1\n", text), text
    assert "close complete" in text, text


async def test_a_foreign_page_on_another_port_cannot_enqueue_with_the_login_cookie(server, db, admin, job_classes,
                                                                                   page_origin):
    """The reproduced attack: same host, other port (same-site, so the Lax cookie goes along)."""
    from playwright.async_api import async_playwright

    requests = server.services.metrics.registry
    refused = lambda: sum(requests.get_sample_value("jobdeck_http_requests_total", {"method": "POST", "code": code})
                          or 0 for code in ("403", "415"))
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            # The victim logs in on the service itself (the cookie is set for 127.0.0.1).
            await page.goto(f"{server.url}/health")
            status = await page.evaluate("""async () => (await fetch("/api/v1/login", {method: "POST",
                headers: {"Content-Type": "application/json"},
                body: JSON.stringify({username: "admin", password: "hans"})})).status""")
            assert status == 200
            # The cookie works from the service's own origin: the control.
            own = await page.evaluate("""async () => (await fetch("/api/v1/job", {method: "POST",
                headers: {"Content-Type": "application/json"},
                body: JSON.stringify({qual_name: "jobs.example.DummyJob", follow: false})})).status""")
            assert own == 200 and await db.queue.count_documents({}) == 1
            # Then the victim opens the attacker's page.
            await page.goto(f"{page_origin}/attack.html?api={server.url}")
            await page.wait_for_function("document.getElementById('out').textContent.includes('form sent')")
            await wait_for(lambda: refused() >= 3, message="the three forged POSTs to be refused")
            text = await page.text_content("#out")
        finally:
            await browser.close()
    assert "json blocked" in text, text  # no CORS preflight for a foreign origin
    assert await db.queue.count_documents({}) == 1  # only the victim's own job
