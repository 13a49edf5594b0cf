"""The Tornado application: routes under ``/api/v1`` and ``/core4/api/v1``, and the server."""
from __future__ import annotations

import logging
import socket
import ssl
from typing import Any

from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.log import access_log
from tornado.web import Application, RequestHandler

from core import counts, startup
from core.audit import RecordedInserts
from core.auth import Authenticator
from core.cache import Cache
from core.config import Config
from core.db import Database
from core.hub import Hub
from handlers import docs, jobs, schedules, tokens, users
from handlers.audit import AuditHandler
from handlers.base import NotFoundHandler
from handlers.events import EventsHandler
from handlers.dashboard import DASHBOARD_ROUTES
from handlers.services import Services
from handlers.system import (HealthHandler, LoginHandler, LogoutHandler, MetricsHandler, OpenAPIHandler,
                             WhoamiHandler)

__all__ = ["PREFIXES", "ROUTES", "Services", "make_app", "listen", "tls_context", "Server"]

log = logging.getLogger(__name__)

PREFIXES = ("/api/v1", "/core4/api/v1")
_ID = r"([^/]+)"
# Order matters: the first pattern that matches wins.
ROUTES: list[tuple[str, type]] = [
    (r"", docs.IndexHandler),  # the prefix itself: GET /api/v1 lists the routes
    (r"/health", HealthHandler),
    (r"/whoami", WhoamiHandler),
    (r"/login", LoginHandler),
    (r"/logout", LogoutHandler),
    (r"/metrics", MetricsHandler),
    (r"/openapi.json", OpenAPIHandler),
    (r"/worker", jobs.WorkerHandler),
    (r"/job", jobs.JobHandler),
    (r"/job/list", jobs.RegistryHandler),
    (r"/job/enqueue", jobs.EnqueueHandler),
    (r"/job/batch", jobs.BatchHandler),
    (r"/job/queue", jobs.QueueHandler),
    (r"/job/journal", jobs.JournalHandler),
    (r"/job/stats", jobs.StatsHandler),
    (r"/job/events", EventsHandler),
    (r"/job/pause", jobs.PauseHandler),
    (r"/job/resume", jobs.ResumeHandler),
    (r"/job/detail/" + _ID, jobs.ReadDetailHandler),
    (r"/job/follow/" + _ID, jobs.FollowHandler),
    (r"/job/log/" + _ID, jobs.LogHandler),
    (r"/job/poll/" + _ID, jobs.PollHandler),
    (r"/job/kill/" + _ID, jobs.KillHandler),
    (r"/job/remove/" + _ID, jobs.RemoveHandler),
    (r"/job/restart/" + _ID, jobs.RestartHandler),
    (r"/job/([^/]+)/" + _ID, jobs.UnknownActionHandler),
    (r"/job/" + _ID, jobs.DetailHandler),
    (r"/schedule", schedules.ScheduleHandler),
    (r"/schedule/" + _ID + r"/pause", schedules.SchedulePauseHandler),
    (r"/schedule/" + _ID + r"/resume", schedules.ScheduleResumeHandler),
    (r"/schedule/" + _ID, schedules.ScheduleDetailHandler),
    (r"/audit", AuditHandler),
    (r"/user", users.UsersHandler),
    (r"/user/" + _ID, users.UserHandler),
    (r"/token", tokens.TokensHandler),
    (r"/token/" + _ID, tokens.TokenHandler),
    (r"/session", tokens.SessionsHandler),
    (r"/session/" + _ID, tokens.SessionHandler),
]


def make_app(services: Services, routes: list[tuple[str, type]] = ROUTES, **settings: Any) -> Application:
    """The application with every route mounted under each of ``PREFIXES``."""
    services.routes = routes
    handlers = [(prefix + path + "/?", handler) for prefix in PREFIXES for path, handler in routes]
    handlers += docs.routes()  # /docs: Swagger UI (handlers.docs), outside the API
    handlers += DASHBOARD_ROUTES  # the dashboard's page and files (handlers.dashboard), outside the API
    return Application(handlers, default_handler_class=NotFoundHandler, services=services,
                       log_function=_log_request, **settings)


