"""Which channels a session may listen to: the client's list in, a Subscription out.

One decision serves `/websocket` subscribe, `/longpolling/poll` and
`/websocket/peek_notifications`: `authorize(session, requested, rules)`, which asks
`rules.authorize(session, requested)`. `ChannelPolicy` is rtbus's rule set, built from
the configuration; anything with the same `authorize` and `describe` methods (the
`ChannelRules` protocol, e.g. a proxy asking an Odoo server) can take its place in
`Application.policy` without touching the transports.

The rules of `ChannelPolicy`, by default those of Odoo 19's
`ir.websocket._build_bus_channel_list` and of its `mail` override:

* The list holds strings only (else InvalidSubscription "bus.Bus only string channels are
  allowed.", Odoo's message) and at most `max_channels` of them; each, anchored to the
  database, must encode within channels.MAX_ENCODED_CHANNEL_BYTES. A request breaking
  these rules is refused whole (InvalidSubscription): the transport logs it and keeps the
  connection, as Odoo does.
* A client string `s` becomes the channel `[db, s]`, whoever asks: a public visitor
  (no cookie, or a stored session without a user) as much as a signed-in user. String
  channels are protected by unguessable names, as in Odoo.
* Lock-down, optional: a string name must match one of the fnmatch patterns of
  `channel_allowlist` (every session; empty allows any) and, for a session without a
  user, one of `public_channels` (default `*`). Patterns are case-sensitive. A name a
  rule refuses is dropped, never an error: the subscription goes on with the others.
* A client string can never equal a record channel: the encoded form is the JSON text
  of a list, a client string always yields a list of exactly two strings (quotes,
  brackets and commas inside `s` are escaped by JSON), while record channels have three
  or four elements with an integer in third place (`[db, "res.partner", 7]`). So a
  client asking for `'res.partner", 7'` or `'["db","res.partner",7]'` just gets a
  harmless string channel nobody publishes on. Record channels (partners, groups,
  presence) are decided by the server only.
* Presence: `odoo-presence-res.partner_<id>` asks for the partner's presence subchannel
  `[db, "res.partner", <id>, "presence"]`; the name itself never becomes a string
  channel. Odoo 19 (`mail`'s `_prepare_subscribe_data`) grants it when the viewer may
  read the partner (record rules), is that partner, or presents the partner's
  limited-field access token (scope `mail.presence`, the `-<token>` suffix). rtbus knows
  neither Odoo's record rules nor its token secret, so it keeps the part it can decide:
  any signed-in session may follow any partner's presence (an internal user's right in
  Odoo; presence only says online/away/offline), and public sessions' presence requests
  are dropped, as are `-<token>` names, `mail.guest` presence (rtbus has no guests) and
  ids that are not positive integers. `channel_allowlist` does not apply to presence:
  it is a record channel.
* The server adds `broadcast`, `[db, "res.groups", <id>]` for each *effective* group of
  the session (Odoo 19's all_group_ids; a visitor without a cookie has none, where Odoo
  would add base.group_public) and the user's partner `[db, "res.partner", <partner_id>]`
  when a user is signed in.

When ``auth_proxy_url`` is set, rtbus.auth.sessions.ProxyRules takes the place of
`ChannelPolicy`: the application answers who the session is and which channels it
may hear (the shape and count rules above still apply to the request first).

`AfterSubscribeHooks` is the extension point run once after a subscription is
established (Odoo 19's `_after_subscribe_data`); presence registers one that pushes the
presences that changed just before the subscription.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import orjson

from rtbus.bus import channels as bus_channels
from rtbus.errors import InvalidSubscription
from rtbus.session import Session

_logger = logging.getLogger(__name__)

BROADCAST = "broadcast"
PRESENCE_PREFIX = "odoo-presence-"
NON_STRING_CHANNEL = "bus.Bus only string channels are allowed."
DEFAULT_MAX_CHANNELS = 1000
ANY_NAME = ("*",)     # the default of public_channels: Odoo's rule

# Ids up to 2**31 - 1 (PostgreSQL integer): ten digits at most, no leading zero.
_PRESENCE_CHANNEL = re.compile(r"odoo-presence-res\.partner_([1-9][0-9]{0,9})")
_MAX_RECORD_ID = 2**31 - 1


class ChannelRules(Protocol):
    """What decides the channels of a subscription: ChannelPolicy, or a replacement."""

    def authorize(self, session: Session, requested: Any) -> Subscription:
        """The Subscription of `session` (uid, partner, effective groups, database) for
        the client's `requested` channels. Raises InvalidSubscription for a request refused
        whole (shape, count, size); drops, without error, names the session may not have."""

    def describe(self) -> str:
        """The rules in one line, for the start-up log."""


@dataclasses.dataclass(frozen=True)
class Subscription:
    """What a session listens to, ready for ImDispatch.subscribe(key, dbname, channels, ...).

    `channels`: encoded channels, sorted and unique. `presence_partner_ids`: partners
    whose presence was requested and granted, sorted. `dropped`: client channel names
    refused by the rules (for debugging; never an error). `session`: who the rules
    found the session to be, when they decide that too (rtbus.auth's proxy asks the
    application); None: the session the transport passed in, unchanged.
    """

    dbname: str
    channels: tuple[str, ...]
    presence_partner_ids: tuple[int, ...] = ()
    dropped: tuple[str, ...] = ()
    session: Session | None = None

    def session_or(self, session: Session) -> Session:
        """The session the subscription runs as: the rules' finding, else `session`."""
        return self.session if self.session is not None else session

    def anchored_channels(self) -> list[list]:
        """The channels as anchored lists, as peek_notifications answers them."""
        return [orjson.loads(channel) for channel in self.channels]


