"""Service routes: health, identity, login, logout, metrics and the OpenAPI document."""
from __future__ import annotations

import time

from core import tokens, users
from core.errors import BadArgument
from core.permissions import is_admin
from handlers.base import COOKIE, BaseHandler
from handlers.openapi import Op, Param, build

__all__ = ["HealthHandler", "WhoamiHandler", "LoginHandler", "LogoutHandler", "MetricsHandler",
           "OpenAPIHandler"]

_SERVICE = ("service",)


class HealthHandler(BaseHandler):
    """``GET /health``: no authentication; 200 when the database answers, else 503."""

    auth_required = False
    api = {"get": Op("Health: no authentication; 200 when the database answers, 503 when not",
                     reply="Health", errors=(), auth=False, tags=_SERVICE)}

    async def get(self) -> None:
        data = await self.services.db.health()
        data["uptime"] = round(time.monotonic() - self.services.started, 3)
        # This process's own: the job modules it could not import at start.
        data["job_import_errors"] = self.services.job_import_errors
        self.reply(data)


class WhoamiHandler(BaseHandler):
    """``GET /whoami``: the caller's user (name, roles, permissions)."""

    api = {"get": Op("The caller: name, roles, permissions", reply="User", errors=(401,), tags=_SERVICE)}

    async def get(self) -> None:
        self.reply({**users.public(self.current_user), "admin": is_admin(self.current_user)})


class LoginHandler(BaseHandler):
    """``POST /login``: check credentials, return a token and set it as an HttpOnly cookie.

    Credentials come from Basic auth or from ``username``/``password``
    arguments (JSON body or form). The cookie lets a browser's
    ``EventSource``, which cannot send headers, follow jobs. With
    ``cookie_only`` the token is only in the cookie, so a page's scripts never
    see it (what ``HttpOnly`` is for).
    """

    auth_required = False
    accepts_form = True
    api = {"post": Op("Log in with Basic credentials or username/password: a token and an HttpOnly cookie",
                      (Param("username", "string", "user name (if not sent as Basic auth)"),
                       Param("password", "string", "password (if not sent as Basic auth)"),
                       Param("cookie_only", "boolean", "leave the token out of the reply: only the cookie "
                             "carries it (for browsers)", default=False)),
                      reply="Token", errors=(400, 401, 403, 415, 429), auth=False, tags=_SERVICE, form=True)}

    async def post(self) -> None:
        auth = self.services.auth
        cookie_only = self.arg("cookie_only", bool, False)
        header = self.request.headers.get("Authorization", "")
        if header[:6].lower() == "basic ":
            name, password = self.basic_credentials(header[6:])
        else:
            name = self.arg("username", default=None) or self.arg("name", default=None)
            password = self.arg("password", default=None)
            if not name or password is None:
                raise BadArgument("send Basic credentials, or 'username' and 'password'")
        user = await auth.password(name, password, address=self.client_ip)
        token, expires = await auth.issue_token(user, address=self.client_ip,
                                                agent=self.request.headers.get("User-Agent"))
        self.set_cookie(COOKIE, token, path="/", httponly=True, samesite="Lax",
                        secure=self.client_protocol == "https", expires=expires)
        reply = {"name": user["name"], "_id": tokens.parse(token)[0], "expires": expires}
        self.reply(reply if cookie_only else {**reply, "token": token})


class LogoutHandler(BaseHandler):
    """``POST /logout``: end the session (or API token) the request carries, and clear the login cookie.

    Without authentication: a request that carries no token, or one no longer
    valid, only clears the cookie. The token sent as ``Authorization: Bearer``
    ends, and so does the cookie's (a foreign page's request is refused, as
    every unsafe one).
    """

    auth_required = False
    accepts_form = True
    api = {"post": Op("Log out: end the login session (or API token) this request carries, and clear the "
                      "login cookie", reply="Nothing", errors=(403, 415), auth=False, tags=_SERVICE,
                      description="The token is refused at once by every server. Audited as logout.")}

    async def post(self) -> None:
        ended = []
        header = self.request.headers.get("Authorization", "")
        if header[:7].lower() == "bearer ":
            ended.append(header[7:].strip())
        if cookie := self.get_cookie(COOKIE):
            ended.append(cookie)  # a foreign page's request was refused already (prepare)
        for token in ended:
            await tokens.end(self.services.db, token)
        self.clear_cookie(COOKIE, path="/")
        self.reply(None)


class MetricsHandler(BaseHandler):
    """``GET /metrics``: Prometheus text (admins only)."""

    api = {"get": Op("Prometheus metrics (text/plain exposition format); admins only", reply="Metrics",
                     errors=(401, 403), tags=_SERVICE, media="text/plain", envelope=False)}

    async def get(self) -> None:
        services = self.services
        text = await services.metrics.render(services.db, user=self.current_user,
                                             lease_seconds=services.config.lease_seconds)
        self.set_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.finish(text)


class OpenAPIHandler(BaseHandler):
    """``GET /openapi.json``: the OpenAPI 3.1 description of every route."""

    api = {"get": Op("This OpenAPI 3.1 document (as it is, not in the reply envelope)", reply="OpenAPI",
                     errors=(401,), tags=_SERVICE, envelope=False)}

    def get(self) -> None:
        prefix = self.request.path.rstrip("/")[: -len("/openapi.json")]
        self.finish(build(self.services.routes, prefix=prefix))
