"""``proxy_mode``: take the client's address, host and scheme from a reverse proxy's headers.

The rule is Odoo's: the ``X-Forwarded-*`` headers are trusted only when
``X-Forwarded-Host`` is present, and only their last entry counts (the one the
proxy next to us appended). Without ``X-Forwarded-Host`` nothing changes, so a
proxy that forgets it is noticed (wrong addresses in the logs) rather than half
applied. With ``proxy_mode`` off the headers are never read at all.

`apply_forwarded` rewrites the WSGI environ in place, before anything reads it,
so every later reader (routes, the websocket layer, access logs) sees the real
client. The values it replaced stay in ``environ["rtbus.proxy.original"]``.
"""

from __future__ import annotations

ORIGINAL_KEY = "rtbus.proxy.original"
_SCHEMES = ("http", "https")


def _last(value: str | None) -> str | None:
    """The last non-empty entry of a comma-separated header, stripped; None if there is none."""
    if not value:
        return None
    for item in reversed(value.split(",")):
        item = item.strip()
        if item:
            return item
    return None


def forwarded_client(forwarded_host: str | None, forwarded_for: str | None) -> str | None:
    """The client address a proxy forwarded for, by the same rule as `apply_forwarded`
    (None without X-Forwarded-Host or X-Forwarded-For)."""
    if _last(forwarded_host) is None:
        return None
    return _last(forwarded_for)


def apply_forwarded(environ: dict) -> bool:
    """Apply X-Forwarded-For/-Host/-Proto to `environ`; True if X-Forwarded-Host was there."""
    host = _last(environ.get("HTTP_X_FORWARDED_HOST"))
    if host is None:
        return False
    original = {key: environ.get(key) for key in
                ("REMOTE_ADDR", "HTTP_HOST", "SERVER_NAME", "SERVER_PORT", "wsgi.url_scheme")}
    environ[ORIGINAL_KEY] = original
    scheme = _last(environ.get("HTTP_X_FORWARDED_PROTO"))
    if scheme is not None and scheme.lower() in _SCHEMES:
        environ["wsgi.url_scheme"] = scheme.lower()
    client = _last(environ.get("HTTP_X_FORWARDED_FOR"))
    if client is not None:
        environ["REMOTE_ADDR"] = client
    environ["HTTP_HOST"] = host
    name, port = _split_host(host, environ["wsgi.url_scheme"])
    environ["SERVER_NAME"] = name
    environ["SERVER_PORT"] = port
    return True


def _split_host(host: str, scheme: str) -> tuple[str, str]:
    """("example.com", "443") from "example.com" under https; IPv6 brackets are kept."""
    default = "443" if scheme == "https" else "80"
    if host.startswith("["):
        end = host.find("]")
        if end != -1:
            rest = host[end + 1:]
            return host[:end + 1], rest[1:] if rest.startswith(":") and rest[1:].isdigit() else default
        return host, default
    name, sep, port = host.rpartition(":")
    if sep and port.isdigit():
        return name, port
    return host, default
