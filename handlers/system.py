"""Service routes: health, identity, login and logout."""
from __future__ import annotations

import time
from datetime import datetime, timezone

from core import users
from core.errors import BadArgument
from core.permissions import is_admin
from handlers.base import COOKIE, BaseHandler

__all__ = ["HealthHandler", "WhoamiHandler", "LoginHandler", "LogoutHandler"]


class HealthHandler(BaseHandler):
    """``GET /health``: no authentication; 200 when the database answers, else 503."""

    auth_required = False

    async def get(self) -> None:
        data = await self.services.db.health()
        data["uptime"] = round(time.monotonic() - self.services.started, 3)
        self.reply(data)


class WhoamiHandler(BaseHandler):
    """``GET /whoami``: the caller's user (name, roles, permissions)."""

    async def get(self) -> None:
        self.reply({**users.public(self.current_user), "admin": is_admin(self.current_user)})


class LoginHandler(BaseHandler):
    """``POST /login``: check credentials, return a token and set it as an HttpOnly cookie.

    Credentials come from Basic auth or from ``username``/``password``
    arguments (JSON body or form). The cookie lets a browser's
    ``EventSource``, which cannot send headers, follow jobs.
    """

    auth_required = False

    async def post(self) -> None:
        auth = self.services.auth
        header = self.request.headers.get("Authorization", "")
        if header[:6].lower() == "basic ":
            name, password = self.basic_credentials(header[6:])
        else:
            name = self.arg("username", default=None) or self.arg("name", default=None)
            password = self.arg("password", default=None)
            if not name or password is None:
                raise BadArgument("send Basic credentials, or 'username' and 'password'")
        user = await auth.password(name, password, address=self.request.remote_ip)
        token, expires = auth.issue_token(user)
        self.set_cookie(COOKIE, token, path="/", httponly=True, samesite="Lax",
                        secure=self.request.protocol == "https",
                        expires=datetime.fromtimestamp(expires, timezone.utc))
        self.reply({"name": user["name"], "token": token,
                    "expires": datetime.fromtimestamp(expires, timezone.utc)})


class LogoutHandler(BaseHandler):
    """``POST /logout``: clear the login cookie (the token itself stays valid until it expires)."""

    auth_required = False

    def post(self) -> None:
        self.clear_cookie(COOKIE, path="/")
        self.reply(None)
