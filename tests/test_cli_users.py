"""``jobdeck user ...`` driven in-process through click's CliRunner against the test database.

These are plain sync tests: the command line runs ``asyncio.run`` itself.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable, TypeVar

import pytest
from click.testing import CliRunner, Result

import jobdeck.service  # noqa: F401  (registers the commands)
import jobdeck.users  # noqa: F401  (registers the commands)
from core import audit, users
from core.config import Config
from core.db import Database
from jobdeck.cli import cli
from tests.conftest import in_database

T = TypeVar("T")
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


pytestmark = pytest.mark.usefixtures("cli_isolated")


def verifies(config: Config, name: str, password: str) -> bool:
    async def check(db: Database) -> bool:
        return await users.verify_password(db, await users.get(db, name), password)
    return in_database(config, check)


@pytest.fixture
def run(cli_env: dict[str, str]) -> Callable[..., Result]:
    """``run("user", "list", input=...)``: invoke the real command group against this test's database."""
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None, env: dict[str, str] | None = None) -> Result:
        return runner.invoke(cli, list(args), env=cli_env if env is None else env, input=input,
                             prog_name="jobdeck")
    return invoke


def ok(result: Result) -> str:
    assert result.exit_code == 0, f"exit {result.exit_code}: {result.output}\n{result.exception!r}"
    return result.output


def fails(result: Result, *fragments: str) -> str:
    """Assert a clean non-zero exit (no traceback) whose output contains every fragment."""
    assert result.exit_code != 0, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    for fragment in fragments:
        assert fragment in result.output, f"{fragment!r} not in {result.output!r}"
    return result.output


def listed(run: Callable[..., Result]) -> list[dict[str, Any]]:
    return json.loads(ok(run("user", "list", "--json")))


def by_name(run: Callable[..., Result]) -> dict[str, dict[str, Any]]:
    return {user["name"]: user for user in listed(run)}


# --- add and list -------------------------------------------------------------------------

def test_user_add_with_password_and_perms_shows_the_new_user(run: Callable[..., Result],
                                                            config: Config) -> None:
    output = ok(run("user", "add", "alice", "--password", "s3cret",
                    "--perm", "job:jobs.example.*:x", "--perm", "job:jobs.reports.*:r"))
    assert "alice" in output and "job:jobs.example.*:x" in output
    assert "s3cret" not in output
    assert verifies(config, "alice", "s3cret")


def test_user_list_prints_a_table_with_one_row_per_user(run: Callable[..., Result]) -> None:
    ok(run("user", "add", "alice", "--password", "pw", "--perm", "job:jobs.example.*:x"))
    ok(run("user", "add", "bob", "--password", "pw", "--admin"))

    lines = ok(run("user", "list")).splitlines()
    assert lines[0].split() == ["NAME", "ROLES", "PERMS", "ACTIVE", "CREATED"]
    assert len(lines) == 3
    assert lines[1].split()[:4] == ["alice", "-", "job:jobs.example.*:x", "yes"]
    assert lines[2].split()[:4] == ["bob", "admin", "-", "yes"]


def test_user_list_json_is_a_list_without_passwords_and_with_iso_utc_times(
        run: Callable[..., Result]) -> None:
    ok(run("user", "add", "bob", "--password", "pw", "--admin"))
    ok(run("user", "add", "alice", "--password", "pw", "--perm", "job:jobs.example.*:r"))

    found = listed(run)
    assert isinstance(found, list)
    assert [user["name"] for user in found] == ["alice", "bob"]
    for user in found:
        assert "password" not in user
        assert "_id" not in user
        assert ISO_UTC.match(user["created"]), user["created"]
        assert ISO_UTC.match(user["updated"]), user["updated"]
        assert user["active"] is True
    assert found[0]["perms"] == ["job:jobs.example.*:r"] and found[0]["roles"] == []
    assert found[1]["roles"] == ["admin"] and found[1]["perms"] == []


def test_user_list_of_empty_database_prints_only_the_header(run: Callable[..., Result]) -> None:
    assert ok(run("user", "list")).splitlines() == ["NAME  ROLES  PERMS  ACTIVE  CREATED"]
    assert listed(run) == []


