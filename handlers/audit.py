"""The audit trail API (admins): a thin handler over ``core.audit.listing``, which checks that the caller is one."""
from __future__ import annotations

from core import audit
from handlers.base import BaseHandler
from handlers.openapi import CURSOR_PARAMS, PAGE_PARAMS, Op, Param

__all__ = ["AuditHandler"]

_NAME = {"maxLength": audit.MAX_NAME}
_TIME = ("ISO 8601 (without a zone: UTC), or an age before now such as 90m, 2h, 3d, 1w")


class AuditHandler(BaseHandler):
    """``GET /audit``: who did what, newest first, paginated."""

    api = {"get": Op("List audit entries, newest first: enqueues, kills, user and schedule changes, failed "
                     "logins...", PAGE_PARAMS + CURSOR_PARAMS + (
                         Param("user", "string", "only entries of this actor (exact)", schema=_NAME),
                         Param("action", "string", "only this action (exact, e.g. job.kill), or a prefix ending "
                               "in '.*' or '.' (job.*: every job. action)", schema=_NAME),
                         Param("target", "string", "only entries about this target (exact: a job id, a user "
                               "name...)", schema=_NAME),
                         Param("since", "string", "at or after this time: " + _TIME),
                         Param("until", "string", "before this time: " + _TIME)),
                     reply="AuditEntry", paginated=True, errors=(400, 401, 403), tags=("audit",),
                     description="Admins only (403 for everyone else; a read-only token of an admin may read).")}

    async def get(self) -> None:
        page = await audit.listing(
            self.services.db, by=self.current_user, user=self.arg("user", str, None),
            action=self.arg("action", str, None), target=self.arg("target", str, None),
            since=self.arg("since", str, None), until=self.arg("until", str, None),
            page=self.arg("page", int, 0), per_page=self.arg("per_page", int, 10),
            # An empty value (a null next/prev pasted as text) is no cursor.
            after=self.arg("after", default=None) or None, before=self.arg("before", default=None) or None)
        self.reply(page.items, **page.envelope_fields())
