"""The API's documentation for people: Swagger UI at ``/docs``, and the route index at ``GET /api/v1``.

``/docs`` renders ``/api/v1/openapi.json`` with Swagger UI, from the files the
``swagger-ui-py`` package ships (``/docs/static/...``): nothing comes from a
CDN or is fetched at run time. The package's own page template starts Swagger
UI with an inline script; this page does it from ``/docs/jobdeck.js`` instead,
so its Content-Security-Policy can forbid inline scripts. The page needs no
authentication; the API calls it makes do, like any other: the login cookie
goes along by itself (same origin), and Authorize takes Basic credentials or
a token. Calls that change something are JSON from the page's own origin,
which is what the cross-site checks of ``handlers.base`` ask for.

The index lists every operation of the route table with the summary its
``api`` declares, the one the OpenAPI document shows too. It needs
authentication exactly when ``/openapi.json`` does, since it tells the same.
"""
from __future__ import annotations

from importlib.metadata import version
from typing import Any

from swagger_ui.utils import SWAGGER_UI_PY_ROOT
from tornado.web import RedirectHandler, RequestHandler, StaticFileHandler

from handlers.base import BaseHandler
from handlers.openapi import Op, operations
from handlers.system import OpenAPIHandler

__all__ = ["DOCS", "CONTENT_SECURITY_POLICY", "DocsPageHandler", "DocsFileHandler", "SwaggerFileHandler",
           "IndexHandler", "routes"]

DOCS = "/docs"
_SWAGGER_VERSION = version("swagger-ui-py")
#: The files of the package the page loads, no others (the package also ships Swagger Editor).
_SWAGGER_FILES = ("swagger-ui.css", "index.css", "swagger-ui-bundle.js", "favicon-32x32.png", "favicon-16x16.png")

#: Only this origin's files: no inline script, no eval, no inline style. Swagger UI (React) sets styles through
#: the DOM (``element.style``), which a CSP does not restrict; it writes a ``style`` attribute only for the
#: alignment of Markdown table cells, and the descriptions have no tables. Its icons are ``data:`` images in
#: its CSS. It connects only to this origin: its validator badge, which would fetch from validator.swagger.io,
#: is switched off.
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                           "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; "
                           "frame-ancestors 'none'")

