"""Configuration: a TOML file overridden by ``JOBDECK_<KEY>`` environment variables.

The file is the first that exists of: the ``--config`` path, ``$JOBDECK_CONFIG``,
``./jobdeck.toml``, ``/etc/jobdeck/jobdeck.toml`` (none is fine: defaults
apply). Every value is checked when loaded; a bad one raises ``ConfigError``
naming the key and where it came from. ``etc/jobdeck.toml`` documents every key.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from core.errors import BadArgument, ConfigError
from core.flow import check_tags
from core.proxies import parse_network
from core.startup import redact_url

__all__ = ["Config", "load", "SEARCH_PATH", "ENV_PREFIX"]

ENV_PREFIX = "JOBDECK_"
SEARCH_PATH = (Path("jobdeck.toml"), Path("/etc/jobdeck/jobdeck.toml"))
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
JOB_STARTS = ("fork", "spawn")
#: The longest audit_retention_days: a TTL index expires after at most 2**31 - 1 seconds.
MAX_AUDIT_RETENTION_DAYS = 24855


@dataclass(frozen=True)
class Config:
    """Validated settings of one jobdeck process; see ``etc/jobdeck.toml``."""

    mongo_url: str | None = None
    database: str = "jobdeck"
    data_dir: str = "var"
    host: str = "127.0.0.1"
    port: int = 5001
    job_packages: list[str] = field(default_factory=list)
    job_paths: list[str] = field(default_factory=list)
    lease_seconds: float = 30.0
    heartbeat_seconds: float = 5.0
    scheduler_lease_seconds: float = 30.0
    log_retention_days: float = 30.0
    audit_retention_days: float = 365.0
    journal_retention_days: float | None = None
    worker_slots: int = 2
    kill_grace_seconds: float = 10.0
    shutdown_grace_seconds: float = 30.0
    job_start: str = "fork"
    tls_cert: str | None = None
    tls_key: str | None = None
    cors_origins: list[str] = field(default_factory=list)
    trusted_proxies: list[str] = field(default_factory=list)
    admin_password: str | None = None
    max_body_size: int = 1024 * 1024
    token_hours: float = 12.0
    idempotency_hours: float = 24.0
    max_streams_per_user: int = 50
    max_streams: int = 2000
    worker_tags: list[str] = field(default_factory=list)
    worker_pool: str = "default"
    max_running: int | None = None
    log_level: str = "INFO"
    source: str | None = field(default=None, compare=False)

    @property
    def tls(self) -> bool:
        """Whether the HTTP server speaks HTTPS."""
        return bool(self.tls_cert)


# Keys a user may set: everything but ``source``, which records the file read.
_FIELDS = {f.name: f for f in dataclasses.fields(Config) if f.name != "source"}
_PATH_KEYS = ("data_dir", "tls_cert", "tls_key")


def load(path: str | os.PathLike[str] | None = None,
         env: Mapping[str, str] | None = None) -> Config:
    """Read the configuration file (if any) and the environment, validated.

    Raises ``ConfigError`` for a missing explicit file, bad TOML, an unknown
    key or a value of the wrong type or range.
    """
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    source = _find_file(path, env)
    if source is not None:
        values.update(_read_file(source))
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_PREFIX + "CONFIG":
            continue
        key = name[len(ENV_PREFIX):].lower()
        where = f"environment variable {name}"
        if key not in _FIELDS:
            raise ConfigError(f"{where}: unknown setting{_did_you_mean(key, prefix=ENV_PREFIX)}")
        values[key] = (_parse_env(key, raw, where), Path.cwd(), where)
    checked = {key: _check(key, value, base, where)
               for key, (value, base, where) in values.items()}
    checked.setdefault("data_dir", str(Path(Config.data_dir).resolve()))
    config = Config(source=str(source) if source else None, **checked)
    _check_combinations(config)
    return config


def _find_file(path: str | os.PathLike[str] | None, env: Mapping[str, str]) -> Path | None:
    explicit = path or env.get(ENV_PREFIX + "CONFIG")
    if explicit:
        candidate = Path(explicit)
        if not candidate.is_file():
            named_by = "--config" if path else f"{ENV_PREFIX}CONFIG"
            problem = "is a directory" if candidate.is_dir() else "does not exist"
            raise ConfigError(f"configuration file {candidate} {problem}; set {named_by} to a TOML file")
        return candidate.resolve()
    for candidate in SEARCH_PATH:
        if candidate.is_file():
            return candidate.resolve()
    return None


def _read_file(path: Path) -> dict[str, tuple[Any, Path, str]]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"configuration file {path} is not valid TOML: {exc}") from None
    values = {}
    for key, value in data.items():
        where = f"configuration file {path}, key '{key}'"
        if key not in _FIELDS:
            raise ConfigError(f"{where}: unknown setting{_did_you_mean(key)}")
        values[key] = (value, path.parent, where)
    return values


def _did_you_mean(key: str, prefix: str = "") -> str:
    close = difflib.get_close_matches(key, list(_FIELDS), n=1)
    return f" (did you mean {prefix}{close[0].upper() if prefix else close[0]}?)" if close else ""


def _kind(key: str) -> str:
    annotation = str(_FIELDS[key].type)
    for kind in ("list", "int", "float", "str"):
        if annotation.startswith(kind):
            return kind
    raise AssertionError(annotation)


def _parse_env(key: str, raw: str, where: str) -> Any:
    """Turn an environment string into the type the key expects."""
    kind = _kind(key)
    if kind == "list":
        text = raw.strip()
        if text.startswith("["):
            try:
                return json.loads(text)
            except ValueError:
                raise ConfigError(f"{where}: expected a JSON list or comma-separated names, got {raw!r}") from None
        return [part.strip() for part in text.split(",") if part.strip()]
    if kind in ("int", "float"):
        if not raw.strip() and _FIELDS[key].default is None:
            return None  # "" means unset for optional keys (see ``_check``)
        try:
            return int(raw) if kind == "int" else float(raw)
        except ValueError:
            article = "an integer" if kind == "int" else "a number"
            raise ConfigError(f"{where}: expected {article}, got {raw!r}") from None
    return raw


def _check(key: str, value: Any, base: Path, where: str) -> Any:
    """Validate one value's type and range; resolve relative paths against ``base``."""
    kind = _kind(key)
    optional = _FIELDS[key].default is None
    # "" means unset for optional keys, from the environment and the file alike:
    # a path key would otherwise resolve "" to the base directory.
    if optional and (value is None or value == ""):
        return None
    if kind == "list":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: expected a list of strings, got {value!r}")
        if key == "trusted_proxies":
            _check_networks(value, where)
        if key == "job_paths":
            return _directories(value, base, where)
        if key == "worker_tags":
            return _tags(value, where)
        return list(value)
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
    elif kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        value = float(value)
        # nan would pass every range and ordering check below.
        if not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
    elif not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    _check_range(key, value, where)
    if key == "log_level":
        value = value.upper()
    if key in _PATH_KEYS:
        value = str((base / os.path.expanduser(value)).resolve())
    return value


