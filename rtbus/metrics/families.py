"""Every metric rtbus exports, declared once: name, type, help, and its own label if any.

Every sample also carries ``process`` (``<kind>-<pid>``) and ``kind``; the
`label` of a family is the one extra dimension it has (pool name, close code,
restart reason...). Snapshots hold, per family, a number (no label), a mapping
label value → number, or a histogram snapshot.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Family:
    name: str
    type: str            # counter, gauge or histogram
    help: str
    label: str | None = None


_FAMILIES = (
    # -- every process ------------------------------------------------------------------
    Family("rtbus_process_start_time_seconds", "gauge",
           "Start time of the process since the Unix epoch."),
    Family("rtbus_process_resident_memory_bytes", "gauge", "Resident memory of the process."),
    Family("rtbus_process_virtual_memory_bytes", "gauge",
           "Virtual memory of the process (what limit_memory_soft is compared with)."),
    Family("rtbus_http_requests_total", "counter", "HTTP requests served by an HTTP worker."),
    # -- connection pools ---------------------------------------------------------------
    Family("rtbus_pool_connections_in_use", "gauge", "Pooled connections lent out.", "pool"),
    Family("rtbus_pool_connections_idle", "gauge", "Pooled connections idle.", "pool"),
    Family("rtbus_pool_connections_max", "gauge", "Size of the pool.", "pool"),
    Family("rtbus_pool_waiting", "gauge", "Borrowers waiting for a pooled connection.", "pool"),
    Family("rtbus_pool_waits_total", "counter",
           "Borrows that had to wait because the pool was full.", "pool"),
    Family("rtbus_pool_wait_seconds_total", "counter", "Time spent waiting for a pooled connection.",
           "pool"),
    Family("rtbus_pool_errors_total", "counter",
           "PoolErrors: borrowers that got no connection in time (HTTP 503, close 1013).", "pool"),
    Family("rtbus_pool_connects_total", "counter", "New PostgreSQL connections opened by the pool.",
           "pool"),
    Family("rtbus_pool_dead_connections_total", "counter",
           "Idle pooled connections found dead when lent (their server vanished or ended the "
           "session) and replaced.", "pool"),
    # -- the authorization proxy (auth_proxy_url) ---------------------------------------
    Family("rtbus_auth_proxy_calls_total", "counter",
           "Calls to the application's subscribe route (cache misses and re-checks)."),
    Family("rtbus_auth_proxy_cache_total", "counter",
           "Subscriptions answered without a call, by how: hit (a fresh answer), joined (waited "
           "for the same call in flight: single-flight), ended (refused unasked: the session's "
           "end was signalled after its last answer).",
           "result"),
    Family("rtbus_auth_proxy_errors_total", "counter",
           "Calls that failed (timeout, refused, HTTP error, unreadable answer): close 1013, "
           "JSON-RPC error."),
    Family("rtbus_auth_proxy_refusals_total", "counter",
           "Answers saying the session ended (close 4001, JSON-RPC error 100)."),
    Family("rtbus_auth_proxy_cached_answers", "gauge", "Answers of the application kept."),
    Family("rtbus_auth_proxy_latency_seconds", "histogram",
           "Time of one call to the application's subscribe route."),
    Family("rtbus_auth_proxy_events_total", "counter",
           "Presence and close events for the application, by outcome: sent, dropped (the queue "
           "was full), failed (the batch could not be delivered).", "outcome"),
    # -- sessions and origins -----------------------------------------------------------
    Family("rtbus_session_lookups_total", "counter", "Session checks that queried the database."),
    Family("rtbus_session_refusals_total", "counter",
           "Session ids refused, by reason: invalid (malformed, or no valid session), forged "
           "(an rtbus sid with a wrong MAC; no query), over_budget (the client's look-up budget "
           "was spent; no query).", "reason"),
    Family("rtbus_cross_origin_requests_total", "counter",
           "Requests from a foreign Origin carrying the session cookie, by outcome: downgraded "
           "(served as public) or refused (403).", "outcome"),
    # -- websockets and long-polls (evented processes) ------------------------------------
    Family("rtbus_websockets_open", "gauge", "Open websocket connections."),
    Family("rtbus_websockets_opened_total", "counter", "Websocket connections accepted."),
    Family("rtbus_websocket_subscriptions_total", "counter", "Subscribe events served."),
    Family("rtbus_websocket_reauthorizations_total", "counter",
           "Subscriptions authorized again because their session's groups, user or partner "
           "changed."),
    Family("rtbus_websocket_closes_total", "counter", "Websocket closes initiated by rtbus, by close code.",
           "code"),
    Family("rtbus_websocket_batches_sent_total", "counter", "Notification batches sent on websockets."),
    Family("rtbus_websocket_batches_written_through_total", "counter",
           "Batches among them sent by the dispatcher's own non-blocking send, without "
           "queueing or waking a writer greenlet."),
    Family("rtbus_websocket_batches_compressed_total", "counter",
           "Batches among them sent compressed (permessage-deflate)."),
    Family("rtbus_websocket_batch_bytes_sent_total", "counter",
           "Bytes of the batch frames sent on websockets, headers included, as on the wire."),
    Family("rtbus_websocket_deflate_negotiated_total", "counter",
           "Websocket connections that negotiated permessage-deflate."),
    Family("rtbus_websocket_receive_budget_bytes", "gauge",
           "Bytes held by the partially received messages of all websockets "
           "(bounded by websocket_receive_budget)."),
    Family("rtbus_websocket_receive_budget_refusals_total", "counter",
           "Websockets closed (1013) because websocket_receive_budget was exhausted."),
    Family("rtbus_slow_consumers_dropped_total", "counter",
           "Websockets dropped because the client did not read fast enough (close 1013)."),
    Family("rtbus_rate_limit_closes_total", "counter",
           "Websockets closed for sending frames faster than the rate limit (close 1013)."),
    Family("rtbus_edge_connections", "gauge",
           "Connections the evented port holds (requests, long-polls, websockets)."),
    Family("rtbus_edge_refusals_total", "counter",
           "Connections refused at the evented port, by reason: client (over "
           "gevent_max_connections_per_client), process (over gevent_max_connections), "
           "head_too_large (431).", "reason"),
    Family("rtbus_edge_deadlines_passed_total", "counter",
           "Connections ended at the evented port for passing a deadline, by phase: head "
           "(limit_time_header, a handshake included), body (limit_time_body), idle "
           "(http_keepalive_timeout), closing (a refusal the client did not read).", "phase"),
    Family("rtbus_longpolls_open", "gauge", "Long-poll requests waiting for notifications."),
    Family("rtbus_longpolls_total", "counter", "Long-polls answered, by how they ended.", "outcome"),
    Family("rtbus_longpolls_refused_total", "counter",
           "Long-polls refused because longpolling_max_polls were held or the server was stopping."),
    Family("rtbus_delivery_latency_seconds", "histogram",
           "Time from the NOTIFY that announced a notification (sent by PostgreSQL at commit) "
           "to the end of its send to the client."),
    # -- the dispatcher -----------------------------------------------------------------
    Family("rtbus_dispatch_subscribers", "gauge", "Subscribers (websockets, long-polls) registered."),
    Family("rtbus_dispatch_channels", "gauge", "Distinct channels with at least one subscriber."),
    Family("rtbus_dispatch_notifies_total", "counter", "imbus NOTIFYs received."),
    Family("rtbus_dispatch_queries_total", "counter", "bus_bus queries run by the dispatcher."),
    Family("rtbus_dispatch_rows_fetched_total", "counter", "bus_bus rows read by the dispatcher."),
    Family("rtbus_notifications_dispatched_total", "counter",
           "Notifications put in subscribers' mailboxes (one per notification and subscriber)."),
    Family("rtbus_dispatch_batches_encoded_total", "counter", "Distinct batches encoded."),
    Family("rtbus_mailbox_overflows_total", "counter",
           "Mailboxes that overflowed (their client is then dropped as a slow consumer)."),
    Family("rtbus_dispatch_regressions_total", "counter",
           "Times the bus stream went backwards (TRUNCATE ... RESTART IDENTITY, a sequence "
           "reset, a restore) and restarted."),
    Family("rtbus_dispatch_catchups", "gauge", "Subscribers still being caught up."),
    Family("rtbus_listen_connections", "gauge", "LISTEN connections up."),
    Family("rtbus_listen_outage", "gauge", "1 while a LISTEN connection is down and being retried."),
    Family("rtbus_listen_reconnects_total", "counter", "LISTEN outages that ended with a reconnect."),
    # -- publishing ---------------------------------------------------------------------
    Family("rtbus_notify_payloads_total", "counter", "imbus NOTIFY payloads sent."),
    Family("rtbus_notify_splits_total", "counter",
           "Publishes whose NOTIFY payload was too large and was split."),
    Family("rtbus_notify_errors_total", "counter", "NOTIFYs that failed."),
    # -- the master ---------------------------------------------------------------------
    Family("rtbus_children", "gauge", "Child processes of the master, by kind.", "child_kind"),
    Family("rtbus_worker_restarts_total", "counter",
           "Children the master replaced, by reason (limit_time_real, died, recycled, "
           "boot_failure, gevent_watchdog_timeout...).", "reason"),
    Family("rtbus_master_generation", "gauge", "Configuration generation (incremented by each HUP)."),
)

FAMILIES: dict[str, Family] = {family.name: family for family in _FAMILIES}


# -- totals over the processes of one server ---------------------------------------------------
# Rendered once per scrape, labelled kind="server", from the per-process families named:
# whichever process answers, the server's total is one sample (a dashboard needs no sum()).
# Separate families, so a sum() over a per-process family never counts them twice.
SERVER_TOTALS: dict[str, tuple[Family, str | None]] = {family.name: (family, source) for family, source in (
    (Family("rtbus_server_evented_processes", "gauge",
            "Evented processes (gevent workers, or the single process) of this server that are up."), None),
    (Family("rtbus_server_websockets_open", "gauge",
            "Open websockets, summed over the server's evented processes."), "rtbus_websockets_open"),
    (Family("rtbus_server_longpolls_open", "gauge",
            "Long-polls waiting, summed over the server's evented processes."), "rtbus_longpolls_open"),
    (Family("rtbus_server_dispatch_subscribers", "gauge",
            "Subscribers registered, summed over the server's evented processes."),
     "rtbus_dispatch_subscribers"),
    (Family("rtbus_server_notifications_dispatched_total", "counter",
            "Notifications put in mailboxes, summed over the evented processes up (falls when a "
            "worker is replaced: prefer the per-process family for rates)."),
     "rtbus_notifications_dispatched_total"),
)}