_PAGE = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>jobdeck API</title>
<link rel="stylesheet" href="{DOCS}/static/swagger-ui.css?v={_SWAGGER_VERSION}">
<link rel="stylesheet" href="{DOCS}/static/index.css?v={_SWAGGER_VERSION}">
<link rel="stylesheet" href="{DOCS}/jobdeck.css?v={_SWAGGER_VERSION}">
<link rel="icon" type="image/png" href="{DOCS}/static/favicon-32x32.png?v={_SWAGGER_VERSION}" sizes="32x32">
<link rel="icon" type="image/png" href="{DOCS}/static/favicon-16x16.png?v={_SWAGGER_VERSION}" sizes="16x16">
</head>
<body>
<nav class="jobdeck-bar" aria-label="jobdeck">
<a href="/">dashboard</a> <a href="/api/v1">route index</a> <a href="/api/v1/openapi.json">openapi.json</a>
<span>The API calls of this page use your login: log in on the dashboard first. Authorize acts as another
user (Basic: user name and password, or a token).</span>
</nav>
<main id="swagger-ui" data-url="/api/v1/openapi.json"></main>
<script src="{DOCS}/static/swagger-ui-bundle.js?v={_SWAGGER_VERSION}"></script>
<script src="{DOCS}/jobdeck.js?v={_SWAGGER_VERSION}"></script>
</body>
</html>
"""

_SCRIPT = """"use strict";
// Starts Swagger UI on the page's #swagger-ui (the page has no inline script, see its Content-Security-Policy).
window.addEventListener("load", () => {
  const root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.dataset.url,
    domNode: root,
    deepLinking: true,
    displayRequestDuration: true,
    // The badge would fetch from validator.swagger.io: nothing leaves this origin.
    validatorUrl: null,
    // Basic credentials given to Authorize stay in the page, never in localStorage.
    persistAuthorization: false,
    // A GET's arguments may come in a JSON body too (the document says so), but a browser cannot send a
    // body with GET (fetch refuses): the page sends the query string fields only.
    requestInterceptor: (request) => {
      if (request.method === "GET" || request.method === "HEAD") {
        delete request.body;
        for (const name of Object.keys(request.headers || {})) {
          if (name.toLowerCase() === "content-type") delete request.headers[name];
        }
      }
      return request;
    },
    presets: [SwaggerUIBundle.presets.apis],
    plugins: [SwaggerUIBundle.plugins.DownloadUrl],
    layout: "BaseLayout",
  });
});
"""

_STYLE = """.jobdeck-bar { font-family: sans-serif; font-size: 14px; padding: 10px 20px; background: #1b1b1b;
  color: #ddd; }
.jobdeck-bar a { color: #8fd; margin-right: 1em; }
.jobdeck-bar span { margin-left: 1em; }
"""

_GENERATED = {"jobdeck.js": ("text/javascript; charset=utf-8", _SCRIPT),
              "jobdeck.css": ("text/css; charset=utf-8", _STYLE)}


class _PageHeaders(RequestHandler):
    """The headers of the page and of its own files: no sniffing, no framing, no referrer."""

    def set_default_headers(self) -> None:
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("Referrer-Policy", "same-origin")


class DocsPageHandler(_PageHeaders):
    """``GET /docs``: the Swagger UI page (no authentication; its API calls authenticate)."""

    def set_default_headers(self) -> None:
        super().set_default_headers()
        self.set_header("Content-Security-Policy", CONTENT_SECURITY_POLICY)

    def get(self) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.finish(_PAGE)


class DocsFileHandler(_PageHeaders):
    """``GET /docs/jobdeck.js`` and ``/docs/jobdeck.css``: what starts and frames Swagger UI."""

    def get(self, name: str) -> None:
        content_type, text = _GENERATED[name]
        self.set_header("Content-Type", content_type)
        # Versioned by the URL's ?v=, like the package's files.
        self.set_header("Cache-Control", "public, max-age=86400" if self.get_query_argument("v", None) else "no-cache")
        self.finish(text)


class SwaggerFileHandler(StaticFileHandler):
    """``GET /docs/static/<file>``: Swagger UI's files from the ``swagger-ui-py`` package (``_SWAGGER_FILES``)."""

    def set_default_headers(self) -> None:
        self.set_header("X-Content-Type-Options", "nosniff")


class IndexHandler(BaseHandler):
    """``GET /api/v1``: every operation (method, path, summary) and where the documentation is.

    Authenticated exactly when ``/openapi.json`` is: it tells the same.
    """

    auth_required = OpenAPIHandler.auth_required
    api = {"get": Op("This index: every route (method, path, summary), and links to the docs, the OpenAPI "
                     "document and the dashboard", reply="Index", errors=(401,) if auth_required else (),
                     auth=auth_required, tags=("service",))}

    def get(self) -> None:
        prefix = self.request.path.rstrip("/")
        routes = [{"method": method.upper(), "path": prefix + path, "summary": op.summary}
                  for path, method, op in operations(self.services.routes)]
        self.reply({"title": "jobdeck", "links": _links(prefix), "routes": routes})


def _links(prefix: str) -> dict[str, Any]:
    return {"docs": DOCS, "openapi": f"{prefix}/openapi.json", "dashboard": "/"}


def routes() -> list[tuple[Any, ...]]:
    """The routes outside the API's prefixes: the page, its files, and the redirects to it."""
    files = "|".join(name.replace(".", r"\.") for name in _SWAGGER_FILES)
    generated = "|".join(name.replace(".", r"\.") for name in _GENERATED)
    return [
        (DOCS, DocsPageHandler),
        (f"{DOCS}/({generated})", DocsFileHandler),
        (f"{DOCS}/static/({files})", SwaggerFileHandler, {"path": str(SWAGGER_UI_PY_ROOT / "static")}),
        (f"({DOCS}/|/swagger/?)", RedirectHandler, {"url": DOCS, "permanent": False}),
    ]
