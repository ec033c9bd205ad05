"""The session store and the channel rules of a process whose application decides.

With ``auth_proxy_url`` set, `Application` uses `ProxySessions` where it would use
rtbus.session.SessionStore and `ProxyRules` where it would use ChannelPolicy; the
transports do not change. Both read one AuthProxy.

- A new connection or request with a cookie runs as the session the application last
  described for that sid; an unknown sid runs, until its first subscription answers,
  as a provisional session without a user (it hears nothing before subscribing). A sid
  the application refused or signalled as ended is SessionExpired (4001 / error 100).
- Re-checks of an open connection (each client message, each dispatch) read the
  remembered answer; a stale one is re-asked in the background, so that a check never
  waits on the application and an application that is down leaves open connections
  their channels (a refusal, once known, closes them 4001).
- A subscription (websocket subscribe, long-poll, peek) asks the application with the
  requested channels, after the shape and count rules of rtbus.bus.authorization.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from rtbus.auth.proxy import AuthProxy
from rtbus.bus.authorization import Subscription, check_channel_list
from rtbus.bus import channels as bus_channels
from rtbus.errors import SessionExpired
from rtbus.session import Session, well_formed_sid


MAX_FORWARDED_VALUE = 512      # characters of one forwarded cookie; longer ones are not sent


class ProxySessions:
    """SessionStore's interface (authenticate, check, check_cached, check_poll, public, invalidate,
    on_session_notify, stats) answered from `proxy`. `cookie_names`: the cookies besides
    session_id that the application hears (auth_proxy_cookies)."""

    def __init__(self, proxy: AuthProxy, cookie_names: Iterable[str] = ()):
        self.proxy = proxy
        self.cookie_names = tuple(name for name in cookie_names if name != "session_id")

    def forwarded(self, cookies: Mapping[str, str] | None) -> tuple[tuple[str, str], ...]:
        """The (name, value) pairs of `cookies` that are forwarded, sorted."""
        if not cookies or not self.cookie_names:
            return ()
        return tuple(sorted((name, value) for name in self.cookie_names
                            if (value := cookies.get(name)) and len(value) <= MAX_FORWARDED_VALUE
                            and value.isprintable() and ";" not in value))

    def public(self, dbname: str, forwarded: tuple[tuple[str, str], ...] = ()) -> Session:
        return Session(sid=None, dbname=dbname, uid=None, partner_id=None, group_ids=(),
                       forwarded_cookies=forwarded)

    def authenticate(self, dbname: str, sid: str | None, *, client: str | None = None,
                     cookies: Mapping[str, str] | None = None) -> Session:
        """The session a new connection or request runs as (see the module docstring),
        carrying the forwarded ones of its `cookies`. Raises SessionExpired for a sid known
        to have ended. Never calls the application."""
        forwarded = self.forwarded(cookies)
        if not sid:
            return self.public(dbname, forwarded)
        if not well_formed_sid(sid):
            raise SessionExpired("session expired")
        known = self.proxy.identity(dbname, sid)
        if known is None:
            return Session(sid=sid, dbname=dbname, uid=None, partner_id=None, group_ids=(),
                           forwarded_cookies=forwarded)
        grant, _fresh = known
        if not grant.valid:
            raise SessionExpired("session expired")
        return self.proxy.session_for(dbname, sid, grant, forwarded)

    def check_cached(self, session: Session) -> Session | None:
        """check() for a caller that must not wait nor raise (a write-through send):
        check() never waits on the application; a session that ended gives None, and
        the caller's slow path (the writer's check) closes the connection."""
        try:
            return self.check(session)
        except SessionExpired:
            return None

    def check(self, session: Session) -> Session:
        """Re-check an open connection's session from what the application said last;
        SessionExpired once it said the session ended. Never waits on the application.

        A session not subscribed yet (provisional: not `is_websocket_session`) is left
        as it is: its subscription asks. A subscribed one whose answer was dropped from
        the bounded cache is re-asked in the background, and refused if its prefix
        ended meanwhile.
        """
        if session.sid is None:
            return session
        known = self.proxy.identity(session.dbname, session.sid)
        if known is None:
            if not session.is_websocket_session:
                return session
            if self.proxy.ended_since(session.dbname, session.sid, None):
                raise SessionExpired("session expired")
            self.proxy.refresh_soon(session.dbname, session.sid)
            return session
        grant, fresh = known
        if not grant.valid:
            raise SessionExpired("session expired")
        if not fresh:
            self.proxy.refresh_soon(session.dbname, session.sid)
        if grant.uid == session.uid and grant.partner_id == session.partner_id:
            return session
        return self.proxy.session_for(session.dbname, session.sid, grant, session.forwarded_cookies)

    def check_poll(self, dbname: str, sid: str | None, is_first_poll: bool, *,
                   client: str | None = None, cookies: Mapping[str, str] | None = None) -> Session:
        """The session of a peek; whether a later poll is allowed is the application's
        rule, applied when the channels are asked for."""
        return self.authenticate(dbname, sid, client=client, cookies=cookies)

    def invalidate(self, dbname: str | None = None, sid: str | None = None) -> None:
        if dbname is None:
            self.proxy.grants.forget(lambda key: True)
            self.proxy.identities.forget(lambda key: True)
        else:
            self.proxy.end(dbname, "*" if sid is None else sid)

    def on_session_notify(self, dbname: str, payload: str) -> None:
        """The ``rtbus_session`` NOTIFY callback: the application ended the sessions whose
        sid starts with `payload` ("*": forget every answer of `dbname`)."""
        self.proxy.end(dbname, payload)

    def stats(self) -> dict:
        return self.proxy.stats()


class ProxyRules:
    """rtbus.bus.authorization.ChannelRules answered by the application."""

    def __init__(self, proxy: AuthProxy, max_channels: int):
        self.proxy = proxy
        self.max_channels = int(max_channels)

    def authorize(self, session: Session, requested: Any) -> Subscription:
        """The application's Subscription for `requested` (InvalidSubscription for a list of the
        wrong shape or size, SessionExpired when the application refuses the session,
        AuthProxyUnavailable when it cannot answer)."""
        names = tuple(sorted(set(check_channel_list(requested, self.max_channels))))
        forwarded = session.forwarded_cookies
        grant = self.proxy.grant(session.dbname, session.sid, names, forwarded)
        if not grant.valid:
            raise SessionExpired("session expired")
        return Subscription(session.dbname, grant.channels, _presence_partners(grant.channels),
                            dropped=(), session=self.proxy.session_for(session.dbname, session.sid,
                                                                       grant, forwarded))

    def describe(self) -> str:
        client = self.proxy.client
        return (f"channel policy: the application at {client.base_url} decides (answers kept "
                f"{self.proxy.ttl:.0f} s, timeout {client.timeout:.1f} s, at most "
                f"{self.max_channels} channels per request)")


def _presence_partners(encoded: tuple[str, ...]) -> tuple[int, ...]:
    """Partner ids of the presence channels among `encoded` ([db, "res.partner", id, "presence"])."""
    ids = set()
    for text in encoded:
        if "presence" not in text:
            continue
        channel = bus_channels.decode(text)
        if len(channel) == 4 and channel[1] == "res.partner" and channel[3] == "presence":
            ids.add(channel[2])
    return tuple(sorted(ids))