def _log_request(handler: RequestHandler) -> None:
    """One access log line per request, with the error's message if it failed.

    Made only when its level is logged (Tornado's own formats it first).
    """
    status = handler.get_status()
    level = logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR
    if access_log.isEnabledFor(level):
        error = getattr(handler, "error_message", None)
        access_log.log(level, "%d %s %.2fms%s", status, handler._request_summary(),
                       1000.0 * handler.request.request_time(), f": {error}" if error else "")


def tls_context(config: Config) -> ssl.SSLContext | None:
    """The server's TLS context, or None without ``tls_cert``; raises ``ConfigError`` naming
    ``tls_cert``/``tls_key`` when they cannot be loaded (``core.startup``)."""
    if not config.tls:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(config.tls_cert, config.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise startup.bad_tls(config.tls_cert, config.tls_key, exc) from exc
    return context


def listen(config: Config) -> list[socket.socket]:
    """Sockets bound and listening on ``config.host:config.port``, for ``Server.start``.

    Raises ``ConfigError`` naming ``port`` or ``host`` when the port is taken
    or the host is not an address of this machine (``core.startup``).
    """
    try:
        return bind_sockets(config.port, config.host,
                            family=socket.AF_INET if config.host.count(".") == 3 else socket.AF_UNSPEC)
    except OSError as exc:
        raise startup.cannot_listen(config.host, config.port, exc) from exc


class Server:
    """The HTTP server of one process: ``await start()``, then ``await stop()``."""

    def __init__(self, config: Config, db: Database, *, auth: Authenticator | None = None,
                 routes: list[tuple[str, type]] = ROUTES, keepalive: float = 15.0,
                 job_import_errors: list[dict[str, str]] | None = None) -> None:
        """``job_import_errors``: the job modules this process could not import (``GET /health`` shows them)."""
        self.config = config
        self.db = db
        self.auth = auth
        self.routes = routes
        self.keepalive = keepalive
        self.job_import_errors = list(job_import_errors or [])
        self.hub = Hub(db)
        #: What every request reads, kept fresh by the hub (see ``core.cache``).
        self.user_cache = Cache(db, "user", hub=self.hub)
        self.registry_cache = Cache(db, "registry", hub=self.hub)
        self.token_cache = Cache(db, "token", hub=self.hub)
        #: Enqueues arriving together are written together (see ``core.audit``).
        self.job_inserts = RecordedInserts(db, db.queue, also=counts.inserts(db))
        #: Folds the job counts' changes (so does every worker; see ``core.counts``).
        self.folder = counts.Folder(db)
        self.http: HTTPServer | None = None
        self.services: Services | None = None
        self.port: int | None = None

    async def start(self) -> None:
        """Listen on ``config.host:config.port`` (port 0 picks a free one, see ``self.port``).

        Binds first, so that a taken port (``ConfigError``, see ``listen``) leaves nothing started.
        """
        ssl_options = tls_context(self.config)
        sockets = listen(self.config)
        if self.auth is None:
            self.auth = Authenticator(self.db, token_seconds=self.config.token_hours * 3600,
                                      user_cache=self.user_cache, token_cache=self.token_cache)
        await self.hub.start()
        self.folder.start()
        self.services = services = Services(self.config, self.db, self.auth, self.hub, keepalive=self.keepalive,
                                            registry_cache=self.registry_cache, job_inserts=self.job_inserts,
                                            job_import_errors=self.job_import_errors)
        # Tornado's own limit only guards the connection; the handlers answer
        # 413 at max_body_size, so theirs must be higher.
        self.http = HTTPServer(make_app(services, self.routes), ssl_options=ssl_options,
                               max_body_size=max(self.config.max_body_size * 4, 16 * 1024 * 1024))
        self.http.add_sockets(sockets)
        self.port = sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        """The base URL of the API."""
        scheme = "https" if self.config.tls else "http"
        return f"{scheme}://{self.config.host}:{self.port}/api/v1"

    @property
    def dashboard_url(self) -> str:
        """The dashboard's address (``/``)."""
        return self.url[: -len("api/v1")]

    async def stop(self) -> None:
        """Stop listening and close every open connection."""
        if self.http is not None:
            self.http.stop()
            await self.hub.stop()  # ends live followers
            await self.http.close_all_connections()
            self.http = None
        await self.job_inserts.stop()
        await self.folder.stop()
        self.user_cache.close()
        self.registry_cache.close()
        self.token_cache.close()
