"""``jobdeck audit``: read the audit trail, on the database directly, as ``GET /audit`` does over HTTP."""
from __future__ import annotations

import re
from typing import Any

import click

from core import audit
from core.encoding import dumps
from jobdeck.command import cli, config_option, load_config, run_with_database
from jobdeck.jobs import _print_footer, _print_page_json
from jobdeck.output import print_table

__all__ = ["audit_", "compact"]

_PLAIN = re.compile(r"[^\s=\"']+")


def compact(detail: dict[str, Any] | None) -> str:
    """An entry's ``detail`` on one line: ``key=value ...``, values that are not plain words as JSON."""
    if not detail:
        return "-"
    return " ".join(f"{key}={value if isinstance(value, str) and _PLAIN.fullmatch(value) else dumps(value)}"
                    for key, value in detail.items())


@cli.command("audit")
@click.option("--user", help="Only entries of this actor (exact): a user, or cli:<login> for the command line.")
@click.option("--action", help="Only this action (e.g. job.kill), or a prefix ending in '.*' (job.*).")
@click.option("--target", help="Only entries about this target (exact): a job id, a user name...")
@click.option("--since", metavar="TIME", help="At or after: ISO 8601 (without a zone: UTC) or an age such as 2h, 3d.")
@click.option("--until", metavar="TIME", help="Before: ISO 8601 (without a zone: UTC) or an age such as 1w.")
@click.option("--page", type=int, default=0, show_default=True, help="0-based; -1 is the last page.")
@click.option("--per-page", type=int, default=50, show_default=True)
@click.option("--after", metavar="CURSOR", callback=lambda _ctx, _param, value: value or None,
              help="The page after this cursor (the 'next' a page printed, on stderr or in --json).")
@click.option("--before", metavar="CURSOR", callback=lambda _ctx, _param, value: value or None,
              help="The page before this cursor (the 'prev' a page printed).")
@click.option("--json", "as_json", is_flag=True, help="Print the page as JSON.")
@config_option
def audit_(user: str | None, action: str | None, target: str | None, since: str | None, until: str | None,
           page: int, per_page: int, after: str | None, before: str | None, as_json: bool) -> None:
    """List audit entries, newest first: who enqueued, killed, changed users or schedules, failed to log in.

    \b
    Examples:
      jobdeck audit --since 1d
      jobdeck audit --action 'job.*' --user alice
      jobdeck audit --target 6b050af56703ae08047f182e --json
    """
    found = run_with_database(load_config(), lambda db: audit.listing(
        db, by=None, user=user, action=action, target=target, since=since, until=until, page=page,
        per_page=per_page, after=after, before=before))
    if as_json:
        _print_page_json(found)
        return
    print_table([{"time": entry["at"], "actor": entry["actor"], "action": entry["action"],
                  "target": entry.get("target"), "detail": compact(entry.get("detail"))} for entry in found.items],
                ["time", "actor", "action", "target", "detail"])
    _print_footer(found, "entries")