@dataclasses.dataclass(frozen=True)
class ChannelPolicy:
    """rtbus's channel rules (see the module docstring) and their configurable part.

    `allowlist`: fnmatch patterns every requested string name must match (empty: any).
    `public_channels`: patterns a name requested by a session without a user must match
    too (`*`: any, Odoo's rule; empty: none besides broadcast).
    """

    max_channels: int = DEFAULT_MAX_CHANNELS
    allowlist: tuple[str, ...] = ()
    public_channels: tuple[str, ...] = ANY_NAME

    @classmethod
    def from_config(cls, config) -> ChannelPolicy:
        return cls(max_channels=config.max_channels_per_subscription,
                   allowlist=tuple(config.channel_allowlist),
                   public_channels=tuple(config.public_channels))

    @property
    def is_odoo_default(self) -> bool:
        """True when no lock-down is configured: any string channel for every session."""
        return not self.allowlist and _matches_anything(self.public_channels)

    def allows_name(self, session: Session, name: str) -> bool:
        """Whether `session` may listen to the string channel `name` (not a presence name)."""
        if name == BROADCAST:
            return True
        if self.allowlist and not _matcher(self.allowlist)(name):
            return False
        return not session.is_public or _matcher(self.public_channels)(name)

    def authorize(self, session: Session, requested: Any) -> Subscription:
        """Apply the rules of this module to the client's `requested` channels.

        Returns the Subscription of `session` in its database. Raises InvalidSubscription
        (channels.InvalidChannel for a channel too long or not encodable) when the
        request breaks the rules on shape, count or size; drops, without error, channels
        the session may not listen to.
        """
        names = check_channel_list(requested, self.max_channels)
        db = session.dbname
        encoded: set[str] = set()
        presence_ids: set[int] = set()
        dropped: list[str] = []
        for name in names:
            if name.startswith(PRESENCE_PREFIX):
                partner_id = parse_presence_channel(name)
                if partner_id is None or session.is_public:
                    dropped.append(name)
                    continue
                presence_ids.add(partner_id)
                encoded.add(_encode(db, ("res.partner", partner_id, "presence")))
                continue
            # Encoding first: an oversized or unencodable name refuses the request even
            # when the policy would have dropped it, so the outcome does not depend on policy.
            channel = _encode(db, name)
            if self.allows_name(session, name):
                encoded.add(channel)
            else:
                dropped.append(name)
        for channel in server_channels(session):
            encoded.add(_encode(db, channel))
        if dropped:
            _logger.debug("dropped %d channel(s) not allowed to %r: %s", len(dropped), session,
                         ", ".join(repr(name[:80]) for name in dropped[:10]))
        return Subscription(db, tuple(sorted(encoded)), tuple(sorted(presence_ids)), tuple(dropped))

    def describe(self) -> str:
        """One line for the start-up log: who may listen to which string channels."""
        if _matches_anything(self.public_channels):
            public = "any string channel (public_channels = *)"
        elif self.public_channels:
            public = f"names matching {', '.join(self.public_channels)} (public_channels)"
        else:
            public = "broadcast only (public_channels empty)"
        every = (f"only names matching {', '.join(self.allowlist)} (channel_allowlist)"
                 if self.allowlist else "any name (channel_allowlist empty)")
        kind = "Odoo 19's rule" if self.is_odoo_default else "locked down"
        return (f"channel policy, {kind}: sessions without a user may listen to {public}; "
                f"every session to {every}; presence for signed-in sessions only; at most "
                f"{self.max_channels} channels per request")


