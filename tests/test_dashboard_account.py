"""The dashboard's Account view in a real browser: who am I, login sessions, API tokens, logout.

A non-admin makes an API token in the view, reads its secret (shown once),
uses it from a script (httpx), revokes it in the view and sees the API refuse
it; a session started elsewhere is ended from the view; logging out (from the
Sessions table and from the header) makes the old cookie value useless.
Skipped where Chromium is not installed, as ``tests/test_dashboard.py``.
"""
from __future__ import annotations

import asyncio
import re
import time

import httpx

from handlers.base import COOKIE
from tests.test_dashboard import browser, needs_chromium, open_page, screenshot  # noqa: F401 (browser: a fixture)

#: How long a revocation may take to be refused (the server's cache is emptied by its change stream at once).
REFUSED_WITHIN = 5.0


async def refused(http: httpx.AsyncClient, **kwargs) -> int:
    """GET /whoami with kwargs until it answers 401 (within REFUSED_WITHIN); the last status."""
    deadline = time.monotonic() + REFUSED_WITHIN
    while True:
        status = (await http.get("/whoami", **kwargs)).status_code
        if status == 401 or time.monotonic() > deadline:
            return status
        await asyncio.sleep(0.05)  # polling interval, not synchronisation: the loop waits on the status


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def cookie_header(token: str) -> dict[str, str]:
    """The login cookie as a browser sends it (not kept by the client: each request says what it sends)."""
    return {"Cookie": f"{COOKIE}={token}"}


