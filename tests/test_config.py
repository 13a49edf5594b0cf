"""Tests for core.config: the TOML file, environment overrides and validation."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from core.config import Config, load
from core.errors import ConfigError

EXAMPLE = Path(__file__).parent.parent / "etc/jobdeck.toml"
KEYS = [f.name for f in dataclasses.fields(Config) if f.name != "source"]


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run in an empty directory so no stray ./jobdeck.toml is picked up."""
    monkeypatch.chdir(tmp_path)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# --- Where values come from -------------------------------------------------


def test_without_file_or_environment_every_key_has_its_default(tmp_path: Path) -> None:
    config = load(env={})
    assert config == Config(data_dir=config.data_dir)
    assert config.source is None
    assert Path(config.data_dir).is_absolute()
    assert Path(config.data_dir) == (tmp_path / "var").resolve()
    assert config.mongo_url is None
    assert config.port == 5001 and config.host == "127.0.0.1"
    assert config.tls is False


def test_values_in_the_file_are_read(tmp_path: Path) -> None:
    path = write(tmp_path / "conf/jobdeck.toml", """
        database = "deck"
        host = "0.0.0.0"
        port = 8080
        lease_seconds = 60
        heartbeat_seconds = 10.5
        job_packages = ["acme_jobs"]
        cors_origins = ["https://a.example"]
        mongo_url = "mongodb://db1,db2/?replicaSet=rs0"
        max_body_size = 2048
        token_hours = 1
    """)
    config = load(path, env={})
    assert config.source == str(path.resolve())
    assert config.database == "deck"
    assert config.host == "0.0.0.0"
    assert config.port == 8080
    assert config.lease_seconds == 60.0 and isinstance(config.lease_seconds, float)
    assert config.heartbeat_seconds == 10.5
    assert config.job_packages == ["acme_jobs"]
    assert config.cors_origins == ["https://a.example"]
    assert config.mongo_url == "mongodb://db1,db2/?replicaSet=rs0"
    assert config.max_body_size == 2048
    assert config.token_hours == 1.0


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "jobdeck.toml", 'port = 8080\ndatabase = "fromfile"\n')
    config = load(path, env={"JOBDECK_PORT": "9090", "JOBDECK_LEASE_SECONDS": "45"})
    assert config.port == 9090
    assert config.lease_seconds == 45.0
    assert config.database == "fromfile"


def test_environment_variables_without_the_prefix_are_ignored() -> None:
    config = load(env={"PORT": "1", "HOME": "/root", "JOBDECKPORT": "2"})
    assert config.port == 5001


def test_jobdeck_config_variable_selects_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "elsewhere/settings.toml", "port = 7000\n")
    config = load(env={"JOBDECK_CONFIG": str(path)})
    assert config.port == 7000
    assert config.source == str(path.resolve())


def test_explicit_path_wins_over_jobdeck_config(tmp_path: Path) -> None:
    explicit = write(tmp_path / "a.toml", "port = 7001\n")
    other = write(tmp_path / "b.toml", "port = 7002\n")
    assert load(explicit, env={"JOBDECK_CONFIG": str(other)}).port == 7001


def test_jobdeck_toml_in_the_current_directory_is_found(tmp_path: Path) -> None:
    write(tmp_path / "jobdeck.toml", "port = 7003\n")
    config = load(env={})
    assert config.port == 7003
    assert config.source == str((tmp_path / "jobdeck.toml").resolve())


# --- Errors naming what is wrong --------------------------------------------


def test_explicit_missing_file_is_an_error_naming_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=re.escape(str(missing))) as info:
        load(missing, env={})
    assert "does not exist" in str(info.value)


def test_missing_file_named_by_jobdeck_config_is_an_error_naming_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "gone.toml"
    with pytest.raises(ConfigError, match=re.escape(str(missing))):
        load(env={"JOBDECK_CONFIG": str(missing)})


def test_invalid_toml_is_an_error_naming_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.toml", "port = \n")
    with pytest.raises(ConfigError, match="not valid TOML") as info:
        load(path, env={})
    assert str(path.resolve()) in str(info.value)


