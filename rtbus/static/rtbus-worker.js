/*
 * rtbus-worker.js: one bus connection per browser, shared by every tab.
 *
 * Started by rtbus-bus.js as a SharedWorker (one per origin, database, worker
 * version and transport), or as a dedicated Worker per tab where SharedWorker is
 * missing. Each tab talks to it through a port (see PROTOCOL below).
 *
 * What it guarantees:
 *  - one WebSocket to <bus url>/websocket?version=<worker version>, or a long-poll
 *    loop on /longpolling/poll when websockets never manage to connect;
 *  - the subscription sent is the sorted union of every tab's channels, debounced,
 *    sent only when it changed, and always after a (re)connection, with the last
 *    notification id this browser received (so a new tab replays nothing);
 *  - reconnection with backoff: 1 s, then x1.5 up to 60 s, plus up to 1 s of jitter;
 *    at once (jitter only) after 4002; never after 1000; 1000 OUTDATED_VERSION stops
 *    for good and tells the tabs; 4001 waits until a tab brings a new session;
 *  - after a reconnection, /bus/has_missed_notifications decides whether the tabs
 *    must be told that notifications were lost (garbage-collected meanwhile);
 *  - one presence report per browser: tabs send their activity here, the worker
 *    sends update_presence when the online/away status changes, not per tab.
 *
 * PROTOCOL (tab -> worker), every message an object with a `type`:
 *   hello {clientId, options: {busUrl, version, db, transport}, last, channels}
 *   add_channels {channels}   remove_channels {channels}
 *   activity {}               update_presence {inactivityPeriod}
 *   restart {}                leave {}
 * (worker -> tab):
 *   state {state, transport, workerKind, channels, last, tabs, attempt}
 *   event {name, detail}      name: connect, disconnect, reconnecting, reconnect,
 *                                   outdated, session_expired
 *   notifications {items: [{id, type, payload}]}
 */
"use strict";

const INITIAL_RECONNECT_DELAY = 1000;
const MAXIMUM_RECONNECT_DELAY = 60000;
const RECONNECT_JITTER = 1000;
const BACKOFF_FACTOR = 1.5;
const SUBSCRIBE_DEBOUNCE = 300;
const PRESENCE_DEBOUNCE = 300;
const CONNECTION_CHECK_DELAY = 60000;   // idle time before the 0x00 probe (dead TCP detection)
const AWAY_DELAY = 30 * 60 * 1000;       // the server's rule: away past 30 min of inactivity
const PRESENCE_CHECK_INTERVAL = 60000;
const FAILED_OPENS_BEFORE_LONGPOLLING = 3;
const RECENT_IDS_KEPT = 2000;

const CloseCode = Object.freeze({
    CLEAN: 1000,
    SESSION_EXPIRED: 4001,
    KEEP_ALIVE_TIMEOUT: 4002,
});
const OUTDATED_VERSION = "OUTDATED_VERSION";
const State = Object.freeze({
    IDLE: "idle",
    CONNECTING: "connecting",
    CONNECTED: "connected",
    RECONNECTING: "reconnecting",
    DISCONNECTED: "disconnected",
    WAITING_SESSION: "waiting_session",
    OUTDATED: "outdated",
});

function delay(ms, signal) {
    return new Promise((resolve) => {
        const timer = setTimeout(resolve, ms);
        if (signal) {
            signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
        }
    });
}

/** Remembers the ids already handed to the tabs, so a replay after a reconnect shows nothing twice. */
class RecentIds {
    constructor(limit) {
        this.limit = limit;
        this.order = [];
        this.seen = new Set();
    }
    add(id) {
        if (this.seen.has(id)) {
            return false;
        }
        this.seen.add(id);
        this.order.push(id);
        if (this.order.length > this.limit) {
            this.seen.delete(this.order.shift());
        }
        return true;
    }
}