def test_user_add_json_prints_the_new_user_as_json(run: Callable[..., Result]) -> None:
    created = json.loads(ok(run("user", "add", "alice", "--password", "pw", "--json")))
    assert created["name"] == "alice" and "password" not in created
    assert ISO_UTC.match(created["created"])


def test_user_add_prompts_for_the_password_twice(run: Callable[..., Result], config: Config) -> None:
    output = ok(run("user", "add", "alice", input="prompted-pw\nprompted-pw\n"))
    assert "Password" in output
    assert "prompted-pw" not in output  # the prompt hides the input
    assert verifies(config, "alice", "prompted-pw")


def test_user_add_prompt_asks_again_when_the_two_entries_differ(run: Callable[..., Result],
                                                               config: Config) -> None:
    output = ok(run("user", "add", "alice", input="one\ntwo\nthird-pw\nthird-pw\n"))
    assert "do not match" in output
    assert verifies(config, "alice", "third-pw")


def test_user_add_reads_the_password_from_stdin(run: Callable[..., Result], config: Config) -> None:
    ok(run("user", "add", "alice", "--password-stdin", input="from-stdin\nignored\n"))
    assert verifies(config, "alice", "from-stdin")
    assert not verifies(config, "alice", "ignored")


def test_user_add_records_the_operator_as_actor_in_the_audit_trail(run: Callable[..., Result],
                                                                   config: Config) -> None:
    ok(run("user", "add", "alice", "--password", "pw"))
    [entry] = in_database(config, lambda db: audit.recent(db, target="alice"))
    assert entry["action"] == "user.add"
    assert entry["actor"].startswith("cli")


# --- passwd -------------------------------------------------------------------------------

def test_user_passwd_from_stdin_replaces_the_password(run: Callable[..., Result], config: Config) -> None:
    ok(run("user", "add", "alice", "--password", "old-pw"))
    output = ok(run("user", "passwd", "alice", "--password-stdin", input="new-pw\n"))
    assert "alice" in output and "changed" in output
    assert verifies(config, "alice", "new-pw")
    assert not verifies(config, "alice", "old-pw")


def test_user_passwd_prompts_for_the_new_password(run: Callable[..., Result], config: Config) -> None:
    ok(run("user", "add", "alice", "--password", "old-pw"))
    ok(run("user", "passwd", "alice", input="prompted\nprompted\n"))
    assert verifies(config, "alice", "prompted")


# --- perm ---------------------------------------------------------------------------------

def test_user_perm_grants_and_revokes_permissions(run: Callable[..., Result]) -> None:
    ok(run("user", "add", "alice", "--password", "pw", "--perm", "job:a.*:r", "--perm", "job:b.*:r"))
    output = ok(run("user", "perm", "alice", "--grant", "job:c.*:x", "--revoke", "job:a.*:r"))
    assert "job:b.*:r,job:c.*:x" in output
    assert by_name(run)["alice"]["perms"] == ["job:b.*:r", "job:c.*:x"]


def test_user_perm_admin_and_no_admin_give_and_take_the_admin_role(run: Callable[..., Result]) -> None:
    ok(run("user", "add", "root", "--password", "pw", "--admin"))
    ok(run("user", "add", "alice", "--password", "pw"))

    changed = json.loads(ok(run("user", "perm", "alice", "--admin", "--json")))
    assert changed["roles"] == ["admin"]
    assert by_name(run)["alice"]["roles"] == ["admin"]

    ok(run("user", "perm", "alice", "--no-admin"))
    assert by_name(run)["alice"]["roles"] == []


def test_user_perm_without_options_shows_the_user_and_changes_nothing(run: Callable[..., Result]) -> None:
    ok(run("user", "add", "alice", "--password", "pw", "--perm", "job:a.*:x"))
    before = by_name(run)["alice"]

    lines = ok(run("user", "perm", "alice")).splitlines()
    assert lines[0].split() == ["NAME", "ROLES", "PERMS", "ACTIVE"]
    assert lines[1].split() == ["alice", "-", "job:a.*:x", "yes"]

    shown = json.loads(ok(run("user", "perm", "alice", "--json")))
    assert shown == before
    assert by_name(run)["alice"] == before


