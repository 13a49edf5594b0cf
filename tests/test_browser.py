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

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
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
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=20000", "--dump-dom",
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
