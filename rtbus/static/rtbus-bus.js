/*
 * rtbus-bus.js: the tab side of the rtbus browser client. No build step, no dependency.
 *
 *   const bus = new RtbusBus({
 *       workerUrl: "/static/rtbus-worker.js",   // must be on the page's origin
 *       busUrl: "",              // origin of /websocket and /longpolling; "" = the page's
 *       version: "19.0-2",       // the worker version the server expects
 *       db: "",                  // database, when the server serves several
 *       transport: "auto",       // "auto" | "websocket" | "longpolling"
 *   });
 *   bus.on("connect", (detail) => ...);   // also disconnect, reconnecting, reconnect,
 *                                         // outdated, session_expired, state
 *   bus.subscribe("demo/message", (payload, {id, type}) => ...);   // "*" for every type
 *   bus.addChannel("demo.lobby");  bus.deleteChannel("demo.lobby");
 *   bus.start();
 *   bus.updatePresence(inactivityMs);   // activity is reported by itself
 *
 * Every tab of a browser shares one connection, held by rtbus-worker.js in a
 * SharedWorker (a dedicated Worker per tab where SharedWorker is missing). The last
 * notification id is kept in localStorage too, so a browser that closed every tab
 * continues where it stopped.
 */
(function (global) {
    "use strict";

    const ACTIVITY_THROTTLE = 5000;
    const ACTIVITY_EVENTS = ["pointerdown", "keydown", "wheel", "touchstart"];
    const LAST_KEY = "rtbus.last_notification_id";

    function randomId() {
        if (global.crypto && global.crypto.randomUUID) {
            return global.crypto.randomUUID();
        }
        return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
    }

    class RtbusBus {
        constructor(options = {}) {
            this.options = {
                workerUrl: options.workerUrl || "/static/rtbus-worker.js",
                busUrl: options.busUrl || "",
                version: options.version || "",
                db: options.db || "",
                transport: options.transport || "auto",
            };
            this.clientId = randomId();
            this.channels = new Set();
            this.listeners = new Map();     // event name -> Set of callbacks
            this.handlers = new Map();      // notification type -> Set of callbacks
            this.port = null;
            this.workerKind = null;
            this.state = { state: "idle", channels: [], last: 0 };
            this.lastActivityReport = 0;
            this.onActivity = this.onActivity.bind(this);
            this.onPageHide = this.onPageHide.bind(this);
        }

        // -- public API ---------------------------------------------------------------------

        /** Call `callback(detail)` on `name`; returns a function that removes it. */
        on(name, callback) {
            return this.register(this.listeners, name, callback);
        }

        /** Call `callback(payload, {id, type})` for each notification of `type` ("*": all). */
        subscribe(type, callback) {
            return this.register(this.handlers, type, callback);
        }

        addChannel(...channels) {
            const added = channels.filter((c) => typeof c === "string" && !this.channels.has(c));
            added.forEach((c) => this.channels.add(c));
            if (added.length) {
                this.post({ type: "add_channels", channels: added });
            }
        }

        deleteChannel(...channels) {
            const removed = channels.filter((c) => this.channels.has(c));
            removed.forEach((c) => this.channels.delete(c));
            if (removed.length) {
                this.post({ type: "remove_channels", channels: removed });
            }
        }

        /** Report the user's inactivity (ms) now, overriding the measured one until the next activity. */
        updatePresence(inactivityPeriod) {
            this.post({ type: "update_presence", inactivityPeriod });
        }

        /** Reconnect now: after the page obtained a new session (following `session_expired`). */
        restart() {
            this.post({ type: "restart" });
        }

        start() {
            if (this.port) {
                return;
            }
            this.port = this.openWorker();
            this.post({ type: "hello", clientId: this.clientId, options: this.options,
                        last: this.storedLast(), channels: [...this.channels] });
            ACTIVITY_EVENTS.forEach((name) => global.addEventListener(name, this.onActivity, { passive: true }));
            global.addEventListener("pagehide", this.onPageHide);
        }

        stop() {
            if (!this.port) {
                return;
            }
            this.post({ type: "leave" });
            ACTIVITY_EVENTS.forEach((name) => global.removeEventListener(name, this.onActivity));
            global.removeEventListener("pagehide", this.onPageHide);
            if (this.dedicatedWorker) {
                this.dedicatedWorker.terminate();
            }
            this.port = null;
        }

        // -- the worker ---------------------------------------------------------------------

        workerName() {
            const o = this.options;
            return `rtbus:${o.db}:${o.version}:${o.transport}:${o.busUrl}`;
        }

        openWorker() {
            if (typeof global.SharedWorker === "function") {
                try {
                    const shared = new global.SharedWorker(this.options.workerUrl, { name: this.workerName() });
                    shared.onerror = () => this.fallBackToDedicatedWorker();
                    shared.port.onmessage = (event) => this.onWorkerMessage(event.data);
                    shared.port.start();
                    this.workerKind = "shared";
                    return shared.port;
                } catch (error) {
                    // Some browsers expose SharedWorker but refuse it here: use a dedicated one.
                }
            }
            return this.openDedicatedWorker();
        }

        openDedicatedWorker() {
            const worker = new global.Worker(this.options.workerUrl, { name: this.workerName() });
            worker.onmessage = (event) => this.onWorkerMessage(event.data);
            this.dedicatedWorker = worker;
            this.workerKind = "dedicated";
            return worker;
        }

        fallBackToDedicatedWorker() {
            if (this.workerKind !== "shared") {
                return;
            }
            this.port = this.openDedicatedWorker();
            this.post({ type: "hello", clientId: this.clientId, options: this.options,
                        last: this.storedLast(), channels: [...this.channels] });
        }

        post(message) {
            if (this.port) {
                this.port.postMessage(Object.assign({ clientId: this.clientId }, message));
            }
        }

        onWorkerMessage(message) {
            if (!message) {
                return;
            }
            if (message.type === "state") {
                this.state = message;
                this.emit("state", message);
            } else if (message.type === "event") {
                this.emit(message.name, message.detail || {});
            } else if (message.type === "notifications") {
                this.storeLast(message.last);
                for (const item of message.items) {
                    this.dispatch(item);
                }
            }
        }

        dispatch(item) {
            const meta = { id: item.id, type: item.type };
            for (const key of [item.type, "*"]) {
                for (const callback of this.handlers.get(key) || []) {
                    this.safely(callback, item.payload, meta);
                }
            }
        }

        emit(name, detail) {
            for (const callback of this.listeners.get(name) || []) {
                this.safely(callback, detail);
            }
        }

        safely(callback, ...args) {
            try {
                callback(...args);
            } catch (error) {
                console.error("rtbus: a bus callback failed", error);
            }
        }

        register(map, key, callback) {
            if (!map.has(key)) {
                map.set(key, new Set());
            }
            map.get(key).add(callback);
            return () => map.get(key).delete(callback);
        }

        // -- shared bookkeeping -------------------------------------------------------------

        lastKey() {
            return `${LAST_KEY}:${this.options.db}`;
        }

        storedLast() {
            try {
                return Number(global.localStorage.getItem(this.lastKey())) || 0;
            } catch (error) {
                return 0;   // storage disabled: the worker's own count still holds
            }
        }

        storeLast(last) {
            try {
                // The last one received (stream order), which is not always the highest.
                if (Number(last) > 0) {
                    global.localStorage.setItem(this.lastKey(), String(last));
                }
            } catch (error) {
                // storage disabled or full: nothing to keep
            }
        }

        onActivity() {
            const now = Date.now();
            if (now - this.lastActivityReport >= ACTIVITY_THROTTLE) {
                this.lastActivityReport = now;
                this.post({ type: "activity" });
            }
        }

        onPageHide(event) {
            if (!event.persisted) {
                this.post({ type: "leave" });
            }
        }
    }

    global.RtbusBus = RtbusBus;
})(typeof window !== "undefined" ? window : self);