def check_channel_list(requested: Any, max_channels: int) -> list[str]:
    """Validate the shape of a client's channel list; return it as a list of str.

    Raises InvalidSubscription when it is not a list, holds a non-string (Odoo's message) or
    has more than `max_channels` entries.
    """
    if not isinstance(requested, (list, tuple)):
        raise InvalidSubscription(
            f"channels must be a list of strings, not {type(requested).__name__}")
    if len(requested) > max_channels:
        raise InvalidSubscription(f"{len(requested)} channels requested, more than the "
                                  f"{max_channels} allowed in one subscription")
    if not all(isinstance(channel, str) for channel in requested):
        raise InvalidSubscription(NON_STRING_CHANNEL)
    return list(requested)


def parse_presence_channel(name: str) -> int | None:
    """The partner id of an `odoo-presence-res.partner_<id>` name, else None."""
    match = _PRESENCE_CHANNEL.fullmatch(name)
    if match is None:
        return None
    partner_id = int(match[1])
    return partner_id if partner_id <= _MAX_RECORD_ID else None


def server_channels(session: Session) -> list:
    """The channels the server adds for `session`, unanchored: broadcast, the user's
    partner (signed-in sessions only) and one per effective group."""
    added: list = [BROADCAST]
    if not session.is_public and session.partner_id is not None:
        added.append(("res.partner", session.partner_id))
    added.extend(("res.groups", group_id) for group_id in session.group_ids)
    return added


def authorize(session: Session, requested: Any, rules: ChannelRules) -> Subscription:
    """The one entry point of every transport: `rules.authorize(session, requested)`.

    `rules` is the process's ChannelPolicy, or whatever replaced it (ChannelRules).
    """
    return rules.authorize(session, requested)


def _matches_anything(patterns: tuple[str, ...]) -> bool:
    return "*" in patterns


@functools.lru_cache(maxsize=64)
def _matcher(patterns: tuple[str, ...]) -> Callable[[str], bool]:
    """One compiled test for a tuple of fnmatch patterns (case-sensitive)."""
    if _matches_anything(patterns):
        return lambda name: True
    if not patterns:
        return lambda name: False
    regex = re.compile("|".join(f"(?:{fnmatch.translate(pattern)})" for pattern in patterns))
    return lambda name: regex.match(name) is not None


def _encode(db: str, channel) -> str:
    try:
        return bus_channels.encode(db, channel)
    except orjson.JSONEncodeError as exc:
        # A lone surrogate ("\ud800") decoded from the client's JSON is not UTF-8.
        raise bus_channels.InvalidChannel(f"channel {channel!r:.80} cannot be encoded") from exc


# -- the after-subscribe extension point ----------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SubscribeContext:
    """What an after-subscribe hook may use.

    `pool`: the process's ConnectionPool. `transport`: "websocket", "longpolling" or "peek".
    `notifier`: the Notifier to publish with (None: the process default).
    `extra`: anything the transport wants to pass on (connection id, remote address).
    """

    pool: Any
    transport: str = "websocket"
    notifier: Any = None
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)


AfterSubscribe = Callable[[Session, Subscription, SubscribeContext], None]


class AfterSubscribeHooks:
    """A registry of `hook(session, subscription, context)` callables, run in
    registration order once a subscription is established (after
    ImDispatch.subscribe, or after the channels of a peek are prepared).

    Created once per process at start-up; presence registers
    `presence.push_missed_presences`, applications their own. A failing hook is
    logged and does not stop the others nor the subscription.
    """

    def __init__(self, hooks: Iterable[AfterSubscribe] = ()):
        self._hooks: list[AfterSubscribe] = list(hooks)

    def register(self, hook: AfterSubscribe) -> AfterSubscribe:
        """Add `hook` (once); returns it, so this works as a decorator."""
        if hook not in self._hooks:
            self._hooks.append(hook)
        return hook

    def unregister(self, hook: AfterSubscribe) -> None:
        if hook in self._hooks:
            self._hooks.remove(hook)

    def __len__(self) -> int:
        return len(self._hooks)

    def run(self, session: Session, subscription: Subscription,
            context: SubscribeContext) -> int:
        """Call every hook; return how many raised (each is logged with its traceback)."""
        failures = 0
        for hook in list(self._hooks):
            try:
                hook(session, subscription, context)
            except Exception:
                failures += 1
                _logger.exception("after-subscribe hook %s failed for %r (%d channels)",
                                 getattr(hook, "__qualname__", hook), session,
                                 len(subscription.channels))
        return failures
