"""The user API (admins): thin handlers over ``core.users``, which checks that the caller is an admin.

Passwords never leave the server: every reply is ``users.public``. A user
may read its own record; changing any password, its own included, is an
admin's (or the command line's) job, so this API offers no password check
besides the throttled logins.
"""
from __future__ import annotations

from typing import Any

from core import users
from handlers.base import BaseHandler
from handlers.openapi import Op, Param

__all__ = ["UsersHandler", "UserHandler"]

_TAGS = ("users",)
_PERM_ITEMS = {"items": {"type": "string", "description": "job:<glob>:r or job:<glob>:x"}}
_ADMINS = "Admins only (403 for everyone else)."


class UsersHandler(BaseHandler):
    """``GET /user``: every user; ``POST /user``: add one."""

    api = {
        "get": Op("List every user by name: roles, permissions, active (never a password)", reply="User",
                  array=True, errors=(401, 403), tags=_TAGS, description=_ADMINS),
        "post": Op("Add a user", (
            Param("name", "string", "1-64 letters, digits, '_', '.', '@' or '-', starting with a letter or digit",
                  required=True),
            Param("password", "string", "its password, 1-1024 characters", required=True),
            Param("admin", "boolean", "give it the admin role (default false)", default=False),
            Param("perms", "array", "permissions to grant, e.g. job:jobs.example.*:x", schema=_PERM_ITEMS)),
            reply="User", errors=(400, 401, 403, 409), tags=_TAGS,
            description=_ADMINS + " 409 when the name is taken. Audited as user.add with the caller's name."),
    }

    async def get(self) -> None:
        self.reply(await users.list_users(self.services.db, by=self.current_user))

    async def post(self) -> None:
        created = await users.add(self.services.db, self.arg("name"), self.arg("password"),
                                  roles=["admin"] if self.arg("admin", bool, False) else [],
                                  perms=self.arg("perms", list, []), by=self.current_user)
        self.reply(created)


class UserHandler(BaseHandler):
    """``GET|PUT|DELETE /user/<name>``."""

    api = {
        "get": Op("One user", reply="User", errors=(401, 403, 404), tags=_TAGS, id="UserName",
                  description="Admins, and the user itself (403 for everyone else)."),
        "put": Op("Change a user: the fields given, access first, then active, then the password", (
            Param("password", "string", "a new password, 1-1024 characters: the user's tokens stop working"),
            Param("grant", "array", "permissions to grant", schema=_PERM_ITEMS),
            Param("revoke", "array", "permissions to revoke", schema=_PERM_ITEMS),
            Param("admin", "boolean", "give (true) or take (false) the admin role"),
            Param("active", "boolean", "enable (true) or disable (false): a disabled user can neither log in "
                  "nor use its tokens")),
            reply="User", errors=(400, 401, 403, 404, 409), tags=_TAGS, id="UserName",
            description=_ADMINS + " Every field is checked before anything changes (400, also for no field); "
                        "409 when the last active admin would lose its role or be disabled. Audited as "
                        "user.access, user.enable/user.disable and user.passwd with the caller's name."),
        "delete": Op("Remove a user for good", reply="Nothing",
                     errors=(401, 403, 404, 409), tags=_TAGS, id="UserName",
                     description=_ADMINS + " 409 for the last active admin. Audited as user.remove."),
    }

    async def get(self, name: str) -> None:
        self.reply(users.public(await users.get(self.services.db, name, by=self.current_user)))

    async def put(self, name: str) -> None:
        fields: dict[str, Any] = {"password": self.arg("password", str, None), "admin": self.arg("admin", bool, None),
                                  "active": self.arg("active", bool, None),
                                  "grant": self.arg("grant", list, []), "revoke": self.arg("revoke", list, [])}
        self.reply(await users.update(self.services.db, name, **fields, by=self.current_user))

    async def delete(self, name: str) -> None:
        await users.remove(self.services.db, name, by=self.current_user)
        self.reply(None)
