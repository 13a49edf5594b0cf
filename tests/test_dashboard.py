"""The dashboard in a real browser: log in, enqueue from the form, watch a job live, kill, restart.

Needs Chromium (Debian package ``chromium``); skipped where it is not
installed, as ``tests/test_browser.py``. Playwright drives the system
Chromium (``executable_path``); no browser is downloaded. Screenshots of the
main pages are saved to ``var/screenshots/`` (the path is printed).
"""
from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import pytest

from tests.test_browser import CHROMIUM, CHROMIUM_ARGS

needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed")

SCREENSHOTS = Path(__file__).resolve().parent.parent / "var" / "screenshots"
DUMMY = "jobs.example.DummyJob"
#: How long a change may take to show up: the event stream is immediate, the fallback polls every 2 s.
LIVE = 6_000


@pytest.fixture
async def browser():
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


async def open_page(browser, server, name: str, password: str):
    """A new page logged in through the dashboard's login form; it fails the test on any page error."""
    from playwright.async_api import expect

    context = await browser.new_context(viewport={"width": 1280, "height": 860})
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: errors.append(message.text) if message.type == "error"
            and "status of 40" not in message.text and "text/event-stream" not in message.text else None)
    page.errors = errors
    await page.goto(server.dashboard_url)
    await page.get_by_label("User name").fill(name)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Log in").click()
    await expect(page.locator("#user .name")).to_have_text(name)
    return page


async def screenshot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")


def test_every_dashboard_file_is_package_data():
    """An installed jobdeck (not only a checkout) has every file of the dashboard."""
    import configparser
    from fnmatch import fnmatch

    from handlers.dashboard import DASHBOARD_DIR

    parser = configparser.ConfigParser()
    parser.read(Path(__file__).resolve().parent.parent / "setup.cfg")
    patterns = [p.strip() for p in parser["options.package_data"]["jobdeck"].split(",")]
    files = [str(p.relative_to(DASHBOARD_DIR.parent)) for p in DASHBOARD_DIR.rglob("*") if p.is_file()]
    assert files and [f for f in files if not any(fnmatch(f, p) and "/" not in f[len(p.rsplit("/", 1)[0]) + 1:]
                                                  for p in patterns)] == []


async def test_shell_and_files_are_served_with_a_strict_policy_and_the_api_is_untouched(server):
    async with httpx.AsyncClient(base_url=server.dashboard_url, timeout=10) as http:
        shell = await http.get("/")
        assert shell.status_code == 200 and shell.headers["Content-Type"].startswith("text/html")
        policy = shell.headers["Content-Security-Policy"]
        assert "default-src 'self'" in policy and "unsafe-inline" not in policy and "frame-ancestors 'none'" in policy
        assert shell.headers["Cache-Control"] == "no-cache"
        assert "<script>" not in shell.text and " style=" not in shell.text and "{{version}}" not in shell.text
        files = re.findall(r'(?:src|href)="(/static/[0-9a-f]{12}/[^"]+)"', shell.text)
        assert len(files) == 3
        for path in files:
            reply = await http.get(path)
            assert reply.status_code == 200, path
            assert "max-age=31536000" in reply.headers["Cache-Control"]
            assert reply.headers["Content-Security-Policy"] == policy
        module = await http.get(files[-1].replace("style.css", "app.js").replace("icon.svg", "app.js"))
        assert module.headers["Content-Type"].startswith("text/javascript")
        stale = await http.get("/static/000000000000/app.js")
        assert stale.status_code == 200 and stale.headers["Cache-Control"] == "no-cache"
        assert (await http.get(files[0].rsplit("/", 1)[0] + "/../../handlers/dashboard.py")).status_code in (403, 404)
        # The views' own paths lead to their hash routes; other paths stay the API's JSON 404.
        moved = await http.get("/queue")
        assert moved.status_code == 302 and moved.headers["Location"] == "/#/queue"
        app = (Path(__file__).resolve().parents[1] / "jobdeck" / "dashboard" / "static" / "app.js").read_text()
        routes = re.findall(r"^  (\w+): \(root", app.split("const VIEWS = {", 1)[1].split("};", 1)[0], re.M)
        assert "account" in routes
        for view in routes:  # every view the page routes to has its own path
            assert (await http.get(f"/{view}")).headers.get("Location") == f"/#/{view}", view
        assert (await http.get("/job/abc")).headers["Location"] == "/#/job/abc"
        unknown = await http.get("/nothing-here")
        assert unknown.status_code == 404 and unknown.json()["error"] == "no such endpoint: /nothing-here"
        assert (await http.head("/")).status_code == 200
        assert (await http.get("/api/v1/health")).status_code == 200
        assert (await http.get("/api/v1/openapi.json")).status_code == 401
        assert (await http.get("/api/v1/job/queue")).status_code == 401
        # A page's script gets no Basic challenge (the browser would answer it with its own login dialog).
        script = await http.get("/api/v1/whoami", headers={"Sec-Fetch-Mode": "cors"})
        assert script.status_code == 401 and script.headers["WWW-Authenticate"] == 'Bearer realm="jobdeck"'
        opened = await http.get("/api/v1/whoami", headers={"Sec-Fetch-Mode": "navigate"})
        assert opened.headers["WWW-Authenticate"].startswith("Basic ")
        assert (await http.get("/api/v1/whoami")).headers["WWW-Authenticate"].startswith("Basic ")


