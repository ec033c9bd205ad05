"""The session cookie as rtbus sets it: HttpOnly, SameSite=Lax, Secure behind https.

HttpOnly keeps it from page scripts, SameSite=Lax from other sites' POSTs and
subrequests, Secure from plain http once the deployment is served over https (with
``proxy_mode``, the scheme X-Forwarded-Proto gives).
"""

from __future__ import annotations

from werkzeug.wrappers import Request, Response

from rtbus.session import COOKIE_NAME


def set_session_cookie(response: Response, request: Request, sid: str, max_age: int) -> None:
    """Give the browser `sid` as its ``session_id`` cookie for `max_age` seconds."""
    response.set_cookie(COOKIE_NAME, sid, max_age=max_age, path="/", httponly=True,
                        samesite="Lax", secure=request.scheme == "https")
