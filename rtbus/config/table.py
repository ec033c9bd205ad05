"""The settings table: every setting rtbus-server understands, declared once.

The command line, the configuration file, the environment, docs/configuration.md and
conf/rtbus.conf are all derived from `SETTINGS`."""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

from rtbus.errors import ConfigError
from rtbus.config.values import (COUNT, MIB, PORT, TIMEOUT, CountOrAuto, Fallback, Range, Setting,
                                SqlIdentifier, in_section)

SETTINGS: tuple[Setting, ...] = (
    *in_section(
        "Processes",
        Setting("workers", "int", 0, check=COUNT, flags=("--workers",), help=(
            "Number of prefork HTTP worker processes; 0 runs one evented (gevent) process that "
            "serves everything (JSON-RPC, websockets, long-polls, periodic jobs) on http_port; "
            "more starts a master with that many HTTP workers, the cron workers and "
            "gevent_workers gevent processes for websockets and long-polls on gevent_port.")),
        Setting("max_cron_threads", "int", 1, check=COUNT, flags=("--max-cron-threads",), help=(
            "Number of cron workers running periodic jobs such as the bus garbage collection "
            "(prefork mode; with workers=0 the one evented process runs them in a greenlet "
            "unless this is 0); 0 runs none.")),
        Setting("http_interface", "str", "127.0.0.1", flags=("--http-interface",),
                metavar="ADDRESS", help=(
            "Address the HTTP and gevent listeners bind to; 0.0.0.0 listens on every IPv4 "
            "interface.")),
        Setting("http_port", "int", 8069, check=PORT, flags=("-p", "--http-port"),
                metavar="PORT", help=(
            "TCP port of the HTTP listener (JSON-RPC, health checks and, with workers=0, "
            "websockets and long-polls too); 0 picks a free port.")),
        Setting("gevent_port", "int", 8072, check=PORT, flags=("--gevent-port",),
                aliases=("longpolling_port",), metavar="PORT", help=(
            "TCP port of the gevent process that serves /websocket and /longpolling in prefork "
            "mode; 0 picks a free port.")),
        Setting("gevent_workers", "str", "1", check=CountOrAuto(), flags=("--gevent-workers",),
                help=(
            "Number of gevent processes serving gevent_port in prefork mode, each with its own "
            "dispatcher, pool and LISTEN connection; auto starts one per CPU core. Above 1 they "
            "listen with SO_REUSEPORT where the kernel has it (else they share one socket).")),
        Setting("proxy_mode", "bool", False, flags=("--proxy-mode",), help=(
            "Trust the X-Forwarded-For, X-Forwarded-Host and X-Forwarded-Proto headers of a "
            "reverse proxy; enable it only behind one, as clients could otherwise forge them.")),
        Setting("pidfile", "path", None, flags=("--pidfile",), help=(
            "File the master process writes its process id to.")),
        Setting("runtime_dir", "path", None, flags=("--runtime-dir",), help=(
            "Directory of this deployment's status and metrics snapshots (one small JSON file "
            "per process, read by /metrics and 'rtbus-server status'); unset uses "
            "$XDG_RUNTIME_DIR/rtbus/<http_port>, else /tmp/rtbus-<uid>/<http_port>.")),
        Setting("graceful_timeout", "float", 30.0, check=TIMEOUT, flags=("--graceful-timeout",),
                help=(
            "Seconds workers get, on a graceful stop or reload, to finish their requests and "
            "close their websockets before the master kills them.")),
        Setting("gevent_watchdog_timeout", "float", 30.0, check=TIMEOUT,
                flags=("--gevent-watchdog-timeout",), help=(
            "Seconds the gevent event loop may go without a heartbeat before the master "
            "replaces the process.")),
        Setting("gevent_max_connections", "int", 10000, check=Range(1),
                flags=("--gevent-max-connections",), help=(
            "Maximum number of connections (websockets, long-polls, requests) each gevent process "
            "holds at once; one more is answered 503 (a websocket handshake: 101 then close "
            "1013), and past 256 such refusals in flight clients wait in the listen backlog.")),
        Setting("gevent_max_connections_per_client", "int", 0, check=COUNT,
                flags=("--gevent-max-connections-per-client",), help=(
            "Maximum number of connections one client address (an IPv6 client by /64) may hold "
            "on the gevent process; one more is answered like one over gevent_max_connections. "
            "With proxy_mode, the address is the X-Forwarded-For of the connection's first "
            "request. 0 (the default, as Odoo) means no limit: without proxy_mode every client "
            "of a reverse proxy shares the proxy's address, so set a cap (1024, say) only with "
            "proxy_mode or when clients connect directly.")),
        Setting("limit_time_header", "float", 10.0, check=Range(0.1), flags=("--limit-time-header",),
                help=(
            "Seconds a client of the evented port has to send a request head (counted from the "
            "connection, or from the first byte after a keep-alive pause), a websocket "
            "handshake's included. Slower clients get 408 and are disconnected.")),
        Setting("limit_time_body", "float", 30.0, check=Range(0.1), flags=("--limit-time-body",),
                help=(
            "Seconds a client of the evented port has to send a request body once its head is "
            "read; a slower one gets 408 and is disconnected.")),
        Setting("http_keepalive_timeout", "float", 20.0, check=Range(0.1),
                flags=("--http-keepalive-timeout",), help=(
            "Seconds the evented port keeps an idle keep-alive connection open between two "
            "requests.")),
        Setting("http_max_head_size", "bytes", 64 * 1024, check=Range(1024),
                flags=("--http-max-head-size",), help=(
            "Largest request head (request line and headers) the evented port reads; a larger one "
            "is answered 431 and disconnected.")),
        Setting("http_socket_timeout", "float", 2.0, check=TIMEOUT, cli=False, help=(
            "Seconds a prefork HTTP worker waits on a client socket, for a request or to send "
            "a response, before giving up on it.")),
    ),
    *in_section(
        "WebSocket",
        Setting("websocket_keep_alive_timeout", "float", 3600.0, check=TIMEOUT, cli=False, help=(
            "Lifetime of a websocket in seconds, plus a random part up to half of it so that "
            "connections do not all expire together; then it is closed with 4002 and the client "
            "reconnects at once. 0 means no limit.")),
        Setting("websocket_rate_limit_burst", "int", 10, check=Range(1), cli=False, help=(
            "Frames a client may send within websocket_rate_limit_burst x "
            "websocket_rate_limit_delay seconds; one more closes the connection with 1013.")),
        Setting("websocket_rate_limit_delay", "float", 0.2, check=TIMEOUT, cli=False, help=(
            "Seconds per frame of the websocket rate limit (see websocket_rate_limit_burst).")),
        Setting("websocket_max_message_size", "bytes", 1 * MIB, check=Range(126), cli=False, help=(
            "Largest message a client may send; a larger frame or message is refused with close "
            "1009 before its payload is read.")),
        Setting("websocket_receive_budget", "bytes", 64 * MIB, check=COUNT, cli=False, help=(
            "Bytes all the websockets of one evented process may hold in messages they have "
            "not finished receiving (a frame cut short, the fragments of a message, the "
            "inflater of a compressed one); a connection that would pass it is closed with "
            "1013 and the others keep theirs. 0 means no limit beyond "
            "websocket_max_message_size per connection.")),
        Setting("websocket_compression", "bool", True, cli=False, help=(
            "Accept permessage-deflate (RFC 7692), which browsers always offer. The server "
            "asks for no context takeover both ways, so that a batch is compressed once for "
            "all its subscribers and no compression state is kept between messages.")),
        Setting("websocket_compression_threshold", "bytes", 512, check=COUNT, cli=False,
                help=(
            "Batches shorter than this are sent uncompressed even when permessage-deflate was "
            "negotiated: deflate saves a few dozen bytes on them (a presence update) for a "
            "zlib stream each; a Discuss message with its records (about 800 bytes) shrinks by "
            "almost half.")),
        Setting("websocket_compression_level", "int", 1, check=Range(1, 9), cli=False, help=(
            "zlib compression level of outgoing batches, from 1 (fastest) to 9 (smallest); on "
            "typical batches level 6 saves a few percent more bytes for up to twice the CPU.")),
        Setting("websocket_ping_interval", "float", 40.0, check=Range(1), cli=False, help=(
            "Seconds without any frame in either direction after which the server pings the "
            "client; kept below the usual 60 s proxy idle timeout.")),
        Setting("websocket_response_timeout", "float", 15.0, check=Range(0.1), cli=False, help=(
            "Seconds a client has to answer a ping or a close before the TCP connection is "
            "dropped.")),
        Setting("websocket_send_timeout", "float", 10.0, check=Range(0.1), cli=False, help=(
            "Seconds a send to a websocket may block; a client that does not read for that long "
            "is dropped as a slow consumer.")),
        Setting("websocket_close_batch", "int", 0, check=COUNT, cli=False,
                fallback=Fallback(when=0, setting="db_maxconn_gevent"), help=(
            "Number of websockets closed per batch on a graceful stop, so that reconnecting "
            "clients do not flood the next process's database pool; 0 means the gevent pool "
            "size (db_maxconn_gevent).")),
        Setting("websocket_close_interval", "float", 0.1, check=TIMEOUT, cli=False, help=(
            "Seconds between two batches of websocket closures on a graceful stop.")),
    ),
    *in_section(
        "Long-polling",
        Setting("longpolling_timeout", "float", 50.0, check=Range(0.1, 3600), cli=False, help=(
            "Seconds a /longpolling/poll waits for notifications before answering an empty "
            "list (Odoo's 50 s); keep it below the reverse proxy's read timeout.")),
        Setting("longpolling_max_polls", "int", 5000, check=Range(1),
                flags=("--longpolling-max-polls",), help=(
            "Long-polls one evented process holds at once; more are answered 503 with "
            "Retry-After. Keep it below gevent_max_connections so that websockets still "
            "get in.")),
    ),
    *in_section(
        "Limits",
        Setting("limit_request", "int", 65536, check=Range(1), flags=("--limit-request",),
                help="Number of requests a prefork HTTP worker serves before it is recycled."),
        Setting("limit_memory_soft", "bytes", 2048 * MIB, flags=("--limit-memory-soft",), help=(
            "Virtual memory size above which a worker is recycled once its current request "
            "is done.")),
        Setting("limit_memory_hard", "bytes", 2560 * MIB, flags=("--limit-memory-hard",), help=(
            "Virtual memory limit (RLIMIT_AS) of each worker; allocations beyond it fail.")),
        Setting("limit_memory_soft_gevent", "bytes", None, flags=("--limit-memory-soft-gevent",),
                fallback=Fallback(setting="limit_memory_soft"), help=(
            "limit_memory_soft for the gevent process, which holds every connection and so "
            "needs more memory; unset means limit_memory_soft.")),
        Setting("limit_memory_hard_gevent", "bytes", None, flags=("--limit-memory-hard-gevent",),
                fallback=Fallback(setting="limit_memory_hard"), help=(
            "limit_memory_hard for the gevent process; unset means limit_memory_hard.")),
        Setting("limit_time_cpu", "int", 60, check=TIMEOUT, flags=("--limit-time-cpu",), help=(
            "CPU seconds a prefork HTTP worker may spend on one request before it is killed.")),
        Setting("limit_time_real", "int", 120, check=TIMEOUT, flags=("--limit-time-real",),
                help=(
            "Wall-clock seconds a prefork HTTP worker may spend on one request before it is "
            "killed; websockets and long-polls in the gevent process are not subject to it.")),
        Setting("http_max_body_size", "bytes", 1 * MIB, check=Range(1024),
                flags=("--http-max-body-size",), help=(
            "Largest request body accepted (a JSON-RPC call, a publish); a larger one is refused "
            "with 413 as soon as it is declared or, for a chunked body, as soon as that many bytes "
            "were read.")),
        Setting("limit_time_real_cron", "int", -1, check=Range(-1),
                flags=("--limit-time-real-cron",),
                fallback=Fallback(when=-1, setting="limit_time_real"), help=(
            "Wall-clock seconds a cron job may run; -1 means limit_time_real and 0 means no "
            "limit.")),
    ),
    *in_section(
        "Database",
        Setting("db_host", "str", None, flags=("--db-host",), env=("PGHOST",), metavar="HOST",
                help=(
            "PostgreSQL host name, address or socket directory; unset connects through the "
            "default local UNIX socket.")),
        Setting("db_port", "int", None, check=Range(1, 65535), flags=("--db-port",),
                env=("PGPORT",), metavar="PORT", help=(
            "PostgreSQL port; unset uses libpq's default (5432).")),
        Setting("db_user", "str", None, flags=("-r", "--db-user"), env=("PGUSER",),
                metavar="USER", help=(
            "PostgreSQL role to connect as; unset uses libpq's default, the operating system "
            "user.")),
        Setting("db_password", "str", None, secret=True, flags=("-w", "--db-password"),
                env=("PGPASSWORD",), metavar="PASSWORD", help=(
            "Password of db_user; prefer PGPASSWORD, ~/.pgpass or the configuration file, "
            "since command-line arguments are visible to every local user.")),
        Setting("db_name", "str", None, flags=("-d", "--db-name", "--database"),
                env=("PGDATABASE",), fallback=Fallback(value="rtbus"),
                metavar="NAME[,NAME...]", help=(
            "Comma-separated list of the databases whose buses this server serves; unset "
            "means rtbus.")),
        Setting("db_sslmode", "choice", "prefer", flags=("--db-sslmode",),
                choices=("disable", "allow", "prefer", "require", "verify-ca", "verify-full"),
                help="libpq sslmode of every database connection."),
        Setting("db_maxconn", "int", 64, check=Range(1), flags=("--db-maxconn",), help=(
            "Maximum number of PostgreSQL connections in the pool of each process.")),
        Setting("db_maxconn_gevent", "int", None, check=Range(1), flags=("--db-maxconn-gevent",),
                fallback=Fallback(setting="db_maxconn"), help=(
            "Pool size of each gevent process, which serves many clients at once; unset means "
            "db_maxconn.")),
        Setting("db_connect_timeout", "int", 5, check=TIMEOUT, flags=("--db-connect-timeout",),
                help=(
            "Seconds to wait for a new PostgreSQL connection to be established; 0 waits "
            "forever.")),
        Setting("db_pool_timeout", "float", 1.0, check=TIMEOUT, flags=("--db-pool-timeout",),
                help=(
            "Seconds a request waits for a free pooled connection before it fails as "
            "temporarily unavailable (HTTP 503, websocket close code 1013).")),
        Setting("db_pool_max_waiting", "int", 1024, check=COUNT,
                flags=("--db-pool-max-waiting",), help=(
            "Maximum number of requests waiting for a pooled connection at once; requests "
            "beyond it fail at once (0 means no bound).")),
        Setting("db_statement_timeout", "float", 0.0, check=TIMEOUT,
                flags=("--db-statement-timeout",), help=(
            "Seconds a statement of rtbus's own pooled sessions may run before PostgreSQL "
            "cancels it (statement_timeout); the request then fails with HTTP 503. 0 means "
            "no limit. The dispatcher's reads use it too, when set.")),
        Setting("db_lock_timeout", "float", 0.0, check=TIMEOUT, flags=("--db-lock-timeout",),
                help=(
            "Seconds a statement of rtbus's own sessions may wait for a lock (lock_timeout), "
            "so that a publish blocked by a locked bus_bus fails fast with HTTP 503 instead of "
            "holding a worker. 0 means no limit.")),
        Setting("db_keepalives_idle", "int", 10, check=COUNT, flags=("--db-keepalives-idle",),
                help=(
            "Seconds a PostgreSQL connection (pooled or listening) may stay silent before TCP "
            "keepalive probes check that the server is still there; 0 keeps the system's "
            "default (often 2 hours).")),
        Setting("db_keepalives_interval", "int", 3, check=COUNT,
                flags=("--db-keepalives-interval",), help=(
            "Seconds between two TCP keepalive probes of a PostgreSQL connection; 0 keeps the "
            "system's default.")),
        Setting("db_keepalives_count", "int", 3, check=COUNT, flags=("--db-keepalives-count",),
                help=(
            "Unanswered TCP keepalive probes after which a PostgreSQL connection is given up as "
            "dead (a server that vanished without closing: power loss, partition); 0 keeps "
            "the system's default.")),
        Setting("db_tcp_user_timeout", "float", 20.0, check=TIMEOUT,
                flags=("--db-tcp-user-timeout",), help=(
            "Seconds data sent to PostgreSQL may stay unacknowledged before the connection is "
            "given up as dead (TCP_USER_TIMEOUT; keepalives only cover silent connections); 0 "
            "keeps the system's default.")),
        Setting("embedded_db_dir", "path", None, flags=("--embedded-db-dir",), help=(
            "Directory of an embedded PostgreSQL cluster that rtbus creates and starts itself, "
            "for development and tests; unset uses the server given by db_host and db_port.")),
        Setting("imbus_db_name", "str", "postgres", flags=("--imbus-db-name",), metavar="NAME",
                help="Database whose LISTEN/NOTIFY channel imbus carries notifications."),
    ),
    *in_section(
        "Bus",
        Setting("notify_payload_max_length", "int", 8000, check=Range(1),
                flags=("--notify-payload-max-length",), env=("ODOO_NOTIFY_PAYLOAD_MAX_LENGTH",),
                help=(
            "Largest NOTIFY payload, in bytes, sent as one notification; longer payloads are "
            "split.")),
        Setting("notify_function", "str", "pg_notify", check=SqlIdentifier(),
                flags=("--notify-function",), env=("ODOO_NOTIFY_FUNCTION",),
                metavar="FUNCTION", help=(
            "SQL function called as function(channel, payload) to send notifications, for "
            "databases that wrap pg_notify in a security layer.")),
        Setting("gc_retention_seconds", "int", 86400, check=COUNT,
                flags=("--gc-retention-seconds",), help=(
            "Seconds notifications are kept in bus_bus before the garbage collector deletes "
            "them; a client reconnecting later than that misses them.")),
        Setting("gc_interval_seconds", "int", 3600, check=Range(60), flags=("--gc-interval-seconds",),
                help=(
            "Seconds between two runs of the bus garbage collector (a cron job); its last "
            "run is what /bus/get_autovacuum_info reports.")),
        Setting("bus_api_key", "str", None, secret=True, flags=("--bus-api-key",),
                metavar="KEY", help=(
            "Secret that other services must present to publish through rtbus's HTTP API; "
            "unset disables publishing over HTTP. A value given on the command line shows in ps "
            "until the process retitles itself: prefer bus_api_key_file or RTBUS_BUS_API_KEY.")),
        Setting("bus_api_key_file", "path", None, flags=("--bus-api-key-file",), help=(
            "File holding bus_api_key (its first line), read at start-up and on every reload; "
            "keeps the key out of the command line and the environment. Giving both is an "
            "error.")),
        Setting("budget_check", "choice", "error", choices=("error", "warn", "off"),
                flags=("--budget-check",), help=(
            "What to do at start-up when the connection pools of all processes could exceed "
            "what PostgreSQL allows: refuse to start (error), log a warning (warn) or skip "
            "the check (off).")),
        Setting("bus_batch_max_notifications", "int", 1000, check=Range(1), cli=False, help=(
            "Most notifications in one websocket frame or one long-poll or peek answer; a "
            "longer catch-up follows in further frames, or from the client's next request.")),
        Setting("bus_batch_max_bytes", "bytes", MIB, cli=False, help=(
            "About the most bytes of notifications in one websocket frame or one long-poll "
            "or peek answer (a single larger notification still goes, alone).")),
        Setting("mailbox_max_bytes", "bytes", 4 * MIB, cli=False, help=(
            "Bound on the bytes queued for one subscriber that has not read them yet; a "
            "client falling further behind is disconnected and catches up on reconnection.")),
    ),
    *in_section(
        "Sessions and channels",
        Setting("session_ttl", "int", 7 * 86400, check=Range(60), flags=("--session-ttl",),
                help=(
            "Lifetime in seconds of a session created without an explicit one (through the "
            "JSON-RPC route or the CLI); rotating a session keeps its lifetime.")),
        Setting("session_check_cache_seconds", "float", 10.0, check=Range(0, 60), cli=False,
                help=(
            "Seconds a process may reuse a session check instead of asking the database "
            "again. Revocations and rotations reach every process at once through NOTIFY "
            "rtbus_session; this bound only matters if that notification is lost "
            "(0 checks every message and every dispatch).")),
        Setting("public_channels", "list", ("*",), flags=("--public-channels",),
                metavar="PATTERN,...", help=(
            "fnmatch patterns (case-sensitive) a channel name requested by a session without "
            "a user (no cookie, or an anonymous session) must match; other names are dropped. "
            "The default \"*\" allows any name (Odoo's rule); \"broadcast\" alone allows "
            "nothing beyond broadcast.")),
        Setting("channel_allowlist", "list", (), flags=("--channel-allowlist",),
                metavar="PATTERN,...", help=(
            "fnmatch patterns (case-sensitive) a channel name requested by any session must "
            "match; other names are dropped. Empty allows any name, relying on names being "
            "unguessable as Odoo does. Server channels (partner, groups, presence) are not "
            "filtered.")),
        Setting("session_lookup_budget", "int", 60, check=COUNT,
                flags=("--session-lookup-budget",), help=(
            "Lookups of session ids that rtbus did not issue (no valid signature: an "
            "application's own sids, or sessions made before migration 0005) that one client "
            "address may cause per minute and per process when they find no session (an IPv6 "
            "client counts by /64; with proxy_mode, the forwarded address). Beyond it its "
            "requests with such a sid are refused (503 Retry-After, close 1013) without "
            "asking the database. Forged rtbus sids are refused without a query at all. 0 means "
            "no limit.")),
        Setting("session_lookup_budget_total", "int", 1200, check=COUNT,
                flags=("--session-lookup-budget-total",), help=(
            "The same budget for every client address together, per minute and per process, so "
            "that a flood from many addresses cannot exhaust the connection pool either; 0 "
            "means no limit.")),
        Setting("max_channels_per_subscription", "int", 1000, check=Range(1, 100000),
                flags=("--max-channels-per-subscription",), help=(
            "Most channels one subscribe or poll may ask for; a longer list is refused.")),
    ),
    *in_section(
        "Cross-origin requests",
        Setting("allowed_origins", "list", (), flags=("--allowed-origins",),
                metavar="ORIGIN,...", help=(
            "Origins (scheme://host[:port]) of the pages, besides the request's own origin, "
            "whose requests may act with the visitor's session cookie (websocket, long-poll, "
            "JSON-RPC); they may also read long-poll answers across origins (CORS). The page "
            "on http_port of the same host is always allowed to use the gevent port.")),
        Setting("cross_origin_sessions", "choice", "public", choices=("public", "refuse"),
                flags=("--cross-origin-sessions",), help=(
            "What a browser request gets when its Origin is neither its own nor allowed and "
            "it carries the session cookie: public serves it as a visitor without a session "
            "(Odoo's ODOO_BUS_PUBLIC_SAMESITE_WS, always on here), so that embedded public "
            "widgets keep working; refuse answers 403. Requests without an Origin "
            "(non-browser clients) are not concerned.")),
    ),
    *in_section(
        "Presence",
        Setting("presence_update_interval", "float", 60.0, check=Range(0, 3600),
                flags=("--presence-update-interval",), help=(
            "Minimum seconds between two writes of one user's presence that do not change "
            "its status; updates in between are absorbed (a status change is always "
            "written).")),
    ),
    *in_section(
        "Application authorization proxy",
        Setting("auth_proxy_url", "str", None, flags=("--auth-proxy-url",), metavar="URL", help=(
            "Base http:// or https:// URL of the application that decides who a session is and "
            "which channels it may hear (rtbus POSTs to <URL>/subscribe and <URL>/events, see "
            "docs/odoo.md); unset keeps rtbus's own sessions and channel policy.")),
        Setting("auth_proxy_secret", "str", None, secret=True,
                cli=False, help=(
            "Shared secret with which rtbus signs each proxy request (HMAC-SHA256 of the "
            "timestamp and the body, header X-Rtbus-Signature); required with auth_proxy_url.")),
        Setting("auth_proxy_cookies", "list", ("dgid",), cli=False, metavar="NAME,...", help=(
            "Cookies besides session_id forwarded to the application with each question, "
            "such as Odoo's guest token (dgid, of mail.guest: livechat visitors); answers are "
            "cached per session and these cookies' values. Empty forwards session_id only.")),
        Setting("auth_proxy_timeout", "float", 3.0, check=Range(0.1, 60), cli=False, help=(
            "Seconds rtbus waits for the application's answer (connect and read) before the "
            "subscription fails cleanly (close 1013, JSON-RPC error).")),
        Setting("auth_proxy_cache_seconds", "float", 30.0, check=Range(1, 3600), cli=False, help=(
            "Seconds an answer of the application is reused for the same session and channel "
            "list; also how often an open socket's session is re-checked with the application "
            "(at least 1: open sockets are re-checked from the remembered answer).")),
        Setting("auth_proxy_cache_size", "int", 10_000, check=Range(1), cli=False, help=(
            "Bound on the answers kept (least recently used dropped first).")),
        Setting("auth_proxy_connections", "int", 8, check=Range(1, 256), cli=False, help=(
            "Bound on the HTTP connections kept open to the application per process; calls "
            "beyond it wait for one (up to auth_proxy_timeout).")),
        Setting("auth_proxy_event_queue", "int", 10_000, check=Range(1), cli=False, help=(
            "Bound on the presence and close events waiting to be forwarded to the "
            "application; events beyond it are dropped and counted.")),
    ),
    *in_section(
        "Browser client and demo",
        Setting("longpolling_public_url", "str", None, flags=("--longpolling-public-url",),
                metavar="URL", help=(
            "Base URL browsers use to reach /websocket and /longpolling/poll, such as "
            "https://bus.example.com or http://127.0.0.1:8072; the page served at / tells its "
            "shared worker. Unset means the page's own origin in single mode and with "
            "proxy_mode (nginx routes both), else the page's host on gevent_port.")),
        Setting("demo_mode", "bool", False, flags=("--demo-mode",), help=(
            "Serve the demo routes (/demo/*) behind the live board at /: anyone who reaches "
            "the HTTP port can then create demo sessions and publish to demo.* channels. "
            "For development and demonstrations only; never enable it in production.")),
    ),
    *in_section(
        "Logging",
        Setting("log_level", "choice", "info", flags=("--log-level",),
                choices=("debug", "info", "warning", "error", "critical"),
                choice_aliases=(("warn", "warning"),), help=(
            "Minimum level of the log records written; warn is accepted for warning.")),
        Setting("logfile", "path", None, flags=("--logfile",), help=(
            "File the log is written to; unset writes it to standard error.")),
    ),
)

CONFIG_ENV = "RTBUS_CONFIG"

# Lookup tables derived from SETTINGS.
BY_NAME: Mapping[str, Setting] = MappingProxyType({s.name: s for s in SETTINGS})
BY_FILE_KEY: Mapping[str, Setting] = MappingProxyType(
    {key: s for s in SETTINGS for key in s.file_keys})
SECTIONS: tuple[str, ...] = tuple(dict.fromkeys(s.section for s in SETTINGS))


def setting_named(name: str) -> Setting:
    try:
        return BY_NAME[name]
    except KeyError:
        hint = f" ({name} is an alias of {BY_FILE_KEY[name].name})" if name in BY_FILE_KEY else ""
        raise ConfigError(f"unknown setting {name!r}{hint}") from None


