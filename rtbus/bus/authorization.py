"""Which channels a session may listen to: the client's list in, a Subscription out.

The rules, applied to the `channels` of a `subscribe` message, of a
`peek_notifications` call or of a poll:

* The list holds strings only (else ValueError "bus.Bus only string channels are
  allowed.", Odoo's message) and at most `max_channels` of them; each, anchored to the
  database, must encode within channels.MAX_ENCODED_CHANNEL_BYTES. A request breaking
  these rules is refused whole (ValueError): the transport logs it and keeps the
  connection, as Odoo does.
* A client string `s` becomes the channel `[db, s]`. It can never equal a record
  channel: the encoded form is the JSON text of a list, a client string always yields
  a list of exactly two strings (quotes, brackets and commas inside `s` are escaped
  by JSON), while record channels have three or four elements with an integer in
  third place (`[db, "res.partner", 7]`). So a client asking for
  `'res.partner", 7'` or `'["db","res.partner",7]'` just gets a harmless string
  channel nobody publishes on. String channels follow Odoo's unguessable-name model;
  `channel_allowlist` (fnmatch patterns) can restrict them further.
* Public sessions (no user) keep only `broadcast` and the configured
  `public_channels` (exact names); other names are dropped, not an error.
* Presence: `odoo-presence-res.partner_<id>` asks for the partner's presence
  subchannel `[db, "res.partner", <id>, "presence"]`. Rule: any signed-in (non-public)
  session may follow any partner's presence, which is Odoo 17/18's rule for internal
  users (rtbus does not know which users are internal; presence only says
  online/away/offline). Public sessions' presence requests, other `odoo-presence-`
  names (guests, access tokens) and ids that are not positive integers are dropped.
* The server adds `broadcast`, the user's partner `[db, "res.partner", <partner_id>]`
  (signed-in sessions only, as Odoo 17+) and `[db, "res.groups", <id>]` for each
  *effective* group of the session (Odoo 19's all_group_ids).

`AfterSubscribeHooks` is the extension point run once after a subscription is
established (Odoo 19's `_after_subscribe_data`); presence registers one that pushes the
presences that changed just before the subscription.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orjson

from rtbus.bus import channels as bus_channels
from rtbus.session import Session

logger = logging.getLogger("rtbus.bus.authorization")

BROADCAST = "broadcast"
PRESENCE_PREFIX = "odoo-presence-"
NON_STRING_CHANNEL = "bus.Bus only string channels are allowed."
DEFAULT_MAX_CHANNELS = 1000

# Ids up to 2**31 - 1 (PostgreSQL integer): ten digits at most, no leading zero.
_PRESENCE_CHANNEL = re.compile(r"odoo-presence-res\.partner_([1-9][0-9]{0,9})")
_MAX_RECORD_ID = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class ChannelPolicy:
    """The configurable part of the rules (see the module docstring)."""

    max_channels: int = DEFAULT_MAX_CHANNELS
    allowlist: tuple[str, ...] = ()
    public_channels: frozenset[str] = frozenset()

    @classmethod
    def from_config(cls, config) -> ChannelPolicy:
        return cls(max_channels=config.max_channels_per_subscription,
                   allowlist=tuple(config.channel_allowlist),
                   public_channels=frozenset(config.public_channels))

    def allows_name(self, name: str) -> bool:
        """Whether a signed-in client may listen to string channel `name`."""
        return not self.allowlist or any(fnmatch.fnmatchcase(name, pattern)
                                         for pattern in self.allowlist)


@dataclasses.dataclass(frozen=True)
class Subscription:
    """What a session listens to, ready for ImDispatch.subscribe(key, dbname, channels, ...).

    `channels`: encoded channels, sorted and unique. `presence_partner_ids`: partners
    whose presence was requested and granted, sorted. `dropped`: client channel names
    refused by the rules (for debugging; never an error).
    """

    dbname: str
    channels: tuple[str, ...]
    presence_partner_ids: tuple[int, ...] = ()
    dropped: tuple[str, ...] = ()

    def anchored_channels(self) -> list[list]:
        """The channels as anchored lists, as peek_notifications answers them."""
        return [orjson.loads(channel) for channel in self.channels]


def check_channel_list(requested: Any, max_channels: int) -> list[str]:
    """Validate the shape of a client's channel list; return it as a list of str.

    Raises ValueError when it is not a list, holds a non-string (Odoo's message) or
    has more than `max_channels` entries.
    """
    if not isinstance(requested, (list, tuple)):
        raise ValueError(f"channels must be a list of strings, not {type(requested).__name__}")
    if len(requested) > max_channels:
        raise ValueError(f"{len(requested)} channels requested, more than the "
                         f"{max_channels} allowed in one subscription")
    if not all(isinstance(channel, str) for channel in requested):
        raise ValueError(NON_STRING_CHANNEL)
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


def authorize(session: Session, requested: Any, policy: ChannelPolicy) -> Subscription:
    """Apply the rules of this module to the client's `requested` channels.

    Returns the Subscription of `session` in its database. Raises ValueError
    (channels.InvalidChannel for a channel too long or not encodable) when the
    request breaks the rules on shape, count or size; drops, without error, channels
    the session may not listen to.
    """
    names = check_channel_list(requested, policy.max_channels)
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
        if _name_allowed(session, name, policy):
            encoded.add(channel)
        else:
            dropped.append(name)
    for channel in server_channels(session):
        encoded.add(_encode(db, channel))
    if dropped:
        logger.debug("dropped %d channel(s) not allowed to %r: %s", len(dropped), session,
                     ", ".join(repr(name[:80]) for name in dropped[:10]))
    return Subscription(db, tuple(sorted(encoded)), tuple(sorted(presence_ids)), tuple(dropped))


def _name_allowed(session: Session, name: str, policy: ChannelPolicy) -> bool:
    if name == BROADCAST:
        return True
    if session.is_public:
        return name in policy.public_channels
    return policy.allows_name(name)


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
                logger.exception("after-subscribe hook %s failed for %r (%d channels)",
                                 getattr(hook, "__qualname__", hook), session,
                                 len(subscription.channels))
        return failures
