"""Figures of one process, read from its live objects, as ``{family name: value}``.

Each function reads one kind of object and returns the families it feeds; a
process merges those of the objects it has (`merge`). Reading is cheap (plain
counters) and never touches the database.
"""

from __future__ import annotations

from rtbus.service import process


def merge(*parts: dict) -> dict:
    """Merge family dicts; labelled values of the same family are combined."""
    merged: dict = {}
    for part in parts:
        for name, value in part.items():
            if isinstance(value, dict) and "buckets" not in value and isinstance(merged.get(name), dict):
                merged[name] = {**merged[name], **value}
            else:
                merged[name] = value
    return merged


def process_figures() -> dict:
    return {
        "rtbus_process_resident_memory_bytes": process.resident_memory(),
        "rtbus_process_virtual_memory_bytes": process.virtual_memory(),
    }


def pool_figures(*pools) -> dict:
    """Families of the connection pools given (None entries are skipped), labelled by pool name."""
    figures: dict = {}
    for pool in pools:
        if pool is None:
            continue
        stats = pool.stats()
        name = stats["name"]
        for family, key in (("rtbus_pool_connections_in_use", "in_use"),
                            ("rtbus_pool_connections_idle", "idle"),
                            ("rtbus_pool_connections_max", "maxconn"),
                            ("rtbus_pool_waiting", "waiting"),
                            ("rtbus_pool_waits_total", "waits"),
                            ("rtbus_pool_wait_seconds_total", "wait_seconds_total"),
                            ("rtbus_pool_errors_total", "pool_errors"),
                            ("rtbus_pool_connects_total", "connects"),
                            ("rtbus_pool_dead_connections_total", "dead")):
            figures.setdefault(family, {})[name] = stats[key]
    return figures


def session_figures(app) -> dict:
    """The session checks and the Origin rule of a process's Application."""
    if app is None:
        return {}
    figures = {"rtbus_cross_origin_requests_total": dict(app.origins.counters)}
    auth = getattr(app, "auth", None)
    if auth is not None:
        return {**figures, **auth_proxy_figures(auth)}
    sessions = getattr(app, "_sessions", None)     # never created here
    if sessions is not None:
        stats = sessions.stats()
        figures["rtbus_session_lookups_total"] = stats["lookups"]
        figures["rtbus_session_refusals_total"] = {
            "invalid": stats["refused"], "forged": stats["forged"], "over_budget": stats["over_budget"]}
    return figures


def auth_proxy_figures(auth) -> dict:
    """The calls, cache and events of an AuthBridge (rtbus.auth)."""
    stats = auth.proxy.stats()
    events = auth.forwarder.counters
    return {
        "rtbus_auth_proxy_calls_total": stats["calls"],
        "rtbus_auth_proxy_cache_total": {"hit": stats["hits"], "joined": stats["joined"],
                                         "ended": stats["ended_refusals"]},
        "rtbus_auth_proxy_errors_total": stats["errors"],
        "rtbus_auth_proxy_refusals_total": stats["refusals"],
        "rtbus_auth_proxy_cached_answers": stats["cached"],
        "rtbus_auth_proxy_latency_seconds": auth.proxy.latency.snapshot(),
        "rtbus_auth_proxy_events_total": {"sent": events["sent"], "dropped": events["dropped"],
                                          "failed": events["failed"]},
    }


def hub_figures(hub) -> dict:
    """The websocket hub's gauges and counters, and the delivery latency histogram."""
    if hub is None:
        return {}
    counters = hub.counters
    figures = {
        "rtbus_websockets_open": len(hub.connections),
        "rtbus_websockets_opened_total": counters["opened"],
        "rtbus_websocket_subscriptions_total": counters["subscriptions"],
        "rtbus_websocket_reauthorizations_total": counters["reauthorizations"],
        "rtbus_websocket_closes_total": {str(code): count for code, count in hub.closes.items()},
        "rtbus_websocket_batches_sent_total": counters["batches_sent"],
        "rtbus_websocket_batches_written_through_total": counters["batches_written_through"],
        "rtbus_websocket_batches_compressed_total": counters["batches_compressed"],
        "rtbus_websocket_batch_bytes_sent_total": counters["batch_bytes_sent"],
        "rtbus_websocket_deflate_negotiated_total": counters["deflate_negotiated"],
        "rtbus_websocket_receive_budget_bytes": hub.receive_budget.used,
        "rtbus_websocket_receive_budget_refusals_total": hub.receive_budget.refusals,
        "rtbus_slow_consumers_dropped_total": counters["slow_consumers"],
        "rtbus_rate_limit_closes_total": counters["rate_limited"],
    }
    latency = getattr(hub, "latency", None)
    if latency is not None:
        figures["rtbus_delivery_latency_seconds"] = latency.snapshot()
    return figures