class BusWorker {
    constructor(workerKind) {
        this.workerKind = workerKind;
        this.clients = new Map();          // clientId -> {port, channels: Set}
        this.options = null;               // the first tab's {busUrl, version, db, transport}
        this.state = State.IDLE;
        this.transport = null;             // "websocket" or "longpolling", once chosen
        this.last = 0;
        this.recentIds = new RecentIds(RECENT_IDS_KEPT);
        this.socket = null;
        this.socketOpened = false;
        this.everConnected = false;
        this.websocketEverOpened = false;
        this.failedOpens = 0;
        this.reconnecting = false;
        this.backoff = INITIAL_RECONNECT_DELAY;
        this.attempt = 0;
        this.reconnectTimer = null;
        this.lastSubscription = null;       // JSON of the channel list last sent on this connection
        this.subscribeTimer = null;
        this.connectionCheckTimer = null;
        this.lastIdAtDisconnect = 0;
        this.lastActivity = Date.now();
        this.reportedStatus = null;         // the presence status last sent on this connection
        this.presenceTimer = null;
        this.poller = null;                 // {abort: AbortController} of the running long-poll loop
        setInterval(() => this.reportPresence(false), PRESENCE_CHECK_INTERVAL);
    }

    // -- tabs -------------------------------------------------------------------------------

    attach(port) {
        port.onmessage = (event) => this.onTabMessage(port, event.data || {});
        if (port.start) {
            port.start();
        }
    }

    onTabMessage(port, message) {
        const client = message.clientId ? this.clients.get(message.clientId) : this.clientOf(port);
        switch (message.type) {
            case "hello":
                return this.hello(port, message);
            case "add_channels":
                return client && this.changeChannels(client, message.channels, true);
            case "remove_channels":
                return client && this.changeChannels(client, message.channels, false);
            case "activity":
                return this.onActivity();
            case "update_presence":
                return this.updatePresence(Number(message.inactivityPeriod) || 0);
            case "restart":
                return this.restart();
            case "leave":
                return client && this.leave(client);
        }
    }

    clientOf(port) {
        for (const client of this.clients.values()) {
            if (client.port === port) {
                return client;
            }
        }
        return null;
    }

    hello(port, message) {
        if (!this.options) {
            this.options = Object.assign({ busUrl: "", version: "", db: "", transport: "auto" },
                message.options || {});
        }
        const last = Number(message.last) || 0;
        if (last > 0 && this.last === 0 && !this.everConnected) {
            this.last = last;   // a browser restart: continue from what the tabs stored
        }
        const client = { id: message.clientId, port, channels: new Set(message.channels || []) };
        this.clients.set(client.id, client);
        this.postState(client);
        if (this.state === State.WAITING_SESSION) {
            this.restart();   // a new page may come with a new session
        } else if (this.state === State.IDLE || this.state === State.DISCONNECTED) {
            this.connect();
        } else {
            this.scheduleSubscribe();
        }
    }

    leave(client) {
        this.clients.delete(client.id);
        if (this.clients.size === 0) {
            this.shutdown();
            return;
        }
        this.scheduleSubscribe();
        this.broadcastState();
    }

    changeChannels(client, channels, add) {
        for (const channel of channels || []) {
            if (typeof channel !== "string") {
                continue;
            }
            if (add) {
                client.channels.add(channel);
            } else {
                client.channels.delete(channel);
            }
        }
        this.scheduleSubscribe();
    }

    channels() {
        const union = new Set();
        for (const client of this.clients.values()) {
            client.channels.forEach((channel) => union.add(channel));
        }
        return [...union].sort();
    }

    post(client, message) {
        try {
            client.port.postMessage(message);
        } catch (error) {
            this.clients.delete(client.id);   // a port that cannot be posted to is gone
        }
    }

    broadcast(message) {
        for (const client of [...this.clients.values()]) {
            this.post(client, message);
        }
    }

    emit(name, detail = {}) {
        this.broadcast({ type: "event", name, detail });
    }

    stateMessage() {
        return {
            type: "state", state: this.state, transport: this.transport, workerKind: this.workerKind,
            channels: this.channels(), last: this.last, tabs: this.clients.size, attempt: this.attempt,
        };
    }

    postState(client) {
        this.post(client, this.stateMessage());
    }

    broadcastState() {
        this.broadcast(this.stateMessage());
    }

    setState(state) {
        this.state = state;
        this.broadcastState();
    }

    // -- the connection's life ---------------------------------------------------------------

    connect() {
        if (this.state === State.OUTDATED || this.clients.size === 0) {
            return;
        }
        clearTimeout(this.reconnectTimer);
        this.reconnectTimer = null;
        const wanted = this.options.transport;
        if (wanted === "longpolling" || (wanted === "auto" && this.transport === "longpolling")) {
            this.startLongPolling();
        } else {
            this.openWebsocket();
        }
    }