# --- disable, enable ----------------------------------------------------------------------

def test_user_disable_and_enable_switch_the_active_flag(run: Callable[..., Result]) -> None:
    ok(run("user", "add", "alice", "--password", "pw"))

    assert "disabled" in ok(run("user", "disable", "alice"))
    assert by_name(run)["alice"]["active"] is False
    assert ok(run("user", "list")).splitlines()[1].split()[3] == "no"

    assert "enabled" in ok(run("user", "enable", "alice"))
    assert by_name(run)["alice"]["active"] is True


# --- remove -------------------------------------------------------------------------------

def test_user_remove_with_yes_deletes_the_user(run: Callable[..., Result]) -> None:
    ok(run("user", "add", "alice", "--password", "pw"))
    ok(run("user", "add", "bob", "--password", "pw"))
    assert "removed" in ok(run("user", "remove", "alice", "--yes"))
    assert list(by_name(run)) == ["bob"]


def test_user_remove_confirmed_with_y_deletes_the_user(run: Callable[..., Result]) -> None:
    ok(run("user", "add", "alice", "--password", "pw"))
    output = ok(run("user", "remove", "alice", input="y\n"))
    assert "Remove user 'alice'?" in output
    assert listed(run) == []


def test_user_remove_answered_no_aborts_and_keeps_the_user(run: Callable[..., Result]) -> None:
    ok(run("user", "add", "alice", "--password", "pw"))
    result = run("user", "remove", "alice", input="n\n")
    fails(result, "Remove user 'alice'?", "Aborted")
    assert list(by_name(run)) == ["alice"]


# --- bad input ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["bad name", "a:b", "x" * 65, "_starts_with_underscore"])
def test_user_add_with_bad_name_fails_with_a_message(run: Callable[..., Result], name: str) -> None:
    fails(run("user", "add", name, "--password", "pw"), "bad user name")
    assert listed(run) == []


def test_user_add_with_bad_name_fails_before_asking_for_a_password(run: Callable[..., Result]) -> None:
    output = fails(run("user", "add", "bad name", input="pw\npw\n"), "bad user name")
    assert "Password" not in output


@pytest.mark.parametrize("perm", ["job:*", "job:a:w", "foo:a:r", "job::r"])
def test_user_add_with_bad_permission_fails_with_a_message(run: Callable[..., Result], perm: str) -> None:
    fails(run("user", "add", "alice", "--password", "pw", "--perm", perm), "bad permission", perm)
    assert listed(run) == []


def test_user_perm_with_bad_permission_fails_and_changes_nothing(run: Callable[..., Result]) -> None:
    ok(run("user", "add", "alice", "--password", "pw", "--perm", "job:a.*:r"))
    fails(run("user", "perm", "alice", "--grant", "job:a:w"), "bad permission")
    fails(run("user", "perm", "alice", "--revoke", "foo:a:r"), "bad permission")
    assert by_name(run)["alice"]["perms"] == ["job:a.*:r"]


def test_user_add_of_existing_name_fails_with_a_message(run: Callable[..., Result], config: Config) -> None:
    ok(run("user", "add", "alice", "--password", "first"))
    fails(run("user", "add", "alice", "--password", "second"), "alice", "exists already")
    assert verifies(config, "alice", "first")


def test_user_add_with_empty_password_from_stdin_fails(run: Callable[..., Result]) -> None:
    fails(run("user", "add", "alice", "--password-stdin", input="\n"), "must not be empty")
    assert listed(run) == []


@pytest.mark.parametrize("args", [
    ("passwd", "ghost", "--password", "pw"),
    ("passwd", "ghost", "--password-stdin"),
    ("perm", "ghost"),
    ("perm", "ghost", "--grant", "job:a:r"),
    ("perm", "ghost", "--no-admin"),
    ("disable", "ghost"),
    ("enable", "ghost"),
    ("remove", "ghost", "--yes"),
], ids=lambda args: " ".join(args[:2]) + (" " + args[2] if len(args) > 2 else ""))
def test_commands_on_unknown_user_fail_with_a_message(run: Callable[..., Result],
                                                      args: tuple[str, ...]) -> None:
    ok(run("user", "add", "root", "--password", "pw", "--admin"))
    fails(run("user", *args, input="pw\n"), "no user 'ghost'")


