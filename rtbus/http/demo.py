"""The demo routes behind the live board (``demo_mode`` only; 404 otherwise).

They let a page sign in and publish without ever seeing ``bus_api_key``:

- ``/demo/session`` → ``{"uid", "partner_id", "name", "color", "created"}``. Keeps the
  browser's demo session when its ``session_id`` cookie still holds one; otherwise
  creates a demo user (a uid and a partner id of its own) with a session, sets the
  cookie (HttpOnly, SameSite=Lax, Secure behind https) and announces ``demo/joined`` on
  ``demo.people``.
- ``/demo/people`` → ``{"people": [{"uid", "partner_id", "name", "color", "status"}]}``,
  the demo users with a live session and their presence, online first.
- ``/demo/publish`` ``{channel, text}`` → ``{"id"}``: one ``demo/message`` from the
  signed-in demo user on a ``demo.<name>`` channel.

Demo users are told apart from the application's by their uid (`DEMO_UID_BASE` and
up); their names are derived from the uid, so nothing but the session is stored.
"""

from __future__ import annotations

import re
import secrets

from werkzeug.wrappers import Request, Response

from rtbus.errors import SessionExpired
from rtbus.http.cookies import set_session_cookie
from rtbus.http.jsonrpc import InvalidParams, JsonRpcError, jsonrpc_route
from rtbus.session import create_session, sid_from_cookie_header

DEMO_UID_BASE = 2_000_000_000
DEMO_UID_SPAN = 100_000_000
DEMO_SESSION_TTL = 86400
PEOPLE_CHANNEL = "demo.people"
CHANNEL_NAME = re.compile(r"demo\.[a-z0-9][a-z0-9-]{0,31}")
MAX_TEXT = 500
MAX_PEOPLE = 40
NAMES = ("Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Margaret", "Ken", "Dennis",
         "Frances", "Niklaus", "Tony", "Radia", "Katherine", "Hedy", "Claude", "Leslie", "Sophie",
         "Anita", "John", "Annie", "Guido", "Joan", "Fran", "Butler", "Adele", "Jean", "Evelyn")
COLORS = ("#e4572e", "#2e86ab", "#a23b72", "#3bb273", "#f18f01", "#6c5ce7", "#00a8a8", "#c44569")

_PEOPLE_SQL = """
SELECT uid, partner_id, status FROM (
    SELECT DISTINCT ON (s.uid) s.uid, s.partner_id, coalesce(p.status, 'offline') AS status,
           s.created
      FROM rtbus_session s LEFT JOIN rtbus_presence p ON p.user_id = s.uid
     WHERE s.uid >= %(base)s AND s.uid < %(top)s AND NOT s.revoked AND s.rotated_to IS NULL
       AND s.expires > (now() at time zone 'utc')
     ORDER BY s.uid, s.created DESC) people
 ORDER BY status = 'offline', status = 'away', created DESC
 LIMIT %(limit)s
"""


class DemoModeOff(JsonRpcError):
    message, name, http_status = "Not Found", "werkzeug.exceptions.NotFound", 404


def require_demo_mode(app, request: Request) -> None:
    if not app.config.demo_mode:
        raise DemoModeOff("the demo routes are off (demo_mode); start rtbus-server with --demo-mode")


def is_demo_user(uid: int | None) -> bool:
    return uid is not None and DEMO_UID_BASE <= uid < DEMO_UID_BASE + DEMO_UID_SPAN


def person(uid: int, partner_id: int, status: str | None = None) -> dict:
    """How the board shows a demo user: a name and a colour derived from the uid."""
    number = uid - DEMO_UID_BASE
    shown = {"uid": uid, "partner_id": partner_id, "name": f"{NAMES[number % len(NAMES)]} {number % 97:02d}",
             "color": COLORS[number % len(COLORS)]}
    if status is not None:
        shown["status"] = status
    return shown


def _current_demo_session(app, request: Request, dbname: str):
    session = app.sessions.get(dbname, sid_from_cookie_header(request.environ),
                               client=request.remote_addr)
    return session if session is not None and is_demo_user(session.uid) else None


@jsonrpc_route(authorize=require_demo_mode)
def _session(app, request: Request):
    dbname = app.database(None)
    current = _current_demo_session(app, request, dbname)
    if current is not None:
        return {**person(current.uid, current.partner_id), "created": False}
    uid = DEMO_UID_BASE + secrets.randbelow(DEMO_UID_SPAN)
    with app.pool.connection(dbname) as conn:
        sid = create_session(conn, uid, uid, (), ttl=DEMO_SESSION_TTL)
        conn.commit()
    request.environ["rtbus.demo.sid"] = sid
    joined = person(uid, uid)
    app.publisher.publish(app.pool, dbname, [(PEOPLE_CHANNEL, "demo/joined", joined)])
    return {**joined, "created": True}


def session(app, request: Request) -> Response:
    """``/demo/session``, plus the cookie of a session it created."""
    response = _session(app, request)
    sid = request.environ.get("rtbus.demo.sid")
    if sid is not None and response.status_code == 200:
        set_session_cookie(response, request, sid, DEMO_SESSION_TTL)
    return response


@jsonrpc_route(authorize=require_demo_mode)
def people(app, request: Request):
    dbname = app.database(None)
    with app.pool.connection(dbname) as conn:
        with conn.cursor() as cur:
            cur.execute(_PEOPLE_SQL, {"base": DEMO_UID_BASE, "top": DEMO_UID_BASE + DEMO_UID_SPAN,
                                      "limit": MAX_PEOPLE})
            rows = cur.fetchall()
        conn.rollback()
    return {"people": [person(uid, partner_id, status) for uid, partner_id, status in rows]}


@jsonrpc_route(authorize=require_demo_mode)
def post_message(app, request: Request, *, channel, text):
    dbname = app.database(None)
    if not isinstance(channel, str) or not CHANNEL_NAME.fullmatch(channel):
        raise InvalidParams("the demo publishes on demo.<name> channels only "
                            "(a-z, 0-9 and '-', at most 32 characters)")
    if not isinstance(text, str) or not text.strip():
        raise InvalidParams("text must be a non-empty string")
    text = text.strip()
    if len(text) > MAX_TEXT:
        raise InvalidParams(f"text is limited to {MAX_TEXT} characters, got {len(text)}")
    sender = _current_demo_session(app, request, dbname)
    if sender is None:
        raise SessionExpired("no demo session: call /demo/session first")
    payload = {"channel": channel, "text": text, "from": person(sender.uid, sender.partner_id)}
    (notification_id,) = app.publisher.publish(app.pool, dbname, [(channel, "demo/message", payload)])
    return {"id": notification_id}