def test_unknown_key_in_file_names_it_and_suggests_the_close_one(tmp_path: Path) -> None:
    path = write(tmp_path / "jobdeck.toml", "prot = 5002\n")
    with pytest.raises(ConfigError) as info:
        load(path, env={})
    message = str(info.value)
    assert "'prot'" in message
    assert "unknown setting" in message
    assert "did you mean port?" in message
    assert str(path.resolve()) in message


def test_unknown_key_without_close_match_suggests_nothing(tmp_path: Path) -> None:
    path = write(tmp_path / "jobdeck.toml", "zzzzzz = 1\n")
    with pytest.raises(ConfigError, match="'zzzzzz'") as info:
        load(path, env={})
    assert "did you mean" not in str(info.value)


def test_table_in_file_is_an_unknown_key(tmp_path: Path) -> None:
    path = write(tmp_path / "jobdeck.toml", "[server]\nport = 5002\n")
    with pytest.raises(ConfigError, match="'server'.*unknown setting"):
        load(path, env={})


def test_unknown_environment_variable_names_it_and_suggests_the_close_one() -> None:
    with pytest.raises(ConfigError) as info:
        load(env={"JOBDECK_PROT": "5002"})
    message = str(info.value)
    assert "JOBDECK_PROT" in message
    assert "did you mean JOBDECK_PORT?" in message


def test_jobdeck_source_cannot_be_set_from_the_environment() -> None:
    with pytest.raises(ConfigError, match="JOBDECK_SOURCE.*unknown setting"):
        load(env={"JOBDECK_SOURCE": "/x"})


@pytest.mark.parametrize(("line", "key", "expected"), [
    ('port = "abc"', "port", "expected an integer"),
    ("port = 5001.0", "port", "expected an integer"),
    ("lease_seconds = true", "lease_seconds", "expected a number"),
    ('database = 5', "database", "expected a string"),
    ('job_packages = "acme"', "job_packages", "expected a list of strings"),
    ("cors_origins = [1, 2]", "cors_origins", "expected a list of strings"),
])
def test_wrong_type_in_file_names_the_key_and_the_file(tmp_path: Path, line: str, key: str,
                                                        expected: str) -> None:
    path = write(tmp_path / "jobdeck.toml", line + "\n")
    with pytest.raises(ConfigError) as info:
        load(path, env={})
    message = str(info.value)
    assert f"'{key}'" in message
    assert str(path.resolve()) in message
    assert expected in message


def test_bad_integer_in_environment_names_the_variable() -> None:
    with pytest.raises(ConfigError) as info:
        load(env={"JOBDECK_PORT": "abc"})
    message = str(info.value)
    assert "JOBDECK_PORT" in message
    assert "expected an integer" in message and "'abc'" in message


def test_bad_number_in_environment_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="JOBDECK_LEASE_SECONDS.*expected a number"):
        load(env={"JOBDECK_LEASE_SECONDS": "soon"})


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_non_finite_number_is_rejected(value: str) -> None:
    with pytest.raises(ConfigError, match="JOBDECK_LEASE_SECONDS.*finite"):
        load(env={"JOBDECK_LEASE_SECONDS": value})


@pytest.mark.parametrize("port", ["-1", "65536", "100000"])
def test_port_out_of_range_is_rejected(port: str) -> None:
    with pytest.raises(ConfigError, match="JOBDECK_PORT.*between 0 and 65535"):
        load(env={"JOBDECK_PORT": port})


def test_port_out_of_range_in_file_names_the_key(tmp_path: Path) -> None:
    path = write(tmp_path / "jobdeck.toml", "port = 70000\n")
    with pytest.raises(ConfigError, match="'port'.*between 0 and 65535"):
        load(path, env={})


@pytest.mark.parametrize("key", ["lease_seconds", "heartbeat_seconds", "log_retention_days",
                                 "journal_retention_days", "token_hours", "max_body_size"])