def test_user_passwd_of_unknown_user_fails_before_asking_for_a_password(run: Callable[..., Result]) -> None:
    output = fails(run("user", "passwd", "ghost", input="pw\npw\n"), "no user 'ghost'")
    assert "Password" not in output


def test_removing_the_last_admin_fails_with_a_message(run: Callable[..., Result]) -> None:
    ok(run("user", "add", "root", "--password", "pw", "--admin"))
    fails(run("user", "remove", "root", "--yes"), "last active admin")
    fails(run("user", "disable", "root"), "last active admin")
    fails(run("user", "perm", "root", "--no-admin"), "last active admin")
    assert by_name(run)["root"]["roles"] == ["admin"]
    assert by_name(run)["root"]["active"] is True


@pytest.mark.parametrize("command", ["add", "passwd"])
def test_giving_both_password_and_password_stdin_fails(run: Callable[..., Result], config: Config,
                                                       command: str) -> None:
    if command == "passwd":
        ok(run("user", "add", "alice", "--password", "old"))
    fails(run("user", command, "alice", "--password", "x", "--password-stdin", input="y\n"),
          "--password", "--password-stdin", "not both")
    if command == "passwd":
        assert verifies(config, "alice", "old")
    else:
        assert listed(run) == []


# --- configuration ------------------------------------------------------------------------

def test_bad_configuration_fails_with_a_message_naming_the_setting(run: Callable[..., Result],
                                                                   cli_env: dict[str, str]) -> None:
    output = fails(run("user", "list", env={**cli_env, "JOBDECK_PORT": "abc"}), "JOBDECK_PORT")
    assert "abc" in output
    assert "Traceback" not in output


def test_unknown_environment_setting_fails_with_a_message(run: Callable[..., Result],
                                                          cli_env: dict[str, str]) -> None:
    fails(run("user", "list", env={**cli_env, "JOBDECK_PROT": "1"}), "JOBDECK_PROT", "JOBDECK_PORT")


@pytest.fixture
def config_file(tmp_path: Path, config: Config) -> Path:
    path = tmp_path / "jobdeck-test.toml"
    path.write_text(f'mongo_url = "{config.mongo_url}"\ndatabase = "{config.database}"\n',
                    encoding="utf-8")
    return path


@pytest.mark.parametrize("where", ["before the subcommands", "between group and command",
                                   "after the command"])
def test_config_option_is_accepted_anywhere_on_the_command_line(
        run: Callable[..., Result], config_file: Path, where: str) -> None:
    ok(run("user", "add", "alice", "--password", "pw"))  # through cli_env
    args = {
        "before the subcommands": ["--config", str(config_file), "user", "list", "--json"],
        "between group and command": ["user", "--config", str(config_file), "list", "--json"],
        "after the command": ["user", "list", "--json", "--config", str(config_file)],
    }[where]
    found = json.loads(ok(run(*args, env={})))
    assert [user["name"] for user in found] == ["alice"]


def test_config_file_changes_go_to_the_configured_database(run: Callable[..., Result],
                                                            config_file: Path, config: Config) -> None:
    ok(run("--config", str(config_file), "user", "add", "alice", "--password", "pw", env={}))
    assert verifies(config, "alice", "pw")


def test_missing_config_file_fails_with_a_message(run: Callable[..., Result], tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    fails(run("--config", str(missing), "user", "list", env={}), str(missing), "does not exist")


# --- help ---------------------------------------------------------------------------------

def test_user_help_lists_all_seven_subcommands(run: Callable[..., Result]) -> None:
    output = ok(run("user", "--help"))
    commands = output.split("Commands:", 1)[1]
    listed_names = {line.split()[0] for line in commands.splitlines() if line.strip()}
    assert listed_names == {"add", "passwd", "perm", "disable", "enable", "list", "remove"}


def test_top_level_help_lists_the_user_group(run: Callable[..., Result]) -> None:
    output = ok(run("--help"))
    assert re.search(r"^\s+user\s", output, re.MULTILINE)
