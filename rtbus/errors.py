"""The exceptions rtbus raises, and the one place where each maps to a wire outcome.

Every error a client can cause or suffer is one of these classes. `WIRE_OUTCOMES`
says, for each, which WebSocket close code, HTTP status and JSON-RPC error it
becomes, so transports never grow their own isinstance ladders.

    RtbusError
      ConfigError, StartupError (DatabaseUnavailable), ClusterError, SchemaError
      PoolError                      no connection in time (also psycopg2's PoolError)
      SessionExpired, UnknownDatabase, RequestTooLarge, CrossOriginRefused
      Overloaded (LookupBudgetExceeded)
      HandshakeError                 an upgrade refused with an HTTP status
      ProtocolError, InvalidState    RFC 6455 broken by the peer / by us
      ClientError (also ValueError)  a value a client sent that the bus refuses:
        InvalidEvent, InvalidSubscription (InvalidChannel), InvalidPresence
      JsonRpcError                   answered as a JSON-RPC error object:
        ParseError, InvalidRequest, InvalidParams, AccessDenied, ServiceUnavailable
"""

from __future__ import annotations

import dataclasses

import psycopg2
import psycopg2.pool

from rtbus.websocket.codes import CloseCode


class RtbusError(Exception):
    """Base class of every rtbus error."""


class ConfigError(RtbusError):
    """A setting, flag or configuration file is wrong. The CLI exits with status 2."""


class StartupError(RtbusError):
    """The server cannot start: port in use, database unreachable, bad credentials...

    The message is one sentence an operator can act on; the CLI exits with status 1.
    """


class DatabaseUnavailable(StartupError):
    """PostgreSQL cannot be reached or refuses the configured credentials."""


class PoolError(psycopg2.pool.PoolError, RtbusError):
    """No database connection could be borrowed from a pool in time.

    Subclasses psycopg2's PoolError so that application code written against
    psycopg2 (or Odoo, which imports it) catches it unchanged.
    """


class SessionExpired(RtbusError):
    """The session presented is missing, expired, revoked or rotated.

    WebSocket close 4001; JSON-RPC error 100 "Odoo Session Expired", whose
    ``data.name`` Odoo's web client recognises.
    """


class Overloaded(RtbusError):
    """This process holds as much as it may (long-polls, say) or is stopping; retry later.

    HTTP 503 with Retry-After; WebSocket close 1013.
    """


class UnknownDatabase(RtbusError):
    """A request names (``?db=``) a database this server does not serve.

    HTTP 404. The message never lists the databases that are served.
    """


class RequestTooLarge(RtbusError):
    """A request body is larger than ``http_max_body_size`` (HTTP 413); reading stopped there."""


class CrossOriginRefused(RtbusError):
    """A browser page of a foreign origin sent the session cookie, and the deployment
    refuses such requests (``cross_origin_sessions = refuse``): HTTP 403."""


class LookupBudgetExceeded(Overloaded):
    """A client address presented more unknown session ids than its lookup budget allows
    (``session_lookup_budget``): refused without asking the database, retry later."""


class AuthProxyUnavailable(RtbusError):
    """The application behind ``auth_proxy_url`` did not answer in time, answered an error
    or an answer rtbus cannot read: the subscription is refused, the client retries.

    WebSocket close 1013; HTTP 503 with Retry-After; a JSON-RPC server error.
    """


class ClusterError(RtbusError):
    """An embedded or throwaway PostgreSQL cluster could not be created, started or stopped."""


class SchemaError(RtbusError):
    """The database schema is missing, newer than this rtbus, or could not be upgraded."""