@needs_chromium
async def test_a_user_makes_uses_and_revokes_a_token_and_ends_sessions_in_the_account_view(server, team, browser):
    from playwright.async_api import expect

    page = await open_page(browser, server, "executor", "exec-pw")
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        try:
            # Another session of the same user, from a script.
            login = await http.post("/login", json={"username": "executor", "password": "exec-pw"})
            assert login.status_code == 200, login.text
            other = login.json()["data"]
            assert (await http.get("/whoami", headers=bearer(other["token"]))).status_code == 200

            # The user's name in the header leads to the Account view.
            await page.locator("#user").click()
            await expect(page.get_by_role("heading", name="Your account")).to_be_visible()
            assert page.url.endswith("#/account")
            await expect(page.locator("#account-name")).to_have_text("executor")
            await expect(page.locator(".view-account .facts")).to_contain_text("job:jobs.example.*:x")

            # Sessions: this one marked, the script's with an End button.
            sessions = page.locator("table.sessions tbody tr")
            await expect(sessions).to_have_count(2)
            await expect(page.locator("tr.current")).to_contain_text("this session")
            await expect(page.locator(f'tr[data-id="{other["_id"]}"]')).to_contain_text("127.0.0.1")
            assert await page.locator("tr.current").get_by_role("button", name="End", exact=True).count() == 0

            # A token: the secret is shown once, and works from a script.
            await page.get_by_label("Name", exact=True).fill("nightly report")
            await page.get_by_label("Valid for (days)").fill("30")
            await page.get_by_role("button", name="Make token").click()
            secret_field = page.locator("#new-token-secret")
            await expect(secret_field).to_be_visible()
            await expect(page.locator("#new-token-note")).to_contain_text("Shown only now")
            assert await secret_field.get_attribute("readonly") is not None
            secret = await secret_field.input_value()
            assert re.fullmatch(r"jd_[0-9a-f]{24}_[A-Za-z0-9_-]{43}", secret), secret
            whoami = await http.get("/whoami", headers=bearer(secret))
            assert whoami.status_code == 200 and whoami.json()["data"]["name"] == "executor"
            row = page.locator('table.tokens tr[data-name="nightly report"]')
            await expect(row).to_contain_text("your rights")
            expires = await row.locator("td").nth(4).text_content()
            assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", expires), expires
            assert secret[-43:] not in await page.locator("table.tokens").inner_text()
            await screenshot(page, "account")

            # The server's refusals are shown next to the form: a name in use (409), a blank name (400).
            await page.get_by_label("Name", exact=True).fill("nightly report")
            await page.get_by_role("button", name="Make token").click()
            form = page.get_by_role("form", name="Make an API token")
            await expect(form.get_by_role("alert")).to_contain_text("has a token named 'nightly report' already")
            assert await secret_field.count() == 0  # the earlier secret is not shown again
            await page.get_by_label("Name", exact=True).fill("   ")
            await page.get_by_role("button", name="Make token").click()
            await expect(form.get_by_role("alert")).to_contain_text("bad token name")

            # A read-only token that never expires.
            await page.get_by_label("Name", exact=True).fill("reader")
            await page.get_by_label("Read-only").check()
            await page.get_by_label("Never expires").check()
            await expect(page.get_by_label("Valid for (days)")).to_be_disabled()
            await page.get_by_role("button", name="Make token").click()
            await expect(secret_field).to_be_visible()
            await expect(form.get_by_role("alert")).to_be_empty()
            reader = page.locator('table.tokens tr[data-name="reader"]')
            await expect(reader).to_contain_text("read-only")
            await expect(reader.locator("td").nth(4)).to_have_text("never")
            reader_secret = await secret_field.input_value()
            listed = (await http.get("/token", headers=bearer(other["token"]))).json()["data"]
            assert {(t["name"], t["read_only"], t["expires"] is None) for t in listed} == {
                ("nightly report", False, False), ("reader", True, True)}

            # The secret goes when the view is left.
            await page.get_by_role("link", name="Queue", exact=True).click()
            await expect(page.locator(".view-queue")).to_be_visible()
            await page.locator("#user").click()
            await expect(row).to_be_visible()
            assert await secret_field.count() == 0

            # Revoking asks first; once confirmed the API refuses the token.
            async def dismiss(dialog):
                assert "Revoke token nightly report?" in dialog.message
                await dialog.dismiss()

            async def accept(dialog):
                await dialog.accept()

            page.once("dialog", dismiss)
            await page.get_by_role("button", name="Revoke token nightly report").click()
            await expect(row.get_by_role("button", name="Revoke token nightly report")).to_be_enabled()
            assert (await http.get("/whoami", headers=bearer(secret))).status_code == 200
            page.once("dialog", accept)
            await page.get_by_role("button", name="Revoke token nightly report").click()
            await expect(row).to_have_count(0)
            await expect(page.get_by_text("token nightly report revoked")).to_be_visible()
            assert await refused(http, headers=bearer(secret)) == 401

            # Ending the script's session from the view.
            await page.locator(f'tr[data-id="{other["_id"]}"]').get_by_role("button", name="End").click()
            await expect(page.locator(f'tr[data-id="{other["_id"]}"]')).to_have_count(0)
            await expect(sessions).to_have_count(1)
            assert await refused(http, headers=bearer(other["token"])) == 401

            # Ending this session logs out: the login form, and the old cookie is refused.
            cookie = next(c["value"] for c in await page.context.cookies() if c["name"] == COOKIE)
            assert (await http.get("/whoami", headers=cookie_header(cookie))).status_code == 200
            await page.locator("tr.current").get_by_role("button", name="End this session (log out)").click()
            await expect(page.get_by_label("User name")).to_be_visible()
            await expect(page.locator("#user")).to_be_empty()
            assert await refused(http, headers=cookie_header(cookie)) == 401
            assert await refused(http, headers=bearer(cookie)) == 401

            # Log in again and out with the header's button: that cookie is refused too.
            await page.get_by_label("User name").fill("executor")
            await page.get_by_label("Password").fill("exec-pw")
            await page.get_by_role("button", name="Log in").click()
            await expect(page.locator("#user .name")).to_have_text("executor")
            await expect(page.locator("#who")).to_be_visible()
            again = next(c["value"] for c in await page.context.cookies() if c["name"] == COOKIE)
            assert again != cookie and (await http.get("/whoami", headers=cookie_header(again))).status_code == 200
            await page.get_by_role("button", name="Log out").click()
            await expect(page.get_by_label("User name")).to_be_visible()
            assert [c for c in await page.context.cookies() if c["name"] == COOKIE] == []
            assert await refused(http, headers=cookie_header(again)) == 401
            # The page's own requests are refused as well (no stale session in the page).
            assert await page.evaluate("async () => (await fetch('/api/v1/whoami')).status") == 401
            # Logging out ends sessions, not API tokens: the read-only one still reads.
            assert (await http.get("/whoami", headers=bearer(reader_secret))).status_code == 200
            assert page.errors == []
        finally:
            await page.context.close()
