"""The Origin rule without a server: parsing origins, trusting them, screening requests."""

from __future__ import annotations

import pytest

from rtbus.config import Config
from rtbus.errors import ConfigError
from rtbus.http.origin import OriginPolicy, parse_origin, request_origin, without_session_cookie


@pytest.mark.parametrize("value, expected", [
    ("https://Example.COM", ("https", "example.com", 443)),
    ("http://example.com:80", ("http", "example.com", 80)),
    ("http://example.com:8069/", ("http", "example.com", 8069)),
    ("http://[::1]:8072", ("http", "::1", 8072)),
    ("wss://bus.example", ("https", "bus.example", 443)),
    ("null", None),
    ("", None),
    (None, None),
    ("file://", None),
    ("ftp://example.com", None),
    ("https://example.com/path", None),
    ("https://example.com?x=1", None),
    ("https://user@example.com", None),
    ("https://example.com:99999", None),
    ("example.com", None),
])
def test_parse_origin(value, expected):
    assert parse_origin(value) == expected


def environ(origin=None, host="bus.example", scheme="http", cookie="session_id=abc; theme=dark",
            path="/websocket"):
    env = {"wsgi.url_scheme": scheme, "HTTP_HOST": host, "PATH_INFO": path, "REQUEST_METHOD": "GET",
           "SERVER_NAME": "10.0.0.1", "SERVER_PORT": "8072"}
    if origin is not None:
        env["HTTP_ORIGIN"] = origin
    if cookie is not None:
        env["HTTP_COOKIE"] = cookie
    return env


def test_request_origin_falls_back_to_the_server_name_and_port():
    assert request_origin(environ(host="bus.example:8072")) == ("http", "bus.example", 8072)
    env = environ()
    del env["HTTP_HOST"]
    assert request_origin(env) == ("http", "10.0.0.1", 8072)


def test_own_origin_is_trusted_scheme_host_and_port_all_count():
    policy = OriginPolicy()
    assert policy.trusts(environ("http://bus.example", host="bus.example"))
    assert policy.trusts(environ("http://BUS.example:80", host="bus.example:80"))
    assert not policy.trusts(environ("https://bus.example", host="bus.example"))     # scheme
    assert not policy.trusts(environ("http://bus.example:8080", host="bus.example"))  # port
    assert not policy.trusts(environ("http://evil.example", host="bus.example"))      # host
    assert not policy.trusts(environ("null", host="bus.example"))


def test_allowed_origins_and_the_sibling_page():
    policy = OriginPolicy(("https://app.example",), sibling_port=8069)
    assert policy.trusts(environ("https://app.example", host="bus.example"))
    assert policy.may_read(environ("https://app.example", host="bus.example"))
    sibling = environ("http://bus.example:8069", host="bus.example:8072")
    assert policy.trusts(sibling) and policy.may_read(sibling)
    assert not policy.trusts(environ("http://other.example:8069", host="bus.example:8072"))
    # The own origin needs no CORS; a foreign one gets none.
    assert not policy.may_read(environ("http://bus.example:8072", host="bus.example:8072"))
    assert not policy.may_read(environ("http://evil.example", host="bus.example"))


def test_only_the_gevent_process_has_a_sibling_page():
    config = Config.defaults().replace(http_port=8069)
    assert OriginPolicy.from_config(config, "gevent").sibling_port == 8069
    assert OriginPolicy.from_config(config, "single").sibling_port is None
    assert OriginPolicy.from_config(config, "http").sibling_port is None


def test_a_malformed_allowed_origin_is_a_configuration_error():
    with pytest.raises(ConfigError, match="https://app.example/path is not an origin"):
        OriginPolicy(("https://app.example/path",))


def test_screen_downgrades_a_foreign_page_and_keeps_other_cookies():
    policy = OriginPolicy()
    env = environ("https://evil.example", cookie="theme=dark; session_id=abc; session_id=def; x=1")
    assert policy.screen(env) is None
    assert env["HTTP_COOKIE"] == "theme=dark; x=1"
    assert policy.counters == {"downgraded": 1, "refused": 0}


def test_screen_leaves_requests_without_origin_or_without_session_cookie_alone():
    policy = OriginPolicy(refuse=True)
    for env in (environ(None), environ("https://evil.example", cookie="theme=dark"),
                environ("https://evil.example", cookie=None)):
        before = dict(env)
        assert policy.screen(env) is None
        assert env == before
    assert policy.counters == {"downgraded": 0, "refused": 0}


def test_screen_refuses_with_403_when_configured():
    policy = OriginPolicy(refuse=True)
    response = policy.screen(environ("https://evil.example"))
    assert response.status_code == 403
    assert policy.counters == {"downgraded": 0, "refused": 1}
    assert policy.screen(environ("http://bus.example")) is None


def test_without_session_cookie():
    assert without_session_cookie("session_id=a") == ""
    assert without_session_cookie(" a=1 ;session_id = b; b=2;") == "a=1; b=2"
    assert without_session_cookie("session_idx=1") == "session_idx=1"
