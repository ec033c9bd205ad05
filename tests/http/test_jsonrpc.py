"""The JSON-RPC envelope (rtbus.http.jsonrpc) on werkzeug requests, without a server or a database."""

from __future__ import annotations

import logging

import orjson
import psycopg2
import pytest
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from rtbus.config import Config
from rtbus.errors import PoolError
from rtbus.http.jsonrpc import (AccessDenied, InvalidParams, InvalidRequest, ParseError, RawResult,
                                jsonrpc_route)

MAX_BODY = 4096


class Holder:
    """What an endpoint receives as `app`: here only the configuration is read."""

    config = Config.defaults().replace(http_max_body_size=MAX_BODY)


def call(endpoint, body=None, *, method="POST", content_type="application/json", raw: bytes | None = None,
         **route_args):
    """Run `endpoint` on one request; return (status, headers, decoded body)."""
    data = raw if raw is not None else (None if body is None else orjson.dumps(body))
    builder = EnvironBuilder(path="/rpc/test", method=method, data=data, content_type=content_type)
    response = endpoint(Holder(), Request(builder.get_environ()), **route_args)
    return response.status_code, response.headers, orjson.loads(response.get_data())


def envelope(params=None, request_id=1, **extra) -> dict:
    return {"jsonrpc": "2.0", "method": "call", "id": request_id, "params": params or {}, **extra}


@jsonrpc_route
def add(app, request, *, a, b=10):
    return a + b


def test_a_call_is_answered_with_its_id_and_result():
    status, headers, body = call(add, envelope({"a": 1, "b": 2}, request_id="x-7"))
    assert status == 200 and body == {"jsonrpc": "2.0", "id": "x-7", "result": 3}
    assert headers["Content-Type"] == "application/json" and headers["Cache-Control"] == "no-store"


def test_defaults_apply_and_absent_or_null_params_mean_none():
    assert call(add, envelope({"a": 1}))[2]["result"] == 11
    assert call(add, {"jsonrpc": "2.0", "id": 2})[2]["error"]["data"]["message"] == "missing parameter(s): a"
    null_params = {"jsonrpc": "2.0", "id": 3, "params": None}
    assert call(add, null_params)[2]["error"]["data"]["message"] == "missing parameter(s): a"


def test_an_id_is_echoed_as_given_and_is_null_when_absent():
    assert call(add, envelope({"a": 1}, request_id=None))[2]["id"] is None
    assert call(add, {"jsonrpc": "2.0", "params": {"a": 1}})[2] == {"jsonrpc": "2.0", "id": None, "result": 11}
    assert call(add, envelope({"a": 1}, request_id=[1, {"x": 2}]))[2]["id"] == [1, {"x": 2}]


def error_of(response) -> tuple[int, dict]:
    status, _headers, body = response
    assert set(body) == {"jsonrpc", "id", "error"}
    error = body["error"]
    assert set(error) == {"code", "message", "data"}
    assert set(error["data"]) == {"name", "message", "arguments", "context", "debug"}
    assert error["data"]["arguments"] == [error["data"]["message"]]
    return status, error


@pytest.mark.parametrize("params, sentence", [
    ({"a": 1, "c": 3}, "unknown parameter(s): c; accepted: a, b"),
    ({"b": 3}, "missing parameter(s): a"),
])
def test_parameters_are_checked_against_the_endpoint(params, sentence):
    status, error = error_of(call(add, envelope(params)))
    assert status == InvalidParams.http_status == 200
    assert (error["code"], error["message"], error["data"]["name"]) == (-32602, "Invalid params", InvalidParams.name)
    assert error["data"]["message"] == sentence


