"""``audit_retention_days``: a TTL index on the audit entries' ``at``, changed with the setting, none for 0."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

import jobdeck.audit  # noqa: F401  (registers the command)
from core import config as configuration
from core.config import Config
from core.db import AUDIT_TTL_INDEX, Database
from core.errors import ConfigError
from jobdeck.cli import cli
from tests.conftest import in_database

DAY = 86400


async def ttl(db: Database) -> int | None:
    """The audit TTL index's seconds (None: there is none); the failed logins' index stays either way."""
    indexes = await db.audit.index_information()
    assert indexes["expires"]["expireAfterSeconds"] == 0
    index = indexes.get(AUDIT_TTL_INDEX)
    if index is None:
        return None
    assert index["key"] == [("at", 1)]
    return index["expireAfterSeconds"]


async def test_the_ttl_index_follows_the_setting_and_zero_removes_it(db):
    assert await ttl(db) is None  # setup without the setting leaves the index as it is
    await db.setup(log_retention_days=30, audit_retention_days=365)
    assert await ttl(db) == 365 * DAY
    await db.setup(log_retention_days=30, audit_retention_days=7.5)
    assert await ttl(db) == 7.5 * DAY
    await db.setup(log_retention_days=30)
    assert await ttl(db) == 7.5 * DAY
    await db.setup(log_retention_days=30, audit_retention_days=0)
    assert await ttl(db) is None
    await db.setup(log_retention_days=30, audit_retention_days=0)
    assert await ttl(db) is None
    await db.setup(log_retention_days=30, audit_retention_days=1e-9)  # never 0 seconds: that would delete at once
    assert await ttl(db) == 1


def test_a_command_sets_it_from_the_configuration(config: Config, cli_env: dict[str, str], monkeypatch, tmp_path):
    for name in list(os.environ):
        if name.startswith("JOBDECK_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()

    def audit_with(**env: str) -> int | None:
        result = runner.invoke(cli, ["audit"], env={**cli_env, **env}, prog_name="jobdeck")
        assert result.exit_code == 0, result.output
        return in_database(config, ttl)

    try:
        assert audit_with() == 365 * DAY  # the default
        assert audit_with(JOBDECK_AUDIT_RETENTION_DAYS="90") == 90 * DAY
        assert audit_with(JOBDECK_AUDIT_RETENTION_DAYS="0") is None
        (tmp_path / "jobdeck.toml").write_text("audit_retention_days = 2\n")
        assert audit_with() == 2 * DAY
    finally:
        in_database(config, lambda db: db.client.drop_database(config.database))


@pytest.mark.parametrize("value", ["-1", "24856", "forever"])
def test_a_bad_value_names_the_setting(value: str):
    with pytest.raises(ConfigError, match="JOBDECK_AUDIT_RETENTION_DAYS"):
        configuration.load(env={"JOBDECK_AUDIT_RETENTION_DAYS": value})


def test_the_example_configuration_documents_it():
    example = Path(__file__).parent.parent / "etc/jobdeck.toml"
    assert configuration.load(example, env={}).audit_retention_days == 365
    assert "JOBDECK_AUDIT_RETENTION_DAYS" in example.read_text()