@needs_chromium
async def test_enqueue_watch_live_kill_restart_and_find_them_in_the_journal(server, team, worker, browser, db):
    from playwright.async_api import expect

    page = await open_page(browser, server, "admin", "hans")
    try:
        # Enqueue from the form generated from the schema: the browser checks types first...
        await page.get_by_role("link", name="Enqueue").click()
        await page.get_by_label("Job class").select_option(DUMMY)
        await page.get_by_label("sleep").fill("three")
        await page.get_by_role("button", name="Enqueue").click()
        await expect(page.locator("#arg-sleep-error")).to_contain_text("must be a number")
        assert await db.queue.count_documents({}) == 0
        # ... and the server's refusal (an option out of range) is shown as it says it.
        await page.get_by_label("sleep").fill("3")
        await page.get_by_label("message").fill("dashboard")
        await page.get_by_label("Priority (integer)").fill("99999999")
        await page.get_by_role("button", name="Enqueue").click()
        await expect(page.get_by_role("alert")).to_contain_text("priority")
        assert await db.queue.count_documents({}) == 0
        await page.get_by_label("Priority (integer)").fill("")
        await page.get_by_role("button", name="Enqueue").click()
        # The job's page: state and progress change and log lines appear without a reload.
        await page.wait_for_url(re.compile(r"#/job/[0-9a-f]{24}$"))
        first = page.url.rsplit("/", 1)[1]
        page.on("framenavigated", lambda frame: page.errors.append(f"navigated to {frame.url}")
                if frame == page.main_frame and "#/" not in frame.url else None)
        await expect(page.locator(".summary .badge").first).to_have_text("running", timeout=LIVE)
        await page.wait_for_function("() => document.getElementById('job-progress').value > 0", timeout=LIVE)
        seen = await page.locator("#prog-message").text_content()
        await expect(page.locator(".log li").first).to_contain_text("dashboard: sleeping 3 s", timeout=LIVE)
        await page.wait_for_function("() => document.querySelectorAll('.log li').length >= 3", timeout=LIVE)
        await expect(page.locator("#prog-message")).not_to_have_text(seen, timeout=LIVE)
        await screenshot(page, "job-running")
        await expect(page.locator(".summary .badge").first).to_have_text("complete", timeout=10_000)
        await expect(page.locator("#job-progress")).to_have_attribute("value", "1")
        await expect(page.locator(".result pre")).to_contain_text('"slept": 3')
        await expect(page.locator(".log li").last).to_contain_text("dashboard: step")

        # A long job, killed while it runs, then restarted.
        await page.get_by_role("link", name="Enqueue").click()
        await page.get_by_label("Job class").select_option(DUMMY)
        await page.get_by_label("sleep").fill("30")
        await page.get_by_label("message").fill("long")
        await page.get_by_role("button", name="Enqueue").click()
        await page.wait_for_url(re.compile(r"#/job/(?!%s)[0-9a-f]{24}$" % first))
        killed = page.url.rsplit("/", 1)[1]
        await expect(page.locator(".summary .badge").first).to_have_text("running", timeout=LIVE)
        await page.get_by_role("button", name="Kill").click()
        await expect(page.locator(".summary .badge").first).to_have_text("killed", timeout=10_000)
        assert (await db.journal.find_one({"_id": __import__("bson").ObjectId(killed)}))["state"] == "killed"
        await page.get_by_role("button", name="Restart").click()
        await page.wait_for_url(re.compile(r"#/job/(?!%s)[0-9a-f]{24}$" % killed))
        child = page.url.rsplit("/", 1)[1]
        await expect(page.get_by_role("link", name=killed)).to_be_visible()  # the parent link
        await expect(page.locator(".summary .badge").first).to_have_text(re.compile("pending|running"))
        await screenshot(page, "job-detail")

        # The queue shows the restarted job live; the journal has both finished ones.
        await page.get_by_role("link", name="Queue", exact=True).click()
        await expect(page.locator(f'tr[data-id="{child}"]')).to_be_visible()
        await expect(page.locator(f'tr[data-id="{child}"] .badge')).to_have_text("running", timeout=LIVE)
        await screenshot(page, "queue")
        await page.get_by_role("link", name="Journal").click()
        await expect(page.locator(f'tr[data-id="{first}"] .badge')).to_have_text("complete")
        await expect(page.locator(f'tr[data-id="{killed}"] .badge')).to_have_text("killed")
        await page.get_by_label("complete").check()
        await expect(page.locator(f'tr[data-id="{killed}"]')).to_have_count(0)
        await expect(page.locator(f'tr[data-id="{first}"]')).to_be_visible()
        await page.get_by_label("complete").uncheck()
        await expect(page.locator(f'tr[data-id="{killed}"]')).to_be_visible()

        # A failing job shows its error and traceback.
        failed = await page.evaluate("""async () => (await (await fetch("/api/v1/job", {method: "POST",
            headers: {"Content-Type": "application/json"}, body: JSON.stringify({qual_name: "jobs.example.FailJob",
            attempts: 1, follow: false})})).json()).data""")
        await page.goto(f"{server.dashboard_url}#/job/{failed}")
        await expect(page.locator(".summary .badge").first).to_have_text("error", timeout=LIVE)
        await expect(page.locator(".last-error")).to_contain_text("RuntimeError: this job fails on purpose")
        await page.get_by_text("Traceback", exact=True).click()
        await expect(page.locator(".last-error pre.traceback")).to_contain_text("raise RuntimeError(message)")
        await expect(page.get_by_role("button", name="Restart")).to_be_visible()

        await page.get_by_role("link", name="Workers").click()
        await expect(page.locator(f'tr[data-id="{worker.id}"]')).to_contain_text("alive")
        await expect(page.locator(f'tr[data-id="{worker.id}"]')).to_contain_text(child[-8:])
        await page.get_by_role("link", name="Stats").click()
        await expect(page.locator("figure svg.bars").first).to_be_visible()
        # The finished jobs of this test, from the server's counts of the last hour.
        await expect(page.locator("figcaption", has_text="the last 60 minutes")).to_contain_text(
            re.compile(r"the last 60 minutes: [1-9]"))
        await expect(page.get_by_role("button", name="Pause the whole queue")).to_be_visible()
        await expect(page.get_by_role("button", name=f"Pause {DUMMY}")).to_be_visible()
        await screenshot(page, "stats")

        # Log out: the API no longer answers this page.
        await page.get_by_role("button", name="Log out").click()
        await expect(page.get_by_label("User name")).to_be_visible()
        status = await page.evaluate("async () => (await fetch('/api/v1/whoami')).status")
        assert status == 401
        assert page.errors == []
    finally:
        await page.context.close()


