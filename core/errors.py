"""The errors core raises, each carrying the HTTP status it maps to.

::

    JobdeckError                 500  base; anything unexpected is a bug
     ├── BadArgument             400
     ├── Unauthorized            401
     ├── Forbidden               403
     ├── NotFound                404
     ├── Conflict                409
     ├── TooLarge                413
     ├── UnsupportedMediaType    415
     ├── TooManyRequests         429
     ├── DatabaseUnavailable     503
     └── ConfigError               (a setting keeps jobdeck from starting; the CLI exits 2)

The HTTP layer renders ``status`` and ``str(error)`` as the error envelope;
the command line prints the message and exits 1, or 2 for a ``ConfigError``
(one line naming the setting, see ``core.startup``).
"""
from __future__ import annotations

__all__ = [
    "JobdeckError", "BadArgument", "Unauthorized", "Forbidden", "NotFound",
    "Conflict", "TooLarge", "UnsupportedMediaType", "TooManyRequests", "DatabaseUnavailable",
    "ConfigError",
]


class JobdeckError(Exception):
    """Base of every error jobdeck raises on purpose.

    ``details`` carries machine-readable facts about the error (e.g. the id
    of the job a duplicate enqueue ran into).
    """

    status: int = 500

    def __init__(self, message: str = "", **details: object) -> None:
        super().__init__(message)
        self.details = details


class BadArgument(JobdeckError):
    """Raised when a caller passes a missing, malformed or invalid argument."""

    status = 400


class Unauthorized(JobdeckError):
    """Raised when credentials are missing or wrong."""

    status = 401


class Forbidden(JobdeckError):
    """Raised when an authenticated user lacks the permission for an action."""

    status = 403


class NotFound(JobdeckError):
    """Raised when a job, user or qual_name does not exist."""

    status = 404


class Conflict(JobdeckError):
    """Raised when the target's current state does not allow the action."""

    status = 409


class TooLarge(JobdeckError):
    """Raised when a request body or argument exceeds its size limit."""

    status = 413


class UnsupportedMediaType(JobdeckError):
    """Raised when a request that changes something sends a body that is not JSON."""

    status = 415


class TooManyRequests(JobdeckError):
    """Raised when login failures throttle a client, or a caller holds too many open streams."""

    status = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message, retry_after=retry_after)
        self.retry_after = retry_after


class DatabaseUnavailable(JobdeckError):
    """Raised when MongoDB cannot be reached in time."""

    status = 503


class ConfigError(JobdeckError):
    """Raised when a setting keeps jobdeck from starting: a bad file or value, a taken port, an unreachable database."""

    status = 500
