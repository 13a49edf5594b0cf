"""``jobdeck token ...``: API tokens for scripts, made, listed and revoked by an operator."""
from __future__ import annotations

from typing import Any

import click

from core import tokens, users
from jobdeck.command import actor, cli, config_option, load_config, run_with_database
from jobdeck.output import print_json, print_table

__all__ = ["token"]

_COLUMNS = ["_id", "user", "name", "read_only", "created", "last_used", "expires"]


@cli.group()
@config_option
def token() -> None:
    """API tokens: create, list, revoke.

    \b
    A script sends its token as 'Authorization: Bearer <token>'. It acts as
    its user, or with --read-only as its user without any x permission.
    """


@token.command("create")
@click.argument("name")
@click.option("--user", "owner", required=True, help="Whose token it is (it acts with that user's rights).")
@click.option("--read-only", is_flag=True, help="The token may read what its user may, and change nothing.")
@click.option("--expires-in-days", type=click.IntRange(1, tokens.MAX_DAYS), metavar="DAYS",
              help="Days it is valid [default: until revoked].")
@click.option("--json", "as_json", is_flag=True, help="Print the token and its record as JSON.")
@config_option
def create(name: str, owner: str, read_only: bool, expires_in_days: int | None, as_json: bool) -> None:
    """Make API token NAME for a user; print its secret (shown only now)."""
    users.check_name(owner)
    secret, doc = run_with_database(load_config(), lambda db: tokens.create(
        db, name=name, read_only=read_only, expires_in_days=expires_in_days, user=owner, actor=actor()))
    if as_json:
        print_json({**tokens.public(doc), "token": secret})
        return
    click.echo(secret)
    click.echo(f"token {doc['_id']} {name!r} of {owner}" + (" (read-only)" if read_only else "") +
               f", expires {doc['expires'].isoformat(timespec='seconds') if doc['expires'] else 'never'}; "
               "its secret is shown only now", err=True)


@token.command("list")
@click.option("--user", "owner", help="Only this user's [default: everyone's].")
@click.option("--sessions", is_flag=True, help="List login sessions instead of API tokens.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@config_option
def list_(owner: str | None, sessions: bool, as_json: bool) -> None:
    """List API tokens (never their secrets), or login sessions."""
    if owner is not None:
        users.check_name(owner)
    kind = tokens.SESSION if sessions else tokens.API
    found = run_with_database(load_config(), lambda db: tokens.list_tokens(db, kind=kind, user=owner))
    if as_json:
        print_json(found)
    else:
        columns = ["_id", "user", "created", "last_used", "expires", "address"] if sessions else _COLUMNS
        print_table(found, columns)


@token.command("revoke")
@click.argument("token_id", metavar="ID")
@click.option("--session", is_flag=True, help="ID is a login session's: end it.")
@config_option
def revoke(token_id: str, session: bool) -> None:
    """Revoke the API token ID (or end the login session ID): refused at once by every server."""
    kind = tokens.SESSION if session else tokens.API
    ended: dict[str, Any] = run_with_database(load_config(), lambda db: tokens.revoke(
        db, token_id, kind=kind, actor=actor()))
    what = "session" if session else f"token {ended.get('name')!r}"
    click.echo(f"revoked {what} {ended['_id']} of {ended['user']}")
