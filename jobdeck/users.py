"""``jobdeck user ...``: manage users and their permissions."""
from __future__ import annotations

import sys
from typing import Any

import click

from core import users
from core.blocking import run_blocking
from core.db import Database
from core.errors import BadArgument
from jobdeck.command import actor, cli, config_option, load_config, run_with_database
from jobdeck.output import print_json, print_table

__all__ = ["user"]


def _password(password: str | None, from_stdin: bool) -> str:
    """The password from the option, the first line of stdin, or a hidden prompt."""
    if password is not None and from_stdin:
        raise BadArgument("give either --password or --password-stdin, not both")
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if password is not None:
        return password
    return click.prompt("Password", hide_input=True, confirmation_prompt=True)


_password_options = [
    click.option("--password", help="The password (visible to other local users in the "
                                    "process list; prefer the prompt or --password-stdin)."),
    click.option("--password-stdin", is_flag=True, help="Read the password from the first line of stdin."),
]


def _with_password_options(command: Any) -> Any:
    for option in reversed(_password_options):
        command = option(command)
    return command


def _show(user: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(user)
    else:
        print_table([user], ["name", "roles", "perms", "active"])


@cli.group()
@config_option
def user() -> None:
    """Manage users: add, passwd, perm, disable, enable, list, remove.

    \b
    Permissions:
      admin role          everything, users included
      job:<glob>:r        see and follow jobs whose qual_name matches <glob>
      job:<glob>:x        also enqueue, kill, restart and remove them
    """


@user.command("add")
@click.argument("name")
@_with_password_options
@click.option("--admin", is_flag=True, help="Give the admin role.")
@click.option("--perm", "perms", multiple=True, metavar="PERM",
              help="Grant a permission, e.g. 'job:jobs.example.*:x' (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the new user as JSON.")
@config_option
def add(name: str, password: str | None, password_stdin: bool, admin: bool,
        perms: tuple[str, ...], as_json: bool) -> None:
    """Add user NAME (prompts for the password unless given)."""
    users.check_name(name)
    secret = _password(password, password_stdin)
    config = load_config()
    created = run_with_database(config, lambda db: users.add(
        db, name, secret, roles=["admin"] if admin else [], perms=perms, actor=actor()))
    _show(created, as_json)


@user.command("passwd")
@click.argument("name")
@_with_password_options
@config_option
def passwd(name: str, password: str | None, password_stdin: bool) -> None:
    """Set a new password for user NAME; its login tokens stop working."""
    async def work(db: Database) -> None:
        await users.get(db, name)  # an unknown name fails before the prompt
        secret = await run_blocking(_password, password, password_stdin)
        await users.set_password(db, name, secret, actor=actor())

    run_with_database(load_config(), work)
    click.echo(f"password of {name!r} changed")


@user.command("perm")
@click.argument("name")
@click.option("--grant", multiple=True, metavar="PERM", help="Grant a permission (repeatable).")
@click.option("--revoke", multiple=True, metavar="PERM", help="Revoke a permission (repeatable).")
@click.option("--admin/--no-admin", default=None, help="Give or take the admin role.")
@click.option("--json", "as_json", is_flag=True, help="Print the user as JSON.")
@config_option
def perm(name: str, grant: tuple[str, ...], revoke: tuple[str, ...], admin: bool | None,
         as_json: bool) -> None:
    """Show, grant or revoke the permissions and roles of user NAME."""
    config = load_config()

    async def work(db: Database) -> dict[str, Any]:
        if not (grant or revoke or admin is not None):
            return users.public(await users.get(db, name))
        return await users.change_access(
            db, name, grant=grant, revoke=revoke,
            add_roles=["admin"] if admin else [], drop_roles=["admin"] if admin is False else [],
            actor=actor())

    _show(run_with_database(config, work), as_json)


@user.command("disable")
@click.argument("name")
@config_option
def disable(name: str) -> None:
    """Disable user NAME: it can no longer log in or use its tokens."""
    run_with_database(load_config(), lambda db: users.set_active(db, name, False, actor=actor()))
    click.echo(f"user {name!r} disabled")


@user.command("enable")
@click.argument("name")
@config_option
def enable(name: str) -> None:
    """Enable user NAME again."""
    run_with_database(load_config(), lambda db: users.set_active(db, name, True, actor=actor()))
    click.echo(f"user {name!r} enabled")


@user.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@config_option
def list_(as_json: bool) -> None:
    """List all users."""
    found = run_with_database(load_config(), users.list_users)
    if as_json:
        print_json(found)
    else:
        print_table(found, ["name", "roles", "perms", "active", "created"])


@user.command("remove")
@click.argument("name")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@config_option
def remove(name: str, yes: bool) -> None:
    """Remove user NAME for good."""
    if not yes:
        click.confirm(f"Remove user {name!r}?", abort=True)
    run_with_database(load_config(), lambda db: users.remove(db, name, actor=actor()))
    click.echo(f"user {name!r} removed")