def test_durations_and_sizes_must_be_positive(key: str) -> None:
    variable = "JOBDECK_" + key.upper()
    with pytest.raises(ConfigError, match=f"{variable}.*greater than 0"):
        load(env={variable: "0"})


@pytest.mark.parametrize("name", ["my.db", "a/b", "with space", "$x"])
def test_database_name_with_forbidden_characters_is_rejected(name: str) -> None:
    with pytest.raises(ConfigError, match="JOBDECK_DATABASE.*cannot contain"):
        load(env={"JOBDECK_DATABASE": name})


def test_empty_host_is_rejected() -> None:
    with pytest.raises(ConfigError, match="JOBDECK_HOST.*must not be empty"):
        load(env={"JOBDECK_HOST": " "})


# --- Lists, optional values, paths and combinations -------------------------


def test_list_setting_from_environment_is_comma_separated() -> None:
    config = load(env={"JOBDECK_JOB_PACKAGES": " acme_jobs, reports ,,",
                       "JOBDECK_CORS_ORIGINS": "https://a.example,https://b.example"})
    assert config.job_packages == ["acme_jobs", "reports"]
    assert config.cors_origins == ["https://a.example", "https://b.example"]


def test_list_setting_from_environment_may_be_json() -> None:
    config = load(env={"JOBDECK_CORS_ORIGINS": '["https://a.example", "https://b.example"]'})
    assert config.cors_origins == ["https://a.example", "https://b.example"]


def test_empty_list_setting_from_environment_is_an_empty_list(tmp_path: Path) -> None:
    path = write(tmp_path / "jobdeck.toml", 'job_packages = ["acme"]\n')
    assert load(path, env={"JOBDECK_JOB_PACKAGES": ""}).job_packages == []


def test_broken_json_list_in_environment_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="JOBDECK_CORS_ORIGINS.*JSON list"):
        load(env={"JOBDECK_CORS_ORIGINS": '["https://a.example"'})


def test_json_list_of_non_strings_in_environment_is_rejected() -> None:
    with pytest.raises(ConfigError, match="JOBDECK_JOB_PACKAGES.*list of strings"):
        load(env={"JOBDECK_JOB_PACKAGES": "[1, 2]"})


def test_empty_mongo_url_in_environment_means_unset(tmp_path: Path) -> None:
    path = write(tmp_path / "jobdeck.toml", 'mongo_url = "mongodb://db1/?replicaSet=rs0"\n')
    assert load(path, env={"JOBDECK_MONGO_URL": ""}).mongo_url is None


def test_empty_optional_values_in_file_mean_unset(tmp_path: Path) -> None:
    path = write(tmp_path / "jobdeck.toml",
                 'mongo_url = ""\ntls_cert = ""\ntls_key = ""\nadmin_password = ""\n')
    config = load(path, env={})
    assert config.mongo_url is None
    assert config.tls_cert is None and config.tls_key is None and config.tls is False
    assert config.admin_password is None


@pytest.mark.parametrize("url", ["mongodb://localhost:27017/?replicaSet=rs0",
                                 "mongodb+srv://cluster.example.com/"])
def test_mongodb_urls_are_accepted(url: str) -> None:
    assert load(env={"JOBDECK_MONGO_URL": url}).mongo_url == url


