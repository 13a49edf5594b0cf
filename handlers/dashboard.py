"""The dashboard: the page shell at ``/`` and its static files, shipped in ``jobdeck/dashboard/``.

The dashboard is plain ES modules served as they are (no build step, nothing
fetched from elsewhere). Everything it shows comes from the API under
``/api/v1`` with the login cookie; loading the shell and its files needs no
authentication.

- ``GET /``: ``index.html`` with the files' version filled in; never cached.
- ``GET /static/<version>/<file>``: a file of ``jobdeck/dashboard/static``.
  ``<version>`` is a hash of all of them, so a page and its modules always
  match, and they are cached for a year (a module's relative imports stay in
  the same versioned folder). A stale version is served uncached.
- ``GET /queue``, ``/journal``, ``/job/<id>`` ... (the dashboard's own views):
  redirect to ``/#/<view>`` (the views use hash routing). Other paths stay 404.

Every page and file carries a strict Content-Security-Policy: no inline
script or style, nothing from another origin, no framing.
"""
from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Any

from tornado.web import RequestHandler, StaticFileHandler

__all__ = ["DASHBOARD_DIR", "DASHBOARD_ROUTES", "CSP", "version", "ShellHandler", "DashboardFileHandler",
           "ViewRedirectHandler"]

DASHBOARD_DIR = Path(__file__).resolve().parent.parent / "jobdeck" / "dashboard"
_STATIC = DASHBOARD_DIR / "static"
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
#: The views of the hash router that have a path of their own.
VIEWS = ("login", "queue", "journal", "job", "enqueue", "workers", "stats", "users", "account")
_YEAR = 365 * 24 * 3600


@functools.cache
def version() -> str:
    """A hash of every file of the dashboard (12 hex digits): changes whenever one does."""
    digest = hashlib.sha256()
    for path in sorted(DASHBOARD_DIR.rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(DASHBOARD_DIR)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def _security_headers(handler: RequestHandler) -> None:
    handler.set_header("Content-Security-Policy", CSP)
    handler.set_header("X-Content-Type-Options", "nosniff")
    handler.set_header("X-Frame-Options", "DENY")
    handler.set_header("Referrer-Policy", "same-origin")


class ShellHandler(RequestHandler):
    """``GET /``: the page every view runs in."""

    def set_default_headers(self) -> None:
        _security_headers(self)

    def get(self) -> None:
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.set_header("Cache-Control", "no-cache")
        self.finish(_shell())

    head = get


@functools.cache
def _shell() -> str:
    return (DASHBOARD_DIR / "index.html").read_text("utf-8").replace("{{version}}", version())


class DashboardFileHandler(StaticFileHandler):
    """``GET /static/<version>/<file>``: cached for a year when ``<version>`` is the current one."""

    def initialize(self, **kwargs: Any) -> None:
        super().initialize(path=str(_STATIC))

    def set_default_headers(self) -> None:
        _security_headers(self)

    async def get(self, file_version: str, path: str, include_body: bool = True) -> None:
        self.current_version = file_version == version()
        await super().get(path, include_body)

    async def head(self, file_version: str, path: str) -> None:  # type: ignore[override]
        await self.get(file_version, path, include_body=False)

    def get_cache_time(self, path: str, modified: Any, mime_type: str) -> int:
        return _YEAR if self.current_version else 0

    def set_extra_headers(self, path: str) -> None:
        self.set_header("Cache-Control", f"public, max-age={_YEAR}, immutable" if self.current_version
                        else "no-cache")

    def get_content_type(self) -> str:
        if self.absolute_path.endswith(".js"):
            return "text/javascript; charset=UTF-8"
        return super().get_content_type()


class ViewRedirectHandler(RequestHandler):
    """``GET /<view>[/...]``: the hash-routed view's address, ``/#/<view>/...``."""

    def set_default_headers(self) -> None:
        _security_headers(self)

    def get(self, path: str) -> None:
        self.redirect("/#/" + path.strip("/"))

    head = get


DASHBOARD_ROUTES: list[tuple[str, type]] = [
    (r"/", ShellHandler),
    (r"/index\.html", ShellHandler),
    (r"/static/([0-9a-f]{1,64})/(.+)", DashboardFileHandler),
    (r"/((?:%s)(?:/[^/]*)?)/?" % "|".join(VIEWS), ViewRedirectHandler),
]
