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


def session_figures(origins, sessions=None, auth=None) -> dict:
    """The Origin rule's refusals and the session checks (or the authorization proxy's)."""
    figures = {"rtbus_cross_origin_requests_total": origins.stats()}
    if auth is not None:
        return {**figures, **auth_proxy_figures(auth)}
    if sessions is not None:
        stats = sessions.stats()
        figures["rtbus_session_lookups_total"] = stats["lookups"]
        figures["rtbus_session_refusals_total"] = {
            "invalid": stats["refused"], "forged": stats["forged"], "over_budget": stats["over_budget"]}
    return figures


def auth_proxy_figures(auth) -> dict:
    """The calls, cache and events of an AuthBridge (rtbus.auth)."""
    stats = auth.stats()
    events = stats["events"]
    return {
        "rtbus_auth_proxy_calls_total": stats["calls"],
        "rtbus_auth_proxy_cache_total": {"hit": stats["hits"], "joined": stats["joined"],
                                         "ended": stats["ended_refusals"]},
        "rtbus_auth_proxy_errors_total": stats["errors"],
        "rtbus_auth_proxy_refusals_total": stats["refusals"],
        "rtbus_auth_proxy_cached_answers": stats["cached"],
        "rtbus_auth_proxy_latency_seconds": stats["latency"],
        "rtbus_auth_proxy_events_total": {"sent": events["sent"], "dropped": events["dropped"],
                                          "failed": events["failed"]},
    }


def hub_figures(hub) -> dict:
    """The websocket hub's gauges and counters, and the delivery latency histogram."""
    if hub is None:
        return {}
    stats = hub.stats()
    return {
        "rtbus_websockets_open": stats["open"],
        "rtbus_websockets_opened_total": stats.get("opened", 0),
        "rtbus_websocket_subscriptions_total": stats.get("subscriptions", 0),
        "rtbus_websocket_reauthorizations_total": stats.get("reauthorizations", 0),
        "rtbus_websocket_closes_total": {str(code): count for code, count in stats["closes"].items()},
        "rtbus_websocket_batches_sent_total": stats.get("batches_sent", 0),
        "rtbus_websocket_batches_written_through_total": stats.get("batches_written_through", 0),
        "rtbus_websocket_batches_compressed_total": stats.get("batches_compressed", 0),
        "rtbus_websocket_batch_bytes_sent_total": stats.get("batch_bytes_sent", 0),
        "rtbus_websocket_deflate_negotiated_total": stats.get("deflate_negotiated", 0),
        "rtbus_websocket_receive_budget_bytes": stats["receive_budget_used"],
        "rtbus_websocket_receive_budget_refusals_total": stats["receive_budget_refusals"],
        "rtbus_slow_consumers_dropped_total": stats.get("slow_consumers", 0),
        "rtbus_rate_limit_closes_total": stats.get("rate_limited", 0),
        "rtbus_delivery_latency_seconds": stats["latency"],
    }


def longpoll_figures(longpolls) -> dict:
    """The long-polls an evented process holds and how they ended."""
    if longpolls is None:
        return {}
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


def notifier_figures(notifier) -> dict:
    """The after-commit NOTIFYs of the process's Notifier (rtbus.bus.publish)."""
    stats = notifier.stats()
    return {"rtbus_notify_payloads_total": stats["notifies"],
            "rtbus_notify_splits_total": stats["splits"],
            "rtbus_notify_errors_total": stats["errors"]}


def master_figures(master) -> dict:
    counts: dict[str, int] = {"http": 0, "gevent": 0, "cron": 0}
    for child in master.children.values():
        counts[child.kind] = counts.get(child.kind, 0) + 1
    return {
        "rtbus_children": counts,
        "rtbus_worker_restarts_total": dict(master.restarts),
        "rtbus_master_generation": master.generation,
    }


def edge_figures(edge) -> dict:
    """The evented port's caps and deadlines (rtbus.websocket.pywsgi_edge.EdgeServer)."""
    if edge is None:
        return {}
    stats = edge.stats()
    return {"rtbus_edge_connections": stats["connections"],
            "rtbus_edge_refusals_total": {**stats["refused"], "head_too_large": stats["heads_too_large"]},
            "rtbus_edge_deadlines_passed_total": stats["expired"]}