def _check_range(key: str, value: Any, where: str) -> None:
    if key == "port" and not 0 <= value <= 65535:
        raise ConfigError(f"{where}: a port is between 0 and 65535, got {value}")
    if key in ("lease_seconds", "heartbeat_seconds", "scheduler_lease_seconds", "log_retention_days", "journal_retention_days",
               "token_hours", "idempotency_hours", "max_body_size", "worker_slots", "max_streams_per_user",
               "max_streams", "max_running") and value <= 0:
        raise ConfigError(f"{where}: must be greater than 0, got {value}")
    if key in ("kill_grace_seconds", "shutdown_grace_seconds") and value < 0:
        raise ConfigError(f"{where}: must not be negative, got {value}")
    # 0 keeps the audit trail for ever; the most a TTL index takes is 2**31 - 1 seconds (about 68 years).
    if key == "audit_retention_days" and not 0 <= value <= MAX_AUDIT_RETENTION_DAYS:
        raise ConfigError(f"{where}: days between 0 (keep every entry) and {MAX_AUDIT_RETENTION_DAYS}, "
                          f"got {value:g}")
    if key == "job_start" and value not in JOB_STARTS:
        raise ConfigError(f"{where}: one of {', '.join(JOB_STARTS)}, got {value!r}")
    if key == "log_level" and value.upper() not in LOG_LEVELS:
        raise ConfigError(f"{where}: one of {', '.join(LOG_LEVELS)}, got {value!r}")
    if key == "worker_pool":
        _tags([value], where)
    if key in ("database", "host", "data_dir") and not value.strip():
        raise ConfigError(f"{where}: must not be empty")
    if key == "database" and any(c in value for c in '/\\. "$'):
        raise ConfigError(f"{where}: a database name cannot contain / \\ . space \" or $, got {value!r}")
    if key == "mongo_url" and value and not value.startswith(("mongodb://", "mongodb+srv://")):
        raise ConfigError(f"{where}: expected a mongodb:// or mongodb+srv:// URL, got {redact_url(value)!r}")


def _tags(entries: list[str], where: str) -> list[str]:
    try:
        return check_tags(entries, "tags")
    except BadArgument as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _directories(entries: list[str], base: Path, where: str) -> list[str]:
    """``entries`` resolved against ``base``; each must be a directory."""
    resolved = []
    for entry in entries:
        path = (base / os.path.expanduser(entry)).resolve()
        if not path.is_dir():
            raise ConfigError(f"{where}: {entry!r} is not a directory ({path})")
        resolved.append(str(path))
    return resolved


def _check_networks(entries: list[str], where: str) -> None:
    for entry in entries:
        try:
            parse_network(entry)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None


def _check_combinations(config: Config) -> None:
    if bool(config.tls_cert) != bool(config.tls_key):
        raise ConfigError("tls_cert and tls_key must be set together")
    if config.heartbeat_seconds >= config.lease_seconds:
        raise ConfigError(
            f"heartbeat_seconds ({config.heartbeat_seconds:g}) must be shorter than "
            f"lease_seconds ({config.lease_seconds:g}), or leases expire between renewals")
    if config.kill_grace_seconds >= config.lease_seconds - config.heartbeat_seconds:
        raise ConfigError(
            f"kill_grace_seconds ({config.kill_grace_seconds:g}) must be shorter than lease_seconds minus "
            f"heartbeat_seconds ({config.lease_seconds - config.heartbeat_seconds:g}), or a job being killed "
            "could be reaped by another worker in the middle of its own kill")
