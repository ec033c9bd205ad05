"""JSON-RPC 2.0 over POST, with Odoo's error shape (Odoo 19's ``type='jsonrpc'`` routes).

A request is ``{"jsonrpc": "2.0", "method": "call", "params": {...}, "id": ...}``;
the answer is ``{"jsonrpc": "2.0", "id": ..., "result": ...}`` or
``{"jsonrpc": "2.0", "id": ..., "error": {"code", "message", "data"}}`` where
``data`` carries ``name``, ``message``, ``arguments``, ``context`` and ``debug``
as Odoo's web client expects (it checks ``data.name`` to recognise an expired
session, for instance).

An endpoint is a plain function ``f(app, request, **params) -> result`` wrapped
with `jsonrpc_route`: parsing, envelope checks, parameter binding and the error
mapping happen here, once, for every route.
"""

from __future__ import annotations

import functools
import inspect
import logging

import orjson
from werkzeug.wrappers import Request, Response

from rtbus import errors
from rtbus.errors import (  # noqa: F401  (the JSON-RPC errors, importable from here)
    AccessDenied, InvalidParams, InvalidRequest, JsonRpcError, ParseError, ServiceUnavailable)
from rtbus.http.body import read_body

_logger = logging.getLogger(__name__)

# The content types of a JSON-RPC call (Odoo's JSON-RPC dispatcher takes the same two).
# Anything else is refused: a page on another site can POST text/plain, a form's types
# or no type at all without a CORS preflight, but never application/json.
JSON_TYPES = ("application/json", "application/json-rpc")


class RawResult(bytes):
    """A result already encoded as JSON text: spliced into the response without being
    decoded and encoded again (a long-poll's batch, as the dispatcher encoded it)."""


def error_body(request_id, code: int, message: str, name: str, detail: str) -> dict:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "error": {
            "code": code,
            "message": message,
            "data": {"name": name, "message": detail, "arguments": [detail], "context": {}, "debug": ""},
        },
    }


def _response(body: dict, status: int = 200, headers: dict | None = None) -> Response:
    response = Response(orjson.dumps(body), status=status, mimetype="application/json", headers=headers)
    response.headers["Cache-Control"] = "no-store"
    return response


def error_response(exc: JsonRpcError, request_id=None) -> Response:
    """The response carrying `exc` as a JSON-RPC error object, for endpoints that answer
    before reading the call (a misrouted request, a removed route)."""
    return _response(error_body(request_id, exc.code, exc.message, exc.name, exc.detail),
                     exc.http_status, exc.headers)


def _result_response(request_id, result) -> Response:
    if not isinstance(result, RawResult):
        return _response({"jsonrpc": "2.0", "id": request_id, "result": result})
    body = b'{"jsonrpc":"2.0","id":%s,"result":%s}' % (orjson.dumps(request_id), bytes(result))
    response = Response(body, mimetype="application/json")
    response.headers["Cache-Control"] = "no-store"
    return response


def _read_call(request: Request, max_body: int) -> tuple[object, dict]:
    """Return (id, params) of a JSON-RPC call, or raise ParseError/InvalidRequest
    (RequestTooLarge for a body over `max_body` bytes)."""
    if request.mimetype not in JSON_TYPES:
        shown = request.mimetype or "none"
        # Odoo answers the same mismatch 400 ("Request inferred type is compatible with
        # http but ... is type='jsonrpc'"): the status is Odoo's, the sentence ours.
        raise InvalidRequest(f"{request.path} is a JSON-RPC route: send the call as "
                             f"application/json, not as {shown:.60}", http_status=400)
    raw = read_body(request, max_body)
    try:
        call = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ParseError(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(call, dict):
        raise InvalidRequest("a JSON-RPC request must be a JSON object")
    if call.get("jsonrpc", "2.0") != "2.0":
        raise InvalidRequest("only JSON-RPC 2.0 is supported (\"jsonrpc\": \"2.0\")")
    params = call.get("params", {})
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise InvalidRequest("\"params\" must be an object of named parameters")
    return call.get("id"), params


def _bind(func, params: dict) -> dict:
    """Check `params` against the endpoint's keyword parameters."""
    signature = inspect.signature(func)
    accepted = [name for name, p in signature.parameters.items()
                if p.kind is inspect.Parameter.KEYWORD_ONLY]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise InvalidParams(f"unknown parameter(s): {', '.join(unknown)}; accepted: {', '.join(accepted)}")
    missing = [name for name in accepted
               if signature.parameters[name].default is inspect.Parameter.empty and name not in params]
    if missing:
        raise InvalidParams(f"missing parameter(s): {', '.join(missing)}")
    return params


def jsonrpc_route(func=None, *, authorize=None):
    """Wrap ``func(app, request, *, param...) -> result`` as a JSON-RPC endpoint.

    The parameters of the call are the keyword-only parameters of `func`.
    `authorize(app, request)`, when given, runs before the body is even read and
    raises (AccessDenied...) to refuse the call. `JsonRpcError`s become error
    objects; other errors go through `errors.wire_outcome` (PoolError → 503 with
    Retry-After), and unexpected ones are logged with their traceback and
    answered as a server error.
    """
    if func is None:
        return functools.partial(jsonrpc_route, authorize=authorize)

    @functools.wraps(func)
    def endpoint(app, request: Request, **route_args) -> Response:
        request_id = None
        try:
            if request.method != "POST":
                raise InvalidRequest(f"JSON-RPC routes answer POST requests, not {request.method}",
                                     http_status=405, headers={"Allow": "POST"})
            if authorize is not None:
                authorize(app, request)
            request_id, params = _read_call(request, app.config.http_max_body_size)
            result = func(app, request, **route_args, **_bind(func, params))
            return _result_response(request_id, result)
        except JsonRpcError as exc:
            return _response(error_body(request_id, exc.code, exc.message, exc.name, exc.detail),
                             exc.http_status, exc.headers)
        except Exception as exc:
            outcome = errors.wire_outcome(exc)
            name = outcome.rpc_name or f"{type(exc).__module__}.{type(exc).__qualname__}"
            if outcome is errors.UNEXPECTED:
                _logger.exception("error in %s", request.path)
                return _response(error_body(request_id, outcome.rpc_code, outcome.rpc_message, name,
                                            "internal server error"), 500)
            _logger.log(logging.DEBUG if outcome.routine else logging.WARNING, "%s: %s", request.path, exc)
            headers = {"Retry-After": str(outcome.retry_after)} if outcome.retry_after else None
            if outcome.http_status == 413:
                headers = {**(headers or {}), "Connection": "close"}   # the rest is not read
            return _response(error_body(request_id, outcome.rpc_code, outcome.rpc_message, name, str(exc)),
                             outcome.http_status, headers)
    endpoint.jsonrpc = True
    return endpoint