    restart() {
        if (this.state === State.OUTDATED) {
            return;
        }
        this.closeTransport();
        this.backoff = INITIAL_RECONNECT_DELAY;
        this.reconnecting = this.everConnected;
        this.setState(this.reconnecting ? State.RECONNECTING : State.CONNECTING);
        this.connect();
    }

    shutdown() {
        clearTimeout(this.reconnectTimer);
        this.closeTransport();
        if (this.state !== State.OUTDATED) {
            this.state = State.IDLE;
        }
    }

    closeTransport() {
        if (this.socket) {
            const socket = this.socket;
            this.socket = null;
            socket.onopen = socket.onmessage = socket.onclose = socket.onerror = null;
            socket.close(CloseCode.CLEAN);
        }
        if (this.poller) {
            this.poller.abort.abort();
            this.poller = null;
        }
        this.stopConnectionCheck();
        this.lastSubscription = null;
    }

    /** Schedule the next attempt: 1 s x1.5 per failure up to 60 s, plus jitter (`immediate`: jitter only). */
    scheduleReconnect(closeCode, immediate = false) {
        if (this.clients.size === 0) {
            this.state = State.IDLE;
            return;
        }
        if (immediate) {
            this.backoff = INITIAL_RECONNECT_DELAY;
        }
        const wait = (immediate ? 0 : this.backoff) + RECONNECT_JITTER * Math.random();
        if (!immediate) {
            this.backoff = Math.min(this.backoff * BACKOFF_FACTOR, MAXIMUM_RECONNECT_DELAY);
        }
        this.attempt += 1;
        this.reconnecting = true;
        this.setState(State.RECONNECTING);
        this.emit("reconnecting", { closeCode, delay: Math.round(wait), attempt: this.attempt });
        clearTimeout(this.reconnectTimer);
        this.reconnectTimer = setTimeout(() => this.connect(), wait);
    }

    onConnected() {
        const wasReconnecting = this.reconnecting && this.everConnected;
        this.reconnecting = false;
        this.everConnected = true;
        this.backoff = INITIAL_RECONNECT_DELAY;
        this.attempt = 0;
        this.setState(State.CONNECTED);
        this.emit(wasReconnecting ? "reconnect" : "connect", { transport: this.transport });
        if (wasReconnecting && this.lastIdAtDisconnect > 0) {
            this.checkMissedNotifications(this.lastIdAtDisconnect);
        }
    }

    onDisconnected(code, reason) {
        if (this.state === State.CONNECTED) {
            this.lastIdAtDisconnect = this.last;
        }
        this.stopConnectionCheck();
        this.lastSubscription = null;
        this.reportedStatus = null;
        this.emit("disconnect", { code, reason });
    }

    async checkMissedNotifications(lastId) {
        const query = this.options.db ? `?db=${encodeURIComponent(this.options.db)}` : "";
        try {
            const response = await fetch(`/bus/has_missed_notifications${query}`, {
                method: "POST",
                credentials: "same-origin",
                headers: { "Content-Type": "application/json" },
                body: JSON.stringify({ jsonrpc: "2.0", method: "call", id: 1,
                                       params: { last_notification_id: lastId } }),
            });
            const answer = await response.json();
            if (answer.result === true) {
                this.emit("outdated", { reason: "missed_notifications", lastId });
            }
        } catch (error) {
            // Unknown is not "missed": the next reconnection asks again.
        }
    }

    // -- WebSocket -----------------------------------------------------------------------------

    websocketUrl() {
        const base = this.options.busUrl || self.location.origin;
        const url = new URL("/websocket", base.replace(/^http/, "ws"));
        url.searchParams.set("version", this.options.version);
        if (this.options.db) {
            url.searchParams.set("db", this.options.db);
        }
        return url.toString();
    }

    openWebsocket() {
        this.transport = "websocket";
        if (!this.reconnecting) {
            this.setState(State.CONNECTING);
        }
        let socket;
        try {
            socket = new WebSocket(this.websocketUrl());
        } catch (error) {
            this.onWebsocketFailure(1006, String(error));
            return;
        }
        this.socket = socket;
        this.socketOpened = false;
        socket.binaryType = "arraybuffer";
        socket.onopen = () => {
            this.socketOpened = true;
            this.websocketEverOpened = true;
            this.failedOpens = 0;
            this.onConnected();
            this.flushSubscription(true);
            this.reportPresence(true);
            this.restartConnectionCheck();
        };
        socket.onmessage = (event) => {
            this.restartConnectionCheck();
            if (typeof event.data !== "string") {
                return;
            }
            let batch;
            try {
                batch = JSON.parse(event.data);
            } catch (error) {
                return;
            }
            if (Array.isArray(batch)) {
                this.deliver(batch);
            }
        };
        socket.onclose = (event) => this.onWebsocketClose(socket, event.code, event.reason);
    }