def longpoll_figures(app) -> dict:
    """The long-polls of an evented process, once it has served one (never created here)."""
    longpolls = getattr(app, "_longpolls", None)
    if longpolls is None:
        return {"rtbus_longpolls_open": 0} if app is not None and app.serves_subscribers else {}
    stats = longpolls.stats()
    outcomes = {key: stats[key] for key in ("delivered", "timeout", "left", "stopped", "failed")
                if key in stats}
    return {"rtbus_longpolls_open": stats["held"],
            "rtbus_longpolls_total": outcomes,
            "rtbus_longpolls_refused_total": stats.get("refused", 0)}


def dispatcher_figures(dispatcher) -> dict:
    if dispatcher is None:
        return {}
    stats = dispatcher.stats()
    return {
        "rtbus_dispatch_subscribers": stats["subscribers"],
        "rtbus_dispatch_channels": stats["channels"],
        "rtbus_dispatch_notifies_total": stats["notifies"],
        "rtbus_dispatch_queries_total": stats["queries"],
        "rtbus_dispatch_rows_fetched_total": stats["rows_fetched"],
        "rtbus_notifications_dispatched_total": stats["deliveries"],
        "rtbus_dispatch_batches_encoded_total": stats["batches_encoded"],
        "rtbus_mailbox_overflows_total": stats["overflows"],
        "rtbus_dispatch_regressions_total": stats["regressions"],
        "rtbus_dispatch_catchups": stats["catchups"],
        "rtbus_listen_connections": stats["listen_connections"],
        "rtbus_listen_outage": int(bool(stats["outage"])),
        "rtbus_listen_reconnects_total": stats["listen_reconnects"],
    }


def notifier_figures(*notifiers) -> dict:
    """Sums over the distinct notifiers of the process (the default one, the publisher's)."""
    seen: dict[int, object] = {}
    for notifier in notifiers:
        if notifier is not None:
            seen[id(notifier)] = notifier
    if not seen:
        return {}
    totals = {"notifies": 0, "splits": 0, "errors": 0}
    for notifier in seen.values():
        for key in totals:
            totals[key] += notifier.counters.get(key, 0)
    return {"rtbus_notify_payloads_total": totals["notifies"],
            "rtbus_notify_splits_total": totals["splits"],
            "rtbus_notify_errors_total": totals["errors"]}


def app_notifiers(app) -> tuple:
    """The notifiers a process's Application may have used: the default one and its publisher's."""
    from rtbus.bus.publish import default_notifier

    publisher = getattr(app, "_publisher", None) if app is not None else None
    return (default_notifier(), publisher.notifier if publisher is not None else None)


def master_figures(master) -> dict:
    counts: dict[str, int] = {"http": 0, "gevent": 0, "cron": 0}
    for child in master.children.values():
        counts[child.kind] = counts.get(child.kind, 0) + 1
    return {
        "rtbus_children": counts,
        "rtbus_worker_restarts_total": dict(master.restarts),
        "rtbus_master_generation": master.generation,
    }


def evented_figures(server) -> dict:
    """Everything an evented process (gevent or single) has."""
    app = server.app
    return merge(process_figures(),
                 pool_figures(server.pool, getattr(server, "cron_pool", None)),
                 hub_figures(server.hub), longpoll_figures(app),
                 dispatcher_figures(server.dispatcher), notifier_figures(*app_notifiers(app)),
                 session_figures(app), edge_figures(server.server))


def edge_figures(edge) -> dict:
    """The evented port's caps and deadlines (rtbus.websocket.pywsgi_edge.EdgeServer)."""
    if edge is None:
        return {}
    stats = edge.stats()
    return {"rtbus_edge_connections": stats["connections"],
            "rtbus_edge_refusals_total": {**stats["refused"], "head_too_large": stats["heads_too_large"]},
            "rtbus_edge_deadlines_passed_total": stats["expired"]}


def worker_figures(pool, app=None, requests: int | None = None) -> dict:
    """Everything an HTTP or cron worker has."""
    figures = merge(process_figures(), pool_figures(pool), notifier_figures(*app_notifiers(app)),
                    session_figures(app))
    if requests is not None:
        figures["rtbus_http_requests_total"] = requests
    return figures
