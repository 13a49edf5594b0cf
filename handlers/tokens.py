"""API tokens and login sessions: thin handlers over ``core.tokens``, which checks who may do what."""
from __future__ import annotations

from bson import ObjectId

from core import tokens
from handlers.base import BaseHandler
from handlers.openapi import Op, Param

__all__ = ["TokensHandler", "TokenHandler", "SessionsHandler", "SessionHandler"]

_TAGS = ("tokens",)
_USER = Param("user", "string", "another user's (admins only; 403 for everyone else)")


class TokensHandler(BaseHandler):
    """``GET /token``: the caller's API tokens; ``POST /token``: make one."""

    api = {
        "get": Op("List your API tokens (never their secrets): name, created, last used, expires",
                  (_USER,), reply="ApiToken", array=True, errors=(400, 401, 403), tags=_TAGS),
        "post": Op("Make an API token for scripts: its secret is in this reply only", (
            Param("name", "string", "a name you recognise it by, 1-64 characters, unique among your tokens",
                  required=True),
            Param("read_only", "boolean", "the token may read what you may, and change nothing", default=False),
            Param("expires_in_days", "integer", "days it is valid, 1-3650; null or left out: until revoked",
                  minimum=1, maximum=tokens.MAX_DAYS, schema={"type": ["integer", "null"]})),
            reply="NewApiToken", errors=(400, 401, 403, 409), tags=_TAGS,
            description="Send the token as `Authorization: Bearer <token>`. Only its hash is kept: a lost "
                        "token cannot be shown again. 403 when the request authenticated with an API token "
                        "(it cannot make tokens); 409 for a name in use or 100 tokens already. Audited as "
                        "token.create."),
    }

    async def get(self) -> None:
        self.reply(await tokens.list_tokens(self.services.db, by=self.current_user,
                                            user=self.arg("user", str, None)))

    async def post(self) -> None:
        token, doc = await tokens.create(
            self.services.db, name=self.arg("name"), read_only=self.arg("read_only", bool, False),
            expires_in_days=self.arg("expires_in_days", int, None), by=self.current_user)
        shown = tokens.public(doc)
        self.reply({key: shown[key] for key in ("_id", "name", "read_only", "expires", "created")} | {"token": token})


class TokenHandler(BaseHandler):
    """``DELETE /token/<id>``: revoke an API token."""

    api = {"delete": Op("Revoke an API token: refused at once by every server", reply="ApiToken",
                        errors=(401, 403, 404), tags=_TAGS, id="TokenId",
                        description="Yours, or anyone's for an admin (404 for another's otherwise). "
                                    "Audited as token.revoke.")}

    async def delete(self, token_id: str) -> None:
        self.reply(await tokens.revoke(self.services.db, token_id, by=self.current_user))


class SessionsHandler(BaseHandler):
    """``GET /session``: the caller's login sessions."""

    api = {"get": Op("List your login sessions (POST /login made them): from where, when, which is this one",
                     (_USER,), reply="Session", array=True, errors=(400, 401, 403), tags=_TAGS)}

    async def get(self) -> None:
        self.reply(await tokens.list_tokens(self.services.db, kind=tokens.SESSION, by=self.current_user,
                                            user=self.arg("user", str, None), current=self._calling_token()))

    def _calling_token(self) -> ObjectId | None:
        """The id of the session (or API token) this request authenticated with, if any."""
        kind, *values = self.credentials or ("none",)
        parsed = tokens.parse(values[0]) if kind in ("token", "cookie") else None
        return parsed[0] if parsed else None


class SessionHandler(BaseHandler):
    """``DELETE /session/<id>``: end a login session (log it out)."""

    api = {"delete": Op("End a login session: its token is refused at once by every server", reply="Session",
                        errors=(401, 403, 404), tags=_TAGS, id="TokenId",
                        description="Yours, or anyone's for an admin (404 for another's otherwise). "
                                    "Audited as session.end.")}

    async def delete(self, session_id: str) -> None:
        self.reply(await tokens.revoke(self.services.db, session_id, kind=tokens.SESSION, by=self.current_user))