@pytest.mark.parametrize("url", ["localhost:27017", "http://db1/", "postgres://db"])
def test_mongo_url_not_starting_with_mongodb_scheme_is_rejected(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(env={"JOBDECK_MONGO_URL": url})
    message = str(info.value)
    assert "JOBDECK_MONGO_URL" in message
    assert "mongodb://" in message and repr(url) in message


def test_journal_retention_is_unset_by_default_and_read_from_the_file_or_the_environment(tmp_path: Path) -> None:
    assert load(env={}).journal_retention_days is None
    path = write(tmp_path / "jobdeck.toml", "journal_retention_days = 90\n")
    assert load(path, env={}).journal_retention_days == 90.0
    assert load(path, env={"JOBDECK_JOURNAL_RETENTION_DAYS": "0.5"}).journal_retention_days == 0.5
    assert load(path, env={"JOBDECK_JOURNAL_RETENTION_DAYS": ""}).journal_retention_days is None


def test_trusted_proxies_default_to_none() -> None:
    assert load(env={}).trusted_proxies == []


def test_trusted_proxies_are_addresses_and_networks_from_the_file_or_the_environment(tmp_path: Path) -> None:
    path = write(tmp_path / "jobdeck.toml", 'trusted_proxies = ["127.0.0.1", "::1", "10.0.0.0/8"]\n')
    assert load(path, env={}).trusted_proxies == ["127.0.0.1", "::1", "10.0.0.0/8"]
    config = load(path, env={"JOBDECK_TRUSTED_PROXIES": "192.168.1.10, fd00::/8"})
    assert config.trusted_proxies == ["192.168.1.10", "fd00::/8"]
    assert load(path, env={"JOBDECK_TRUSTED_PROXIES": ""}).trusted_proxies == []


@pytest.mark.parametrize(("entry", "expected"), [
    ("proxy.example", "is not an IP address or CIDR network"),
    ("1.2.3.4/33", "is not an IP address or CIDR network"),
    ("::1/129", "is not an IP address or CIDR network"),
    ("10.0.0.1/8", "has host bits set: write 10.0.0.0/8 for the network, or 10.0.0.1 for the one address"),
])
def test_a_bad_trusted_proxy_names_the_key_and_the_entry(tmp_path: Path, entry: str, expected: str) -> None:
    path = write(tmp_path / "jobdeck.toml", f'trusted_proxies = ["127.0.0.1", "{entry}"]\n')
    with pytest.raises(ConfigError) as info:
        load(path, env={})
    message = str(info.value)
    assert "'trusted_proxies'" in message and str(path.resolve()) in message
    assert repr(entry) in message and expected in message
    with pytest.raises(ConfigError) as info:
        load(env={"JOBDECK_TRUSTED_PROXIES": f"::1,{entry}"})
    message = str(info.value)
    assert "JOBDECK_TRUSTED_PROXIES" in message and repr(entry) in message and expected in message


def test_tls_cert_without_tls_key_is_rejected() -> None:
    with pytest.raises(ConfigError, match="tls_cert and tls_key must be set together"):
        load(env={"JOBDECK_TLS_CERT": "/etc/ssl/cert.pem"})


def test_tls_key_without_tls_cert_is_rejected() -> None:
    with pytest.raises(ConfigError, match="tls_cert and tls_key must be set together"):
        load(env={"JOBDECK_TLS_KEY": "/etc/ssl/key.pem"})


def test_tls_cert_and_key_together_turn_tls_on(tmp_path: Path) -> None:
    path = write(tmp_path / "etc/jobdeck.toml", 'tls_cert = "cert.pem"\ntls_key = "/abs/key.pem"\n')
    config = load(path, env={})
    assert config.tls is True
    assert config.tls_cert == str((tmp_path / "etc/cert.pem").resolve())
    assert config.tls_key == str(Path("/abs/key.pem").resolve())


@pytest.mark.parametrize(("heartbeat", "lease"), [("30", "30"), ("31", "30"), ("10", "5")])
def test_heartbeat_not_shorter_than_lease_is_rejected(heartbeat: str, lease: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(env={"JOBDECK_HEARTBEAT_SECONDS": heartbeat, "JOBDECK_LEASE_SECONDS": lease})
    message = str(info.value)
    assert "heartbeat_seconds" in message and "lease_seconds" in message
    assert "shorter" in message


def test_a_kill_grace_that_outlasts_the_lease_is_rejected() -> None:
    # Another worker could reap a job in the middle of its own kill.
    with pytest.raises(ConfigError, match=r"kill_grace_seconds \(10\) must be shorter than lease_seconds minus "
                                          r"heartbeat_seconds \(7\)"):
        load(env={"JOBDECK_LEASE_SECONDS": "12"})
    assert load(env={"JOBDECK_LEASE_SECONDS": "12", "JOBDECK_KILL_GRACE_SECONDS": "6"}).kill_grace_seconds == 6


def test_lowering_lease_below_default_heartbeat_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"heartbeat_seconds \(5\).*lease_seconds \(4\)"):
        load(env={"JOBDECK_LEASE_SECONDS": "4"})


def test_relative_data_dir_in_file_resolves_against_the_files_directory(tmp_path: Path) -> None:
    path = write(tmp_path / "conf/jobdeck.toml", 'data_dir = "state"\n')
    assert load(path, env={}).data_dir == str((tmp_path / "conf/state").resolve())


def test_relative_data_dir_in_environment_resolves_against_the_current_directory(
        tmp_path: Path) -> None:
    path = write(tmp_path / "conf/jobdeck.toml", 'data_dir = "state"\n')
    config = load(path, env={"JOBDECK_DATA_DIR": "here"})
    assert config.data_dir == str((tmp_path / "here").resolve())


def test_absolute_data_dir_is_kept(tmp_path: Path) -> None:
    target = tmp_path / "abs/var"
    assert load(env={"JOBDECK_DATA_DIR": str(target)}).data_dir == str(target.resolve())


def test_log_level_is_normalized_to_upper_case() -> None:
    assert load(env={"JOBDECK_LOG_LEVEL": "debug"}).log_level == "DEBUG"
    assert load(env={"JOBDECK_LOG_LEVEL": "Warning"}).log_level == "WARNING"


def test_invalid_log_level_is_rejected_listing_the_valid_ones() -> None:
    with pytest.raises(ConfigError) as info:
        load(env={"JOBDECK_LOG_LEVEL": "verbose"})
    message = str(info.value)
    assert "JOBDECK_LOG_LEVEL" in message and "'verbose'" in message
    assert "DEBUG, INFO, WARNING, ERROR" in message


# --- The example file ---------------------------------------------------------


def test_example_file_mentions_every_key() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    missing = [key for key in KEYS
               if not re.search(rf"^#?\s*{key}\s*=", text, flags=re.MULTILINE)]
    assert missing == []


def test_example_file_names_the_environment_variable_of_every_key() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    missing = [key for key in KEYS if f"JOBDECK_{key.upper()}" not in text]
    assert missing == []


def test_example_file_shows_optional_keys_and_data_dir_commented_out() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    for key in ("mongo_url", "tls_cert", "tls_key", "admin_password", "data_dir"):
        assert re.search(rf"^# {key} = ", text, flags=re.MULTILINE), key
        assert not re.search(rf"^{key}\s*=", text, flags=re.MULTILINE), key


def test_loading_the_example_file_gives_the_defaults() -> None:
    config = load(EXAMPLE, env={})
    defaults = Config()
    different = {key: (getattr(config, key), getattr(defaults, key))
                 for key in KEYS if key != "data_dir"
                 and getattr(config, key) != getattr(defaults, key)}
    assert different == {}
    assert config.source == str(EXAMPLE.resolve())


def test_job_paths_are_directories_resolved_against_the_file_or_the_working_directory(tmp_path: Path,
                                                                                         monkeypatch) -> None:
    (tmp_path / "etc" / "src").mkdir(parents=True)
    (tmp_path / "lib").mkdir()
    path = write(tmp_path / "etc/jobdeck.toml", 'job_paths = ["src"]\n')
    assert load(path, env={}).job_paths == [str(tmp_path / "etc" / "src")]
    monkeypatch.chdir(tmp_path)
    assert load(env={"JOBDECK_JOB_PATHS": "lib, etc/src"}).job_paths == [str(tmp_path / "lib"),
                                                                         str(tmp_path / "etc" / "src")]


def test_a_job_path_that_is_no_directory_is_refused_by_name(tmp_path: Path) -> None:
    path = write(tmp_path / "jobdeck.toml", 'job_paths = ["missing"]\n')
    with pytest.raises(ConfigError, match=r"key 'job_paths': 'missing' is not a directory"):
        load(path, env={})