class HandshakeError(RtbusError):
    """An upgrade request is refused: answer with `status`, `message` and `headers`."""

    def __init__(self, status: int, message: str, headers: list[tuple[str, str]] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or []


class ProtocolError(RtbusError):
    """The peer broke RFC 6455; the connection must be closed with `code`.

    `reason` is a sentence for logs and for the close frame.
    """

    def __init__(self, code: CloseCode, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason


class InvalidState(RtbusError):
    """A frame was sent after our close frame: nothing may follow it on the wire."""


class ClientError(RtbusError, ValueError):
    """A value a client sent that the bus refuses. The request fails (JSON-RPC invalid
    params) or the event is ignored (websocket, logged); nothing else is lost."""


class InvalidEvent(ClientError):
    """A client message that is not a well-formed event; logged, the connection is kept."""


class InvalidSubscription(ClientError):
    """Channels that are not a list of strings, or more of them than allowed."""


class InvalidChannel(InvalidSubscription):
    """A channel has an unknown shape, names another database, or is too long."""


class InvalidPresence(ClientError):
    """A presence update with an unusable inactivity period or status."""


class JsonRpcError(RtbusError):
    """An error answered as a JSON-RPC error object.

    `code` and `message` are the JSON-RPC ones; `http_status` is the status line of the
    HTTP response carrying it (Odoo answers 200 for most). `name` goes in
    ``error.data.name``: the class's own dotted path, unless the class names the Odoo
    exception that Odoo's clients look for there.
    """

    code = 200
    message = "Odoo Server Error"
    name = "rtbus.errors.JsonRpcError"
    http_status = 200

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = f"{cls.__module__}.{cls.__qualname__}"

    def __init__(self, detail: str, *, http_status: int | None = None, headers: dict | None = None):
        super().__init__(detail)
        self.detail = detail
        if http_status is not None:
            self.http_status = http_status
        self.headers = headers or {}


class ParseError(JsonRpcError):
    code, message, http_status = -32700, "Parse error", 400


class InvalidRequest(JsonRpcError):
    code, message, http_status = -32600, "Invalid Request", 400


class InvalidParams(JsonRpcError):
    code, message, http_status = -32602, "Invalid params", 200


class AccessDenied(JsonRpcError):
    message, name, http_status = "Access Denied", "odoo.exceptions.AccessDenied", 403


class ServiceUnavailable(JsonRpcError):
    message, http_status = "Service Unavailable", 503


@dataclasses.dataclass(frozen=True)
class WireOutcome:
    """How one error class is reported on each transport."""

    close_code: CloseCode  # WebSocket close code
    http_status: int     # HTTP status for plain and JSON-RPC routes
    retry_after: int | None = None   # seconds, for the Retry-After header
    close_reason: str = ""
    rpc_code: int = 200                       # JSON-RPC error code (Odoo's server error)
    rpc_message: str = "Odoo Server Error"
    rpc_name: str | None = None               # error.data.name; None: the exception's class
    routine: bool = False     # a client's everyday mistake: logged at debug level, not as a warning


# Ordered from most to least specific: the first matching class wins.
WIRE_OUTCOMES: tuple[tuple[type[BaseException], WireOutcome], ...] = (
    (SessionExpired, WireOutcome(
        close_code=CloseCode.SESSION_EXPIRED, http_status=200, close_reason="session expired",
        rpc_code=100, rpc_message="Odoo Session Expired",
        rpc_name="odoo.http.SessionExpiredException", routine=True)),
    (UnknownDatabase, WireOutcome(
        close_code=CloseCode.MESSAGE_VIOLATING_POLICY, http_status=404,
        close_reason="unknown database", rpc_code=404, rpc_message="404: Not Found",
        rpc_name="werkzeug.exceptions.NotFound", routine=True)),
    (RequestTooLarge, WireOutcome(
        close_code=CloseCode.MESSAGE_TOO_BIG, http_status=413, close_reason="message too big",
        rpc_code=413, rpc_message="413: Request Entity Too Large",
        rpc_name="werkzeug.exceptions.RequestEntityTooLarge", routine=True)),
    (CrossOriginRefused, WireOutcome(
        close_code=CloseCode.MESSAGE_VIOLATING_POLICY, http_status=403,
        close_reason="cross-origin request refused", rpc_code=403, rpc_message="403: Forbidden",
        rpc_name="werkzeug.exceptions.Forbidden", routine=True)),
    (AuthProxyUnavailable, WireOutcome(close_code=CloseCode.TRY_LATER, http_status=503,
                                       retry_after=5, close_reason="authorization unavailable")),
    (PoolError, WireOutcome(close_code=CloseCode.TRY_LATER, http_status=503, retry_after=1,
                            close_reason="try again later")),
    (LookupBudgetExceeded, WireOutcome(close_code=CloseCode.TRY_LATER, http_status=503,
                                       retry_after=10, close_reason="try again later",
                                       routine=True)),
    (Overloaded, WireOutcome(close_code=CloseCode.TRY_LATER, http_status=503, retry_after=5,
                             close_reason="try again later")),
    (DatabaseUnavailable, WireOutcome(close_code=CloseCode.TRY_LATER, http_status=503,
                                      retry_after=5, close_reason="try again later")),
    # The server went away, refused a connection, cancelled a statement or
    # aborted a transaction: transient for the client, who should retry.
    (psycopg2.OperationalError, WireOutcome(close_code=CloseCode.TRY_LATER, http_status=503,
                                            retry_after=5, close_reason="try again later")),
)

UNEXPECTED = WireOutcome(close_code=CloseCode.SERVER_ERROR, http_status=500)


def wire_outcome(exc: BaseException) -> WireOutcome:
    """Return how `exc` is reported to a client; unknown errors are server errors."""
    for cls, outcome in WIRE_OUTCOMES:
        if isinstance(exc, cls):
            return outcome
    return UNEXPECTED
