"""The base of every API handler: authentication, arguments, reply and error envelopes.

Every reply is JSON::

    {"_id": <request id>, "code": 200, "message": "OK", "timestamp": "...", "data": ...}

and every error::

    {"_id": <request id>, "code": 4xx, "message": "Bad Request", "timestamp": "...",
     "error": "what was wrong"}

Arguments come from the query string or a JSON (or form) body, for every
method; ``arg()`` coerces them and raises ``BadArgument`` with the argument's
name. The body is read only after authentication succeeded, and never beyond
``max_body_size`` (413).

Cross-site requests (CSRF): a request that changes something (POST, PUT,
DELETE) may carry a body only as ``application/json`` (forms too where a
handler sets ``accepts_form``), else 415, so an HTML form or a ``text/plain``
fetch from a foreign page cannot reach a handler. Such a request whose
``Origin`` is neither the service's own nor one of ``cors_origins`` is 403;
and when the login cookie authenticated it, it must prove where it came from
(a matching ``Origin`` or ``Sec-Fetch-Site: same-origin``).

The client's address and protocol (``client_ip``, ``client_protocol``: for
the login throttle, the audit trail, ``enqueued.hostname``, the own origin
and the cookie's ``Secure`` flag) are the connection's, or what a peer in
``trusted_proxies`` forwarded (see ``core.proxies``).
"""
from __future__ import annotations

import base64
import binascii
import functools
import json
import logging
import math
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import parse_qs

import dateutil.parser
from bson import ObjectId
from pymongo.errors import ConnectionFailure
from tornado import httputil
from tornado.web import HTTPError, RequestHandler, stream_request_body

from core.encoding import dumps, is_utf8, isotime
from core.errors import (BadArgument, DatabaseUnavailable, Forbidden, JobdeckError, TooLarge, TooManyRequests,
                         Unauthorized, UnsupportedMediaType)

if TYPE_CHECKING:
    from handlers.services import Services

__all__ = ["BaseHandler", "NotFoundHandler", "COOKIE", "MISSING"]

log = logging.getLogger(__name__)

COOKIE = "jobdeck_token"
MISSING: Any = object()
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
_UNSAFE = frozenset({"POST", "PUT", "DELETE", "PATCH"})
_JSON = "application/json"
_FORM = "application/x-www-form-urlencoded"