@pytest.mark.parametrize("raw, cls, sentence", [
    (b"{not json", ParseError, "the request body is not valid JSON"),
    (b"", ParseError, "the request body is not valid JSON"),
    (b"[1, 2]", InvalidRequest, "a JSON-RPC request must be a JSON object"),
    (b'{"jsonrpc": "1.0", "params": {}}', InvalidRequest, "only JSON-RPC 2.0 is supported"),
    (b'{"jsonrpc": "2.0", "params": [1, 2]}', InvalidRequest, '"params" must be an object'),
])
def test_bad_envelopes_are_refused_with_their_json_rpc_error(raw, cls, sentence):
    status, error = error_of(call(add, raw=raw))
    assert status == cls.http_status == 400
    assert (error["code"], error["message"], error["data"]["name"]) == (cls.code, cls.message, cls.name)
    assert error["data"]["message"].startswith(sentence)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", ""])
def test_only_json_content_types_are_calls(content_type):
    # A page on another site can send these without a preflight: never a call.
    status, error = error_of(call(add, envelope({"a": 1}), content_type=content_type))
    assert status == 400 and error["code"] == InvalidRequest.code
    assert error["data"]["message"].startswith("/rpc/test is a JSON-RPC route: send the call as application/json")


def test_json_rpc_content_type_is_a_call_too():
    assert call(add, envelope({"a": 1}), content_type="application/json-rpc")[2]["result"] == 11


def test_only_post_is_served():
    status, headers, body = call(add, method="GET")
    assert status == 405 and headers["Allow"] == "POST"
    assert body["error"]["data"]["message"] == "JSON-RPC routes answer POST requests, not GET"


def test_a_body_over_the_limit_is_413_and_the_connection_closed():
    status, headers, body = call(add, raw=b'{"params": {"a": "' + b"x" * MAX_BODY + b'"}}')
    assert status == 413 and headers["Connection"] == "close"
    assert body["error"]["code"] == 413


def test_authorize_refuses_before_the_body_is_read():
    seen = []

    def authorize(app, request):
        seen.append(request.path)
        raise AccessDenied("wrong key")

    @jsonrpc_route(authorize=authorize)
    def guarded(app, request):
        raise AssertionError("the endpoint ran")

    status, error = error_of(call(guarded, raw=b"{this is not even read"))
    assert seen == ["/rpc/test"] and status == 403
    assert (error["message"], error["data"]["name"], error["data"]["message"]) == (
        "Access Denied", "odoo.exceptions.AccessDenied", "wrong key")


def test_a_raw_result_is_spliced_as_is():
    @jsonrpc_route
    def batch(app, request):
        return RawResult(b'[{"id":5,"message":{"type":"t","payload":null}}]')

    status, _headers, body = call(batch, envelope(request_id=9))
    assert status == 200
    assert body == {"jsonrpc": "2.0", "id": 9, "result": [{"id": 5, "message": {"type": "t", "payload": None}}]}


def test_route_arguments_reach_the_endpoint():
    @jsonrpc_route
    def named(app, request, dbname, *, x):
        return [dbname, x]

    assert call(named, envelope({"x": 1}), dbname="db1")[2]["result"] == ["db1", 1]


@pytest.mark.parametrize("exc, status, retry_after", [
    (PoolError("pool 'http' exhausted"), 503, "1"),
    (psycopg2.OperationalError("server closed the connection"), 503, "5"),
])
def test_transient_errors_are_503_with_retry_after(exc, status, retry_after):
    @jsonrpc_route
    def failing(app, request):
        raise exc

    got_status, headers, body = call(failing, envelope())
    assert got_status == status and headers["Retry-After"] == retry_after
    assert body["error"]["data"]["message"] == str(exc)


def test_an_unexpected_error_is_logged_and_answered_without_its_details(caplog):
    @jsonrpc_route
    def broken(app, request):
        raise KeyError("secret internals")

    with caplog.at_level(logging.ERROR, logger="rtbus.http.jsonrpc"):
        status, error = error_of(call(broken, envelope()))
    assert status == 500
    assert error["data"]["message"] == "internal server error"
    assert "secret internals" not in orjson.dumps(error).decode()
    assert error["data"]["name"] == "builtins.KeyError"
    (record,) = caplog.records
    assert record.getMessage() == "error in /rpc/test" and record.exc_info[0] is KeyError
