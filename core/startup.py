"""Start-up errors: what keeps a jobdeck process from starting, said in one line naming the setting to change.

Each function here turns a low-level failure met while starting (a taken
port, an unwritable ``data_dir``, a database that does not answer) into a
``ConfigError`` whose message is one line: what failed, and which setting to
change and where (``set port (in jobdeck.toml or JOBDECK_PORT)``). The
command line prints a ``ConfigError`` as that one line and exits 2, with the
traceback only under ``jobdeck --debug`` or log level DEBUG
(``jobdeck.command``). Database URLs are shown with ``redact_url``: never
with their password.
"""
from __future__ import annotations

import errno
import os
import re
import socket

from core.errors import ConfigError

__all__ = ["redact_url", "setting", "cannot_listen", "unwritable_data_dir", "unreachable_database",
           "bad_database_url", "bad_tls"]

# core.config.ENV_PREFIX, which cannot be imported here: core.config shows URLs with redact_url.
_ENV_PREFIX = "JOBDECK_"

# Everything between "://" and the last "@" is the user information; the last
# "@", since a password written unescaped may hold one (and "/" or "?" too).
_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>.*)@")


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***``: ``mongodb://user:***@host/db?options``.

    The user name stays (it helps to tell accounts apart); a URL without a
    password is returned as it is.
    """
    match = _USERINFO.match(url)
    if match is None:
        return url
    user, has_password, _password = match.group("userinfo").partition(":")
    if not has_password:
        return url
    return f"{match.group('scheme')}{user}:***@{url[match.end():]}"


def setting(key: str) -> str:
    """``key`` and the places to set it, for a message: ``port (in jobdeck.toml or JOBDECK_PORT)``."""
    return f"{key} (in jobdeck.toml or {_ENV_PREFIX}{key.upper()})"


def cannot_listen(host: str, port: int, exc: OSError) -> ConfigError:
    """The error for an HTTP server that cannot listen on ``host:port``."""
    reason = exc.strerror or str(exc)
    if exc.errno == errno.EADDRINUSE:
        return ConfigError(f"port {port} on {host} is already in use; set {setting('port')} to a free one "
                           "(0 picks one)")
    if isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL:
        return ConfigError(f"cannot listen on host {host!r}: {reason}; set {setting('host')} to an address "
                           "of this machine, e.g. 127.0.0.1 or 0.0.0.0")
    if exc.errno == errno.EACCES:
        return ConfigError(f"cannot listen on port {port} of {host}: {reason} (ports below 1024 need "
                           f"privileges); set {setting('port')} to 1024 or above")
    return ConfigError(f"cannot listen on {host}:{port}: {reason}; check {setting('host')} and {setting('port')}")


def unwritable_data_dir(data_dir: str | os.PathLike[str], exc: OSError) -> ConfigError:
    """The error for a ``data_dir`` that cannot be created or written."""
    reason = "a file is in the way" if isinstance(exc, FileExistsError) else exc.strerror or str(exc)
    at = f" ({exc.filename})" if exc.filename and os.fspath(exc.filename) != os.fspath(data_dir) else ""
    return ConfigError(f"data_dir {os.fspath(data_dir)} cannot be written: {reason}{at}; set "
                       f"{setting('data_dir')} to a writable directory")


def unreachable_database(url: str, exc: Exception, timeout: float) -> ConfigError:
    """The error for a database that did not answer at start; ``url`` is shown without its password."""
    # PyMongo's message goes on to describe the whole topology: its first clause is the reason.
    text = str(exc)
    reason = re.split(r" \(configured timeouts|, Timeout: |, Topology Description: ", text, maxsplit=1)[0]
    reason = redact_url(reason.strip().rstrip(".")) or type(exc).__name__
    waited = f" within {timeout:g} s" if "Timeout: " in text else ""  # not for a name that does not resolve
    return ConfigError(f"cannot reach the database at {redact_url(url)}{waited}: {reason}; check that it runs "
                       f"and can be reached from here, or set {setting('mongo_url')}")


def bad_database_url(url: str, exc: Exception) -> ConfigError:
    """The error for a database URL the driver refuses; ``url`` is shown without its password."""
    return ConfigError(f"the database URL {redact_url(url)} is not valid: {exc}; set {setting('mongo_url')}")


def bad_tls(cert: str | None, key: str | None, exc: Exception) -> ConfigError:
    """The error for a TLS certificate or key that cannot be loaded."""
    reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)
    return ConfigError(f"cannot load the TLS certificate {cert} with its key {key}: {reason}; set "
                       f"{setting('tls_cert')} and {setting('tls_key')} to a readable PEM certificate and its key")