@stream_request_body
class BaseHandler(RequestHandler):
    """Authenticates in ``prepare``; subclasses read ``arg()`` and call ``reply()``."""

    auth_required = True
    #: Whether a form body is accepted besides JSON (``/login``: a plain HTML form may log in).
    accepts_form = False

    def initialize(self) -> None:
        #: The ``error`` of the reply, if it is an error: the access log shows it.
        self.error_message: str | None = None
        self._chunks: list[bytes] = []
        self._body_size = 0
        self._args: dict[str, Any] | None = None
        #: How ``current_user`` authenticated: ("basic", name, password) or ("token"|"cookie", token).
        self.credentials: tuple[str, ...] | None = None

    @property
    def services(self) -> Services:
        """The application's shared services (configuration, database, authenticator)."""
        return self.application.settings["services"]

    @functools.cached_property
    def request_id(self) -> ObjectId:
        """This request's id: the ``_id`` of its reply and the ``X-Request-Id`` header."""
        return ObjectId()

    @functools.cached_property
    def client_ip(self) -> str:
        """The client's address: the peer's, or the one a peer in ``trusted_proxies`` forwarded."""
        headers = self.request.headers
        return self.services.proxies.client(self.request.remote_ip or "", headers.get("X-Forwarded-For"),
                                            headers.get("X-Real-IP"))

    @functools.cached_property
    def client_protocol(self) -> str:
        """``http`` or ``https`` as the client used it: the connection's, or what a trusted proxy forwarded."""
        request = self.request
        return self.services.proxies.protocol(request.remote_ip or "", request.headers.get("X-Forwarded-Proto"),
                                              request.protocol)

    # -- request life cycle ----------------------------------------------

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Request-Id", str(self.request_id))
        self.set_header("X-Content-Type-Options", "nosniff")
        self._set_cors_headers()

    def _set_cors_headers(self) -> None:
        origin = self.request.headers.get("Origin")
        if origin and origin in self.services.config.cors_origins:
            self.set_header("Access-Control-Allow-Origin", origin)
            self.set_header("Access-Control-Allow-Credentials", "true")
            self.set_header("Vary", "Origin")

    async def prepare(self) -> None:
        length = self.request.headers.get("Content-Length")
        limit = self.services.config.max_body_size
        if length and length.isdigit() and int(length) > limit:
            raise TooLarge(f"request body of {length} bytes exceeds the limit of {limit} bytes")
        if self.request.method == "OPTIONS":
            return
        unsafe = self.request.method in _UNSAFE
        if unsafe:
            self._check_origin(strict=False)
            self._check_content_type()
        if not self.auth_required:
            return
        self.current_user = await self.authenticate()
        if unsafe and self.credentials[0] == "cookie":
            self._check_origin(strict=True)

    # -- cross-site requests ---------------------------------------------

    def _check_content_type(self) -> None:
        """Refuse a body that a foreign page could send without a CORS preflight."""
        length = self.request.headers.get("Content-Length")
        if length == "0" or (length is None and "Transfer-Encoding" not in self.request.headers):
            return  # no body
        content_type = self.request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        allowed = (_JSON, _FORM) if self.accepts_form else (_JSON,)
        if content_type not in allowed:
            raise UnsupportedMediaType(
                f"a {self.request.method} body must be sent as {' or '.join(allowed)}, "
                f"not {content_type or 'without a Content-Type'}")

    def own_origin(self) -> str:
        """This service's origin as the client addressed it: ``http://host:port``."""
        return f"{self.client_protocol}://{self.request.host}"

    def _check_origin(self, *, strict: bool) -> None:
        """Refuse a request from a foreign page: 403.

        ``Origin`` must be the service's own or one of ``cors_origins``; without
        it, ``Sec-Fetch-Site`` must not say cross-site or same-site. ``strict``
        (the cookie authenticated the request) also refuses a request that
        carries neither header, since only a browser sends the cookie by itself.
        """
        origin = self.request.headers.get("Origin")
        site = self.request.headers.get("Sec-Fetch-Site")
        if origin is not None:
            if origin == self.own_origin() or origin in self.services.config.cors_origins:
                return
            raise Forbidden(f"cross-site request from origin {origin[:100]!r} refused; allowed: this "
                            "service's own origin and cors_origins")
        if site is not None:
            if site in ("same-origin", "none"):
                return
            raise Forbidden(f"cross-site request refused (Sec-Fetch-Site: {site[:40]})")
        if strict:
            raise Forbidden("a request authenticated by the login cookie must send Origin (browsers do); "
                            "scripts should use Basic auth or a Bearer token")

    def data_received(self, chunk: bytes) -> None:
        # Past the limit the rest is drained, not kept; arg() then raises 413.
        self._body_size += len(chunk)
        if self._body_size <= self.services.config.max_body_size:
            self._chunks.append(chunk)

    def options(self, *args: Any) -> None:
        """CORS preflight: answered without authentication."""
        self.set_header("Access-Control-Allow-Methods", "GET, POST, PUT, DELETE, OPTIONS")
        self.set_header("Access-Control-Allow-Headers", "Authorization, Content-Type, Last-Event-ID")
        self.set_header("Access-Control-Max-Age", "600")
        self.set_status(204)
        self.finish()

    # -- authentication --------------------------------------------------

    async def authenticate(self) -> dict[str, Any]:
        """The user behind Basic credentials, a Bearer token or the login cookie (kept in ``credentials``)."""
        header = self.request.headers.get("Authorization")
        if header:
            scheme, _, value = header.strip().partition(" ")
            if scheme.lower() == "basic":
                self.credentials = ("basic", *self.basic_credentials(value))
            elif scheme.lower() == "bearer":
                self.credentials = ("token", value.strip())
            else:
                raise Unauthorized(f"unsupported Authorization scheme {scheme[:20]!r}; use Basic or Bearer")
        elif cookie := self.get_cookie(COOKIE):
            self.credentials = ("cookie", cookie)
        else:
            raise Unauthorized("authentication required: use Basic auth, a Bearer token, "
                               "or the cookie set by POST /login")
        return await self._check_credentials(recheck=False)

    async def reauthenticate(self) -> dict[str, Any]:
        """Check the request's credentials again (a long-lived request, some time later).

        Returns the user as it is now; raises ``Unauthorized`` when the user
        was disabled or removed, the password changed or the token expired.
        """
        self.current_user = await self._check_credentials(recheck=True)
        return self.current_user

    async def _check_credentials(self, *, recheck: bool) -> dict[str, Any]:
        auth = self.services.auth
        kind, *values = self.credentials
        if kind == "basic":
            name, password = values
            return await auth.password(name, password, address=self.client_ip, recheck=recheck)
        return await auth.token(values[0])

    @staticmethod
    def basic_credentials(value: str) -> tuple[str, str]:
        """Decode the value of a Basic ``Authorization`` header into (name, password)."""
        try:
            name, colon, password = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise Unauthorized("malformed Basic credentials") from None
        if not colon or not name:
            raise Unauthorized("malformed Basic credentials: expected base64 of name:password")
        return name, password

    # -- arguments -------------------------------------------------------

    @property
    def args(self) -> dict[str, Any]:
        """All arguments: the query string, overridden by the body's fields."""
        if self._args is None:
            try:
                args: dict[str, Any] = {k: v[-1].decode("utf-8")
                                        for k, v in self.request.query_arguments.items()}
            except UnicodeDecodeError:
                raise BadArgument("query string is not valid UTF-8") from None
            args.update(self._body_args())
            self._args = args
        return self._args

    def _body_args(self) -> dict[str, Any]:
        limit = self.services.config.max_body_size
        if self._body_size > limit:
            raise TooLarge(f"request body of {self._body_size} bytes exceeds the limit of {limit} bytes")
        body = b"".join(self._chunks) or self.request.body
        if not body.strip():
            return {}
        content_type = self.request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type == _FORM and not body.lstrip().startswith(b"{"):
            try:
                return {k: v[-1] for k, v in parse_qs(body.decode("utf-8"), strict_parsing=True).items()}
            except (UnicodeDecodeError, ValueError) as exc:
                raise BadArgument(f"request body is not valid form data: {exc}") from None
        if content_type == "multipart/form-data":
            raise BadArgument("multipart bodies are not accepted; send JSON")
        try:
            data = _strict_json(body)
        except (UnicodeDecodeError, ValueError) as exc:
            raise BadArgument(f"request body is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise BadArgument(f"request body must be a JSON object, got {type(data).__name__}")
        return data

    def arg(self, name: str, kind: Callable[..., Any] | type = str, default: Any = MISSING) -> Any:
        """Argument ``name`` coerced to ``kind`` (str, int, float, bool, dict, list, datetime).

        Raises ``BadArgument`` naming the argument when it is missing (and has
        no default) or cannot be coerced. ``None`` (JSON null) gives the default.
        """
        value = self.args.get(name)
        if value is None:
            if default is MISSING:
                raise BadArgument(f"argument {name!r} is required")
            return default
        try:
            return _coerce(value, kind)
        except (TypeError, ValueError, OverflowError):
            raise BadArgument(f"argument {name!r}: expected {_KIND_NAMES.get(kind, kind.__name__)}, "
                              f"got {_shorten(value)}") from None

    # -- replies ---------------------------------------------------------

    def envelope(self, code: int, **fields: Any) -> dict[str, Any]:
        """The fields every JSON reply carries, plus ``fields``."""
        return {"_id": self.request_id, "code": code,
                "message": httputil.responses.get(code, "Unknown"),
                "timestamp": isotime(datetime.now(timezone.utc)), **fields}

    def reply(self, data: Any = None, *, status: int = 200, **extra: Any) -> None:
        """Finish with the reply envelope holding ``data`` (and e.g. pagination fields)."""
        self.set_status(status)
        self.finish(dumps(self.envelope(status, **extra, data=data)))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Render any error as the error envelope, with the status its exception carries."""
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = httputil.responses.get(status_code, "Unknown")
        if isinstance(exc, ConnectionFailure):
            # PyMongo's message describes the whole topology: for the log, not for clients.
            exc = DatabaseUnavailable("the database is unavailable; try again shortly")
        if isinstance(exc, JobdeckError):
            status_code, message = exc.status, str(exc)
        elif isinstance(exc, HTTPError) and exc.log_message:
            message = exc.log_message % exc.args
        elif status_code == 405:
            message = f"method {self.request.method} is not allowed on {self.request.path}"
        elif status_code >= 500:
            message = f"internal error; the server log has the details under request id {self.request_id}"
        self.set_status(status_code)
        if isinstance(exc, Unauthorized):
            self.set_header("WWW-Authenticate", self._challenge())
        if isinstance(exc, TooManyRequests):
            self.set_header("Retry-After", str(exc.retry_after))
        details = {k: v for k, v in getattr(exc, "details", {}).items() if k != "retry_after"}
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        extra = {"details": details} if isinstance(exc, JobdeckError) and details else {}
        self.error_message = message
        self.finish(dumps(self.envelope(status_code, error=message, **extra)))

    def _challenge(self) -> str:
        """The ``WWW-Authenticate`` of a 401: Basic, but Bearer for a page's script.

        A browser answers a Basic challenge to ``fetch`` or ``EventSource`` with
        its own login dialog over the page (the dashboard shows its login form
        instead); scripts say so by a ``Sec-Fetch-Mode`` other than ``navigate``.
        """
        mode = self.request.headers.get("Sec-Fetch-Mode")
        if mode is not None and mode != "navigate":
            return 'Bearer realm="jobdeck"'
        return 'Basic realm="jobdeck", charset="UTF-8"'

    def _request_summary(self) -> str:
        # The access log's "GET /path (client)": the client behind a trusted proxy, not the proxy.
        return f"{self.request.method} {self.request.uri} ({self.client_ip})"

    def on_finish(self) -> None:
        self.services.metrics.observe_request(self.request.method or "?", self.get_status())

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        # Errors raised on purpose are answers, not incidents: the access log's
        # line has their message (``error_message``). The database's own
        # message is logged here, since the client is not given it.
        if isinstance(value, ConnectionFailure):
            log.warning("%s %s: database unavailable (request %s): %s", self.request.method, self.request.uri,
                        self.request_id, value)
        elif not isinstance(value, (JobdeckError, HTTPError)):
            super().log_exception(typ, value, tb)


class NotFoundHandler(BaseHandler):
    """Answers every unknown path with a 404 envelope, before authentication."""

    auth_required = False

    async def prepare(self) -> None:
        await super().prepare()
        raise HTTPError(404, "no such endpoint: %s", self.request.path)


_KIND_NAMES: dict[Any, str] = {
    str: "a string", int: "an integer", float: "a number", bool: "a boolean (true/false/1/0)",
    dict: "a JSON object", list: "a JSON list", datetime: "a date and time (ISO 8601)",
}


def _shorten(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "...'"


def _not_a_number(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"number {text[:30]} is out of range")
    return number


def _strict_json(data: str | bytes) -> Any:
    """Strict JSON: no NaN or Infinity (Python's ``json`` accepts them, a reply could not carry them).

    Raises ``ValueError`` for anything else than JSON, also when it is nested
    too deeply to parse (``json`` raises ``RecursionError`` there).
    """
    try:
        value = json.loads(data, parse_constant=_not_a_number, parse_float=_finite)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    _no_surrogates(value)
    return value


def _no_surrogates(value: Any) -> None:
    """Raise ``ValueError`` for a lone surrogate (``"\\ud800"``) in any string: no store can keep one."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not is_utf8(item):
                raise ValueError(f"string {item[:40]!r} holds a lone surrogate escape, not a character")
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _coerce(value: Any, kind: Any) -> Any:
    """Coerce a JSON or query-string value to ``kind``; raises ``ValueError``/``TypeError``."""
    if kind is str:
        if not isinstance(value, str):
            raise TypeError
        return value
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise ValueError
    if kind is int:
        if isinstance(value, bool):
            raise TypeError
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, (int, str)):
            return int(value)
        raise TypeError
    if kind is float:
        if isinstance(value, bool):
            raise TypeError
        number = float(value)
        if not math.isfinite(number):
            raise ValueError
        return number
    if kind in (dict, list):
        if isinstance(value, str):
            value = _strict_json(value)
        if not isinstance(value, kind):
            raise TypeError
        return value
    if kind is datetime:
        if not isinstance(value, str):
            raise TypeError
        moment = dateutil.parser.isoparse(value)
        # In UTC, as stored; raises OverflowError for a time that leaves datetime's range there.
        return moment.astimezone(timezone.utc) if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
    return kind(value)
