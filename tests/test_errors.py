"""The exception tree: every wire outcome is named, every JSON-RPC data.name resolves."""

from __future__ import annotations

import importlib

import psycopg2
import pytest

from rtbus import errors
from rtbus.bus.channels import InvalidChannel
from rtbus.http import bus_routes, demo, jsonrpc, longpolling
from rtbus.websocket.codes import CloseCode

# The data.name values Odoo's own client (and tools written for Odoo) look for.
ODOO_NAMES = {"odoo.http.SessionExpiredException", "odoo.exceptions.AccessDenied",
              "werkzeug.exceptions.NotFound", "werkzeug.exceptions.RequestEntityTooLarge",
              "werkzeug.exceptions.Forbidden"}


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def _resolve(dotted: str):
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def test_every_json_rpc_error_names_a_class_that_exists_or_odoos_own():
    # Importing the route modules registers their JsonRpcError subclasses.
    assert bus_routes and demo and longpolling
    classes = [errors.JsonRpcError, *_subclasses(errors.JsonRpcError)]
    assert {cls.__name__ for cls in classes} >= {
        "ParseError", "InvalidRequest", "InvalidParams", "AccessDenied", "ServiceUnavailable",
        "MisdirectedRequest", "RouteMoved", "DemoModeOff"}
    for cls in classes:
        if cls.name in ODOO_NAMES:
            continue
        assert _resolve(cls.name) is cls, cls.name


def test_json_rpc_errors_are_importable_from_the_json_rpc_module_too():
    assert jsonrpc.InvalidParams is errors.InvalidParams
    assert jsonrpc.JsonRpcError is errors.JsonRpcError


def test_every_wire_outcome_closes_with_a_named_code_and_odoo_names_resolve_for_odoo():
    for cls, outcome in errors.WIRE_OUTCOMES:
        assert isinstance(outcome.close_code, CloseCode), cls
        assert outcome.rpc_name is None or outcome.rpc_name in ODOO_NAMES, cls
    assert isinstance(errors.UNEXPECTED.close_code, CloseCode)


@pytest.mark.parametrize("exc, close, status", [
    (errors.SessionExpired("x"), CloseCode.SESSION_EXPIRED, 200),
    (errors.PoolError("x"), CloseCode.TRY_LATER, 503),
    (errors.LookupBudgetExceeded("x"), CloseCode.TRY_LATER, 503),
    (errors.RequestTooLarge("x"), CloseCode.MESSAGE_TOO_BIG, 413),
    (errors.CrossOriginRefused("x"), CloseCode.MESSAGE_VIOLATING_POLICY, 403),
    (psycopg2.OperationalError("x"), CloseCode.TRY_LATER, 503),
    (RuntimeError("x"), CloseCode.SERVER_ERROR, 500),
])
def test_wire_outcome_picks_the_most_specific_class(exc, close, status):
    outcome = errors.wire_outcome(exc)
    assert (outcome.close_code, outcome.http_status) == (close, status)


def test_client_errors_are_value_errors_and_channel_errors_are_subscription_errors():
    # Callers written against ValueError keep working; transports catch ClientError only.
    for cls in (errors.InvalidEvent, errors.InvalidSubscription, errors.InvalidPresence):
        assert issubclass(cls, errors.ClientError) and issubclass(cls, ValueError)
    assert InvalidChannel is errors.InvalidChannel
    assert issubclass(InvalidChannel, errors.InvalidSubscription)
    assert not issubclass(errors.ProtocolError, errors.ClientError)