@needs_chromium
async def test_a_reader_sees_no_controls_and_the_api_refuses_it_anyway(server, team, team_clients, job_classes,
                                                                     browser, db):
    from playwright.async_api import expect

    reply = await team_clients["admin"].post("/job", json={"qual_name": DUMMY, "args": {"sleep": 30},
                                                           "follow": False})
    job_id = reply.json()["data"]
    page = await open_page(browser, server, "reader", "read-pw")
    try:
        await expect(page.locator("#user .rights")).to_contain_text("job:jobs.example.*:r")
        await expect(page.locator(f'tr[data-id="{job_id}"]')).to_be_visible()
        await page.locator(f'tr[data-id="{job_id}"] a').click()
        await expect(page.locator(".summary .badge").first).to_have_text("pending")
        await expect(page.locator("#prog-message")).to_be_attached()
        for name in ("Kill", "Restart", "Remove"):
            assert await page.get_by_role("button", name=name).count() == 0
        assert await page.locator("#nav-users").is_hidden()
        statuses = await page.evaluate("""async (id) => {
            const out = [];
            for (const action of ["kill", "remove", "restart"]) {
                const reply = await fetch(`/api/v1/job/${action}/${id}`, {method: "PUT",
                    headers: {"Content-Type": "application/json"}, body: JSON.stringify({follow: false})});
                out.push(reply.status);
            }
            const enqueue = await fetch("/api/v1/job", {method: "POST", headers: {"Content-Type": "application/json"},
                body: JSON.stringify({qual_name: "jobs.example.DummyJob", follow: false})});
            out.push(enqueue.status);
            return out;
        }""", job_id)
        assert statuses == [403, 403, 403, 403]
        assert (await db.queue.find_one({}))["state"] == "pending"
        # The page's reading of permissions (only to hide controls) agrees with the server's.
        from core.permissions import may

        user = {"name": "u", "active": True, "roles": [], "perms": [
            "job:jobs.example.*:r", "job:reports.[a-c]?:x", "job:other.[!x]*:x", "job:a.b?c:x", "job:x+y.(z):x"]}
        names = ["jobs.example.DummyJob", "jobsXexample.A", "reports.b1", "reports.d1", "reports.b12", "other.y",
                 "other.x", "a.bXc", "a.b.c", "a.bc", "x+y.(z)", "xy.(z)", "jobs.example.\nX"]
        version = (await page.locator("script[type=module]").get_attribute("src")).split("/")[2]
        seen = await page.evaluate("""async ([version, user, names]) => {
            const perms = await import(`/static/${version}/perms.js`);
            return names.map((name) => [perms.may(user, name, "r"), perms.may(user, name, "x")]);
        }""", [version, user, names])
        assert seen == [[may(user, name, "r"), may(user, name, "x")] for name in names]

        # Its stats page has no pause switches.
        await page.get_by_role("link", name="Stats").click()
        await expect(page.locator("figure svg.bars").first).to_be_visible()
        assert await page.get_by_role("button", name=re.compile("Pause|Resume")).count() == 0
        await page.get_by_role("link", name="Enqueue").click()
        await expect(page.get_by_role("alert")).to_contain_text("may not enqueue")
        assert page.errors == []
    finally:
        await page.context.close()