    onWebsocketClose(socket, code, reason) {
        if (socket !== this.socket) {
            return;   // a socket we already replaced or closed ourselves
        }
        this.socket = null;
        const opened = this.socketOpened;
        this.onDisconnected(code, reason);
        if (code === CloseCode.CLEAN && reason === OUTDATED_VERSION) {
            this.setState(State.OUTDATED);
            this.emit("outdated", { reason: "version" });
            return;
        }
        if (code === CloseCode.CLEAN) {
            this.setState(State.DISCONNECTED);   // a clean close is final (Odoo's rule)
            return;
        }
        if (code === CloseCode.SESSION_EXPIRED) {
            this.setState(State.WAITING_SESSION);
            this.emit("session_expired", {});
            return;
        }
        if (!opened) {
            this.onWebsocketFailure(code, reason);
            return;
        }
        this.scheduleReconnect(code, code === CloseCode.KEEP_ALIVE_TIMEOUT);
    }

    /** A websocket that never opened: retry, or move to long-polling if websockets never worked here. */
    onWebsocketFailure(code, reason) {
        this.failedOpens += 1;
        const mayFallBack = this.options.transport === "auto" && !this.websocketEverOpened;
        if (mayFallBack && this.failedOpens >= FAILED_OPENS_BEFORE_LONGPOLLING) {
            this.transport = "longpolling";
            this.emit("disconnect", { code, reason: "websockets cannot connect: falling back to long-polling" });
        }
        this.scheduleReconnect(code);
    }

    send(event) {
        if (this.socket && this.socket.readyState === WebSocket.OPEN) {
            this.socket.send(JSON.stringify(event));
            this.restartConnectionCheck();
            return true;
        }
        return false;
    }

    restartConnectionCheck() {
        this.stopConnectionCheck();
        this.connectionCheckTimer = setTimeout(() => {
            if (this.socket && this.socket.readyState === WebSocket.OPEN) {
                this.socket.send(new Uint8Array([0x00]));
                this.restartConnectionCheck();
            }
        }, CONNECTION_CHECK_DELAY);
    }

    stopConnectionCheck() {
        clearTimeout(this.connectionCheckTimer);
        this.connectionCheckTimer = null;
    }

    // -- subscription --------------------------------------------------------------------------

    scheduleSubscribe() {
        clearTimeout(this.subscribeTimer);
        this.subscribeTimer = setTimeout(() => this.flushSubscription(false), SUBSCRIBE_DEBOUNCE);
    }

    /** Send the union of the tabs' channels if it changed (or `force`, after a connection). */
    flushSubscription(force) {
        clearTimeout(this.subscribeTimer);
        const channels = this.channels();
        const key = JSON.stringify(channels);
        if (!force && key === this.lastSubscription) {
            return;
        }
        if (this.transport === "websocket") {
            if (this.send({ event_name: "subscribe", data: { channels, last: this.last } })) {
                this.lastSubscription = key;
            }
        } else if (this.transport === "longpolling" && this.poller && key !== this.poller.key) {
            this.poller.restart();   // the held poll asked for other channels
        }
        this.broadcastState();
    }

    deliver(batch) {
        const fresh = [];
        for (const notification of batch) {
            const id = Number(notification && notification.id);
            if (!Number.isInteger(id) || !this.recentIds.add(id)) {
                continue;
            }
            const message = notification.message || {};
            fresh.push({ id, type: message.type, payload: message.payload });
            // The id of the last notification received, not the highest: the server
            // sends in stream order, where a late commit follows higher ids, and maps
            // this id back to its place in the stream when we resume with it.
            this.last = id;
        }
        if (fresh.length) {
            this.broadcast({ type: "notifications", items: fresh, last: this.last });
        }
    }

    // -- presence ------------------------------------------------------------------------------

    inactivityPeriod() {
        return Math.max(0, Date.now() - this.lastActivity);
    }

