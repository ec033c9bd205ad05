"""The parts one rtbus process runs with, built once at its start and passed explicitly.

`build(config, role)` makes every part the process's kind has, in dependency order,
and hands each one what it needs: the pool, one `Notifier` (every publish of the
process NOTIFYs through it), the `Publisher`, the session store and channel rules
(or the authorization proxy's), presence, the after-subscribe hooks, the session
followers; in the evented processes also the dispatcher, the held long-polls and
the websocket hub; in a cron worker (or single mode) the cron runner. Nothing is
created later, on first use, or assigned from outside.

`Services.figures()` reads the public ``stats()`` of those parts for the metrics
snapshots and ``/metrics``; it creates nothing.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable

from rtbus.metrics import collect

_logger = logging.getLogger(__name__)

ROLES = ("http", "cron", "gevent", "single")
SUBSCRIBER_ROLES = ("gevent", "single")   # the processes holding websockets and long-polls


@dataclasses.dataclass(eq=False)
class Services:
    """What one process has; `None` for the parts its kind does not run."""

    config: Any
    role: str
    pool: Any
    notifier: Any
    publisher: Any
    origins: Any = None           # the Origin rule of its HTTP routes
    sessions: Any = None
    policy: Any = None            # ChannelRules: the one decision of every transport
    presence: Any = None
    subscribe_hooks: Any = None
    followers: Any = None         # SessionFollowers: told when a session changes
    auth: Any = None              # the AuthBridge, when auth_proxy_url decides
    dispatcher: Any = None
    longpolls: Any = None
    hub: Any = None
    cron: Any = None              # the CronRunner
    cron_pool: Any = None         # single mode's second pool, for its cron greenlet
    snapshots: Any = None         # the SnapshotWriter, when there is a runtime directory
    extra_figures: Callable[[], dict] | None = None

    @property
    def serves_subscribers(self) -> bool:
        return self.role in SUBSCRIBER_ROLES

    def figures(self) -> dict:
        """This process's metric families, from the parts' public ``stats()``."""
        parts = [collect.process_figures(), collect.pool_figures(self.pool, self.cron_pool),
                 collect.notifier_figures(self.notifier)]
        if self.origins is not None:
            parts.append(collect.session_figures(self.origins, self.sessions, self.auth))
        if self.serves_subscribers:
            parts += [collect.hub_figures(self.hub), collect.longpoll_figures(self.longpolls),
                      collect.dispatcher_figures(self.dispatcher)]
        if self.extra_figures is not None:
            parts.append(self.extra_figures())
        return collect.merge(*parts)

    def close(self) -> None:
        """Stop and release every part (the dispatcher first: it reads from the pool)."""
        if self.dispatcher is not None:
            self.dispatcher.stop(timeout=5.0)
        if self.snapshots is not None:
            self.snapshots.remove()
        self.notifier.close()
        if self.auth is not None:
            self.auth.close()
        for pool in (self.pool, self.cron_pool):
            if pool is not None:
                pool.close_all()


def build(config, role: str, *, extra_figures: Callable[[], dict] | None = None,
          snapshot_extra: Callable[[], dict] | None = None) -> Services:
    """Every part a `role` process runs with ("http", "cron", "gevent", "single").

    `extra_figures` adds the process's own families to its snapshots (requests
    served, the edge server's counters); `snapshot_extra` its own snapshot fields.
    Opens no connection: the pools connect on first use, the dispatcher at `start`.
    """
    from rtbus.bus.publish import Notifier, Publisher
    from rtbus.db.budget import pool_size
    from rtbus.db.connect import process_pool

    if role not in ROLES:
        raise ValueError(f"unknown process role {role!r}")
    notifier = Notifier.from_config(config)
    services = Services(config, role, process_pool(config, name=role, maxconn=pool_size(config, role)),
                        notifier, Publisher(notifier), extra_figures=extra_figures)
    if role != "cron":
        _add_web_parts(services)
    if role in SUBSCRIBER_ROLES:
        _add_subscriber_parts(services)
    if role == "cron" or (role == "single" and config.max_cron_threads):
        _add_cron(services)
    if config.runtime_dir:
        from rtbus.metrics.snapshots import SnapshotWriter
        services.snapshots = SnapshotWriter(config.runtime_dir, role, services.figures,
                                            extra=snapshot_extra)
    return services


def _add_web_parts(services: Services) -> None:
    """What the HTTP routes use: sessions, channel rules, presence, hooks, the Origin rule."""
    from rtbus.bus.authorization import AfterSubscribeHooks
    from rtbus.http.origin import OriginPolicy
    from rtbus.session_followers import SessionFollowers

    config = services.config
    services.origins = OriginPolicy.from_config(config, services.role)
    services.followers = SessionFollowers()
    if config.auth_proxy_url:
        from rtbus.auth import AuthBridge
        auth = services.auth = AuthBridge.from_config(config)
        services.sessions, services.policy, services.presence = auth.sessions, auth.rules, auth.presence
        # The application runs its own after-subscribe steps (Odoo's
        # _after_subscribe_data) while it answers the subscription.
        services.subscribe_hooks = AfterSubscribeHooks()
        return
    from rtbus.bus.authorization import ChannelPolicy
    from rtbus.bus.presence import PresenceService, push_missed_presences
    from rtbus.session import SessionStore

    if not services.serves_subscribers:
        # No dispatcher here to hear the rtbus_session NOTIFYs: a cached check could
        # outlive a revocation, so HTTP workers ask every time.
        config = config.replace(session_check_cache_seconds=0)
    services.sessions = SessionStore(services.pool, config)
    services.policy = ChannelPolicy.from_config(services.config)
    services.presence = PresenceService.from_config(services.pool, services.config, services.notifier)
    services.subscribe_hooks = AfterSubscribeHooks([push_missed_presences])


def _add_subscriber_parts(services: Services) -> None:
    """The dispatcher, the long-polls and the websocket hub of an evented process."""
    from rtbus.bus.dispatch import ImDispatch
    from rtbus.bus.poll import LongPolls
    from rtbus.bus.presence import PRESENCE_NOTIFY_CHANNEL
    from rtbus.session import NOTIFY_CHANNEL
    from rtbus.websocket.hub import Hub, WebsocketSettings

    config = services.config
    services.dispatcher = ImDispatch.from_config(config)
    services.dispatcher.listen(NOTIFY_CHANNEL, _session_changed(services))
    services.dispatcher.listen(PRESENCE_NOTIFY_CHANNEL, services.presence.on_presence_notify)
    services.longpolls = LongPolls.from_config(services.dispatcher, config)
    services.hub = Hub(WebsocketSettings.from_config(config), dispatcher=services.dispatcher,
                       sessions=services.sessions, policy=services.policy,
                       hooks=services.subscribe_hooks, pool=services.pool,
                       presence=services.presence, followers=services.followers,
                       notifier=services.notifier)
    _logger.info("%s", services.policy.describe())


def _session_changed(services: Services) -> Callable[[str, str], None]:
    def on_session_notify(dbname: str, payload: str) -> None:
        # The dispatcher's greenlet: the cache first, then the open sockets and held
        # long-polls concerned (they only queue their re-checks here).
        services.sessions.on_session_notify(dbname, payload)
        services.followers.changed(dbname, payload)
    return on_session_notify


def _add_cron(services: Services) -> None:
    from rtbus.db.budget import pool_size
    from rtbus.db.connect import process_pool, served_databases
    from rtbus.service.cron import CronRunner, bus_jobs

    config = services.config
    pool = services.pool
    if services.role != "cron":
        pool = services.cron_pool = process_pool(config, name="cron", maxconn=pool_size(config, "cron"))
    services.cron = CronRunner(pool, served_databases(config), bus_jobs(config, services.notifier))