@needs_chromium
async def test_an_admin_adds_a_user_with_a_permission_and_changes_it_in_the_users_view(server, team, browser, db):
    from playwright.async_api import expect

    page = await open_page(browser, server, "admin", "hans")
    try:
        await page.get_by_role("link", name="Users").click()
        await page.get_by_label("New user's name").fill("carol")
        await page.get_by_label("New user's password").fill("carol-pw")
        await page.get_by_label("New user's permissions").fill("job:reports.*:r")
        await page.get_by_role("button", name="Add user").click()
        row = page.locator('tr[data-name="carol"]')
        await expect(row).to_contain_text("job:reports.*:r")
        await page.get_by_role("button", name="Edit carol").click()
        await page.get_by_label("Grant permissions").fill("job:jobs.example.*:x")
        await page.get_by_role("button", name="Grant", exact=True).click()
        await expect(row).to_contain_text("job:jobs.example.*:x")
        await page.get_by_role("button", name="Disable").click()
        await expect(row).to_contain_text("disabled")
        carol = await db.user.find_one({"name": "carol"})
        assert (carol["perms"], carol["active"]) == (["job:jobs.example.*:x", "job:reports.*:r"], False)
        assert page.errors == []
    finally:
        await page.context.close()


@needs_chromium
async def test_two_hundred_jobs_enqueued_at_once_appear_in_the_live_queue(server, team, team_clients, browser,
                                                                        job_classes):
    from playwright.async_api import expect

    page = await open_page(browser, server, "admin", "hans")
    try:
        await page.goto(server.dashboard_url + "#/queue?per_page=200")
        await expect(page.locator(".view-queue .count")).to_have_text("0 live jobs")
        jobs = [{"qual_name": DUMMY, "args": {"sleep": 1, "message": f"batch {n}"}} for n in range(200)]
        started = time.monotonic()
        reply = await team_clients["admin"].post("/job/batch", json={"jobs": jobs})
        assert reply.status_code == 200, reply.text
        ids = reply.json()["data"]
        await expect(page.locator(f'tr[data-id="{ids[0]}"]')).to_be_visible(timeout=LIVE)
        print(f"the first job shown {time.monotonic() - started:.2f} s after the batch was sent")
        await expect(page.locator(".view-queue .count")).to_have_text("200 live jobs", timeout=LIVE)
        await expect(page.locator("table.jobs tbody tr")).to_have_count(200)
        elapsed = time.monotonic() - started
        assert elapsed < 5, f"200 jobs took {elapsed:.1f} s to show"
        assert await page.locator(f'tr[data-id="{ids[0]}"]').is_visible()
        assert await page.locator(f'tr[data-id="{ids[-1]}"]').count() == 1
        print(f"200 jobs shown {elapsed:.2f} s after the batch was enqueued")
        # Pages of 25, walked with the listing's cursors; a search narrows them.
        await page.get_by_label("Per page").select_option("25")
        await expect(page.locator("table.jobs tbody tr")).to_have_count(25)
        assert await page.locator("table.jobs tbody tr").first.get_attribute("data-id") == ids[0]
        await page.get_by_role("button", name="Next").click()
        await expect(page.locator("table.jobs tbody tr").first).to_have_attribute("data-id", ids[25])
        await page.get_by_role("button", name="Previous").click()
        await expect(page.locator("table.jobs tbody tr").first).to_have_attribute("data-id", ids[0])
        await page.get_by_label("Search").fill("Fail*")
        await expect(page.locator("table.jobs tbody")).to_have_text("No live jobs.")
        assert page.url.endswith("#/queue?search=Fail*"), page.url
        await page.get_by_label("Search").fill("dummy")
        await expect(page.locator("table.jobs tbody tr")).to_have_count(25)
        assert page.errors == []
    finally:
        await page.context.close()


@needs_chromium
async def test_without_the_event_stream_the_views_re_read_every_two_seconds(config, db, team, job_classes, browser):
    """Against a server without ``/job/events`` (an older one) the dashboard polls, and says so."""
    from playwright.async_api import expect

    from handlers.app import ROUTES, Server
    from handlers.events import EventsHandler

    server = Server(config, db, routes=[route for route in ROUTES if route[1] is not EventsHandler])
    await server.start()
    try:
        page = await open_page(browser, server, "admin", "hans")
        try:
            await expect(page.locator("#stream-status")).to_have_text("polling every 2 s")
            async with httpx.AsyncClient(base_url=server.url, auth=("admin", "hans"), timeout=10) as http:
                reply = await http.post("/job", json={"qual_name": DUMMY, "follow": False})
            await expect(page.locator(f'tr[data-id="{reply.json()["data"]}"]')).to_be_visible(timeout=LIVE)
        finally:
            await page.context.close()
    finally:
        await server.stop()
