"""The authorization proxy: the application behind ``auth_proxy_url`` decides.

rtbus serves another application's users. By default it reads their sessions from
``rtbus_session`` and applies its own channel rules (rtbus.bus.authorization). With
``auth_proxy_url`` set, it asks the application instead, as Centrifugo's connect and
subscribe proxies do, so that rules spread over the application's modules (Odoo's
``ir.websocket`` overrides) apply unchanged. The contract, over HTTP, signed with
``auth_proxy_secret`` (rtbus.auth.client):

``POST <url>/subscribe`` at each websocket subscribe, long-poll and peek, and to
re-check an open connection's session every ``auth_proxy_cache_seconds``:

    request  {"db": "mydb", "cookies": {"session_id": "<sid>", "dgid": ...}, "channels": [...]}
             (the same cookies in the Cookie header; no cookie: a visitor)
    answer   {"valid": true, "uid": 2 | null, "partner_id": 3 | null,
              "channels": ["broadcast", ["res.partner", 3], ["res.partner", 7, "presence"]]}
             or {"valid": false} when the session ended (close 4001, JSON-RPC error 100)

Channels are answered unanchored, as the application names them; rtbus anchors them
to the database (rtbus.bus.channels). Only session_id and the cookies named by
``auth_proxy_cookies`` are forwarded, and answers are cached per session_id, those
cookies' values and the channel list: they must not depend on anything else.

``POST <url>/events`` receives presence updates and closes in batches (rtbus.auth.events).

The application ends a session with ``NOTIFY rtbus_session, '<first 16 characters of
the sid>'`` in the served database; rtbus closes its sockets with 4001 at once.

Modules: client (pooled, signed HTTP), grants (answers, TTL cache, single-flight),
proxy (AuthProxy: calls, ended sessions, figures), sessions (the SessionStore and
ChannelRules of such a process), events (forwarding, bounded).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class AuthBridge:
    """What a process uses when the application decides: built once at start-up."""

    proxy: object
    sessions: object
    rules: object
    presence: object
    forwarder: object

    @classmethod
    def from_config(cls, config) -> AuthBridge:
        from rtbus.auth.client import ProxyClient
        from rtbus.auth.events import EventForwarder, ForwardingPresence
        from rtbus.auth.proxy import AuthProxy
        from rtbus.auth.sessions import ProxyRules, ProxySessions

        proxy = AuthProxy.from_config(config)
        forwarder = EventForwarder(ProxyClient.from_config(config), config.auth_proxy_event_queue)
        return cls(proxy=proxy, sessions=ProxySessions(proxy, config.auth_proxy_cookies),
                   rules=ProxyRules(proxy, config.max_channels_per_subscription),
                   presence=ForwardingPresence(forwarder), forwarder=forwarder)

    def stats(self) -> dict:
        """The proxy's counters (AuthProxy.stats), its call ``latency`` histogram and the
        forwarded ``events`` (EventForwarder.stats)."""
        return {**self.proxy.stats(), "latency": self.proxy.latency.snapshot(),
                "events": self.forwarder.stats()}

    def close(self) -> None:
        self.forwarder.stop()
        self.proxy.client.close()
