"""Opening handshake: every rejection with its status and sentence, the 101 headers,
and the outdated-worker rule."""

import base64

import pytest
from werkzeug.datastructures import EnvironHeaders

from rtbus.websocket.handshake import (
    WORKER_VERSION,
    HandshakeError,
    accept_key,
    check_request,
    is_outdated,
    response_headers,
)

KEY = "dGhlIHNhbXBsZSBub25jZQ=="   # RFC 6455 §1.3


def request_headers(**overrides):
    headers = {
        "Host": "bus.example.com",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": KEY,
        "Sec-WebSocket-Version": "13",
        "Origin": "https://bus.example.com",
    }
    for name, value in overrides.items():
        name = name.replace("_", "-")
        if value is None:
            headers.pop(name)
        else:
            headers[name] = value
    return headers


def rejected(method="GET", **overrides) -> HandshakeError:
    with pytest.raises(HandshakeError) as info:
        check_request(method, request_headers(**overrides))
    return info.value


def test_accept_key_rfc_example():
    assert accept_key(KEY) == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_valid_request_returns_the_key():
    assert check_request("GET", request_headers()) == KEY


def test_header_names_are_case_insensitive():
    headers = {name.upper(): value for name, value in request_headers().items()}
    assert check_request("GET", headers) == KEY


def test_werkzeug_environ_headers():
    environ = {"REQUEST_METHOD": "GET", "HTTP_HOST": "h", "HTTP_UPGRADE": "WebSocket",
               "HTTP_CONNECTION": "keep-alive, Upgrade", "HTTP_SEC_WEBSOCKET_KEY": KEY,
               "HTTP_SEC_WEBSOCKET_VERSION": "13", "HTTP_ORIGIN": "http://h"}
    assert check_request("GET", EnvironHeaders(environ)) == KEY


def test_method_must_be_get():
    err = rejected("POST")
    assert err.status == 405 and ("Allow", "GET") in err.headers
    assert "GET" in err.message and "POST" in err.message


def test_missing_headers_are_named_sorted_lower_case():
    err = rejected(Upgrade=None, Origin=None)
    assert (err.status, err.message) == (400, "Empty or missing header(s): origin, upgrade")
    err = rejected(Host=None, Connection=None, Sec_WebSocket_Key=None, Sec_WebSocket_Version=None)
    assert err.message == ("Empty or missing header(s): connection, host, "
                           "sec-websocket-key, sec-websocket-version")


def test_empty_header_counts_as_missing():
    err = rejected(Origin="  ")
    assert (err.status, err.message) == (400, "Empty or missing header(s): origin")


def test_upgrade_must_be_websocket():
    err = rejected(Upgrade="h2c")
    assert (err.status, err.message) == (400, "Invalid upgrade header")
    assert check_request("GET", request_headers(Upgrade="WebSocket")) == KEY


@pytest.mark.parametrize("value", ["keep-alive", "upgrader", "close, upgrade-insecure"])
def test_connection_must_list_the_upgrade_token(value):
    err = rejected(Connection=value)
    assert (err.status, err.message) == (400, "Invalid connection header")


@pytest.mark.parametrize("value", ["Upgrade", "upgrade", "keep-alive, Upgrade",
                                   "Upgrade,keep-alive"])
def test_connection_token_forms(value):
    assert check_request("GET", request_headers(Connection=value)) == KEY


@pytest.mark.parametrize("version", ["8", "12", "14", "13, 8"])
def test_other_versions_get_426(version):
    err = rejected(Sec_WebSocket_Version=version)
    assert err.status == 426
    assert err.headers == [("Sec-WebSocket-Version", "13")]
    assert version in err.message


@pytest.mark.parametrize("key", ["not base64!", "dGhlIHNhbXBsZSBub25jZQ",
                                 "dGhl\nIHNhbXBsZSBub25jZQ==", "é" * 24])
def test_key_must_be_strict_base64(key):
    err = rejected(Sec_WebSocket_Key=key)
    assert (err.status, err.message) == (400, "Sec-WebSocket-Key should be b64 encoded")


@pytest.mark.parametrize("length", [15, 17, 32])
def test_key_must_decode_to_16_bytes(length):
    err = rejected(Sec_WebSocket_Key=base64.b64encode(b"k" * length).decode())
    assert err.status == 400
    assert err.message == "Sec-WebSocket-Key should be of length 16 once decoded"


def test_checks_run_in_odoo_order():
    # Missing headers first, then Upgrade, Connection, version, key.
    assert rejected(Origin=None, Upgrade="x").message.startswith("Empty or missing")
    assert rejected(Upgrade="x", Connection="x").message == "Invalid upgrade header"
    assert rejected(Connection="x", Sec_WebSocket_Version="8").message == (
        "Invalid connection header")
    assert rejected(Sec_WebSocket_Version="8", Sec_WebSocket_Key="!").status == 426


def test_response_headers():
    assert response_headers(KEY) == [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
    ]


def test_worker_version_is_odoo_19():
    assert WORKER_VERSION == "19.0-2"


@pytest.mark.parametrize("version, user_agent, outdated", [
    (WORKER_VERSION, "Mozilla/5.0", False),
    ("18.0-7", "Mozilla/5.0", True),
    (None, "Mozilla/5.0", True),
    ("", "Mozilla/5.0", True),
    ("18.0-7", None, False),
    (None, None, False),
    ("18.0-7", "", False),
])
def test_is_outdated(version, user_agent, outdated):
    assert is_outdated(version, user_agent) is outdated