    onActivity() {
        const wasAway = this.inactivityPeriod() > AWAY_DELAY;
        this.lastActivity = Date.now();
        if (wasAway || this.reportedStatus === "away") {
            this.reportPresence(false);
        }
    }

    updatePresence(inactivityPeriod) {
        this.lastActivity = Date.now() - Math.max(0, inactivityPeriod);
        this.reportPresence(true);
    }

    /** Send update_presence when the status changed since the last report (or `force`), debounced. */
    reportPresence(force) {
        if (this.transport !== "websocket") {
            return;   // long-polls carry the inactivity with every poll
        }
        clearTimeout(this.presenceTimer);
        this.presenceTimer = setTimeout(() => {
            const inactivity = this.inactivityPeriod();
            const status = inactivity > AWAY_DELAY ? "away" : "online";
            if (!force && status === this.reportedStatus) {
                return;
            }
            if (this.send({ event_name: "update_presence", data: { inactivity_period: inactivity } })) {
                this.reportedStatus = status;
            }
        }, PRESENCE_DEBOUNCE);
    }

    // -- long-polling --------------------------------------------------------------------------

    longpollingBase() {
        return this.options.busUrl || self.location.origin;
    }

    startLongPolling() {
        this.transport = "longpolling";
        if (!this.reconnecting) {
            this.setState(State.CONNECTING);
        }
        const poller = { abort: new AbortController(), key: null, current: null };
        // Stopping the loop also ends the poll it holds; restart() only ends that poll.
        poller.abort.signal.addEventListener("abort", () => poller.current && poller.current.abort());
        poller.restart = () => poller.current && poller.current.abort();
        this.poller = poller;
        this.runLongPolls(poller).catch(() => {});
    }

    async runLongPolls(poller) {
        const base = this.longpollingBase();
        const query = this.options.db ? `?db=${encodeURIComponent(this.options.db)}` : "";
        try {
            // Reachability first: an opaque answer is enough, and tells "connected" at once
            // instead of after a poll that may be held for 50 s.
            await fetch(`${base}/websocket/health`, { mode: "no-cors", cache: "no-store", signal: poller.abort.signal });
        } catch (error) {
            return this.onLongPollFailure(poller, 0, "the longpolling port cannot be reached");
        }
        if (this.poller !== poller) {
            return;
        }
        this.onConnected();
        let id = 0;
        while (this.poller === poller) {
            const one = new AbortController();
            poller.current = one;
            const channels = this.channels();
            poller.key = JSON.stringify(channels);
            this.broadcastState();
            let answer;
            try {
                const response = await fetch(`${base}/longpolling/poll${query}`, {
                    method: "POST",
                    // JSON-RPC routes take application/json only; on the other port the
                    // browser preflights it once (the answer is cached for two hours).
                    headers: { "Content-Type": "application/json" },
                    credentials: this.options.busUrl ? "include" : "same-origin",
                    body: JSON.stringify({ jsonrpc: "2.0", method: "call", id: ++id, params: {
                        channels, last: this.last,
                        options: { bus_inactivity: this.inactivityPeriod() } } }),
                    signal: one.signal,
                });
                answer = await response.json();
            } catch (error) {
                if (this.poller !== poller) {
                    return;
                }
                if (one.signal.aborted) {
                    continue;   // the channels changed: ask again with the new list
                }
                return this.onLongPollFailure(poller, 1006, String(error));
            }
            if (answer.error) {
                if (answer.error.code === 100) {
                    this.poller = null;
                    this.onDisconnected(CloseCode.SESSION_EXPIRED, "session expired");
                    this.setState(State.WAITING_SESSION);
                    this.emit("session_expired", {});
                    return;
                }
                return this.onLongPollFailure(poller, 1011, answer.error.data?.message || answer.error.message);
            }
            if (Array.isArray(answer.result)) {
                this.deliver(answer.result);
            }
        }
    }

    onLongPollFailure(poller, code, reason) {
        if (this.poller !== poller) {
            return;
        }
        this.poller = null;
        this.onDisconnected(code, reason);
        this.scheduleReconnect(code);
    }
}

/* Wire the worker to its tabs: SharedWorker connections, or this dedicated worker's own port. */
if (typeof SharedWorkerGlobalScope !== "undefined" && self instanceof SharedWorkerGlobalScope) {
    const worker = new BusWorker("shared");
    self.onconnect = (event) => worker.attach(event.ports[0]);
} else {
    const worker = new BusWorker("dedicated");
    worker.attach(self);
}
