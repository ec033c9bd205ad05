/*
 * demo.js: the live board served at /. It uses only the public tab API of rtbus-bus.js
 * and, when demo_mode is on, the /demo/* routes (a demo session, the people, publishing).
 * `window.rtbusDemo` exposes the bus and what the board saw, for curious people and tests.
 */
(function () {
    "use strict";

    const body = document.body.dataset;
    const demoMode = body.demoMode === "on";
    const PEOPLE_CHANNEL = "demo.people";
    const ROOMS = ["demo.lobby", "demo.random", "demo.builds"];
    const AWAY_INACTIVITY = 31 * 60 * 1000;
    const FEED_LIMIT = 150;
    const STATE_TEXT = {
        idle: "Idle", connecting: "Connecting…", connected: "Connected", reconnecting: "Reconnecting…",
        disconnected: "Disconnected", waiting_session: "Session expired", outdated: "Out of date",
    };

    const $ = (id) => document.getElementById(id);
    const people = new Map();        // partner_id -> {partner_id, name, color, status}
    const roomsOn = new Set(["demo.lobby"]);
    const demo = { bus: null, me: null, events: [], notifications: [], state: "idle" };
    window.rtbusDemo = demo;

    function requestedTransport() {
        const wanted = new URLSearchParams(location.search).get("transport");
        return ["auto", "websocket", "longpolling"].includes(wanted) ? wanted : "auto";
    }

    async function rpc(path, params = {}) {
        const response = await fetch(path, {
            method: "POST", credentials: "same-origin", headers: { "Content-Type": "application/json" },
            body: JSON.stringify({ jsonrpc: "2.0", method: "call", id: Date.now(), params }),
        });
        const answer = await response.json();
        if (answer.error) {
            throw new Error(answer.error.data?.message || answer.error.message);
        }
        return answer.result;
    }

    function clock(date = new Date()) {
        return date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
    }

    function el(tag, attributes = {}, ...children) {
        const node = document.createElement(tag);
        for (const [key, value] of Object.entries(attributes)) {
            if (key === "class") {
                node.className = value;
            } else if (key === "dataset") {
                Object.assign(node.dataset, value);
            } else {
                node.setAttribute(key, value);
            }
        }
        for (const child of children) {
            node.append(child instanceof Node ? child : document.createTextNode(String(child)));
        }
        return node;
    }

    function initials(name) {
        return (name || "?").trim().charAt(0).toUpperCase();
    }

    // -- connection state and events ---------------------------------------------------------

    function showState(message) {
        demo.state = message.state;
        const pill = $("conn");
        pill.dataset.state = message.state;
        let text = STATE_TEXT[message.state] || message.state;
        if (message.state === "connected" && message.transport === "longpolling") {
            text = "Connected (long-polling)";
        }
        $("conn-text").textContent = text;
        $("fact-transport").textContent = message.transport || "–";
        $("fact-worker").textContent = message.workerKind ? `${message.workerKind} worker` : "–";
        $("fact-tabs").textContent = String(message.tabs ?? "–");
        $("fact-last").textContent = String(message.last ?? 0);
        $("subscribed").textContent = (message.channels || []).join("\n") || "–";
    }

    function logEvent(name, detail, text) {
        demo.events.push({ name, detail, at: Date.now() });
        const list = $("events");
        list.prepend(el("li", { class: `ev-${name}` }, el("time", {}, clock()), el("span", {}, text)));
        while (list.children.length > 40) {
            list.lastChild.remove();
        }
    }

    function showOutdated(text) {
        $("outdated-text").textContent = text;
        $("outdated").hidden = false;
    }

    function wireConnectionEvents(bus) {
        bus.on("state", showState);
        bus.on("connect", (d) => logEvent("connect", d, `connected (${d.transport})`));
        bus.on("reconnect", (d) => logEvent("reconnect", d, `reconnected (${d.transport})`));
        bus.on("disconnect", (d) => logEvent("disconnect", d, `disconnected${d.code ? ` · ${d.code}` : ""}${d.reason ? ` ${d.reason}` : ""}`));
        bus.on("reconnecting", (d) => {
            logEvent("reconnecting", d, `reconnecting in ${(d.delay / 1000).toFixed(1)} s (attempt ${d.attempt})`);
            $("conn-text").textContent = `Reconnecting in ${Math.max(1, Math.round(d.delay / 1000))} s…`;
        });
        bus.on("outdated", (d) => {
            logEvent("outdated", d, d.reason === "version" ? "outdated: new server version" : "outdated: notifications were lost");
            showOutdated(d.reason === "version"
                ? "The server was upgraded since it was loaded: reload it to reconnect."
                : "Notifications were lost while it was disconnected: reload it to catch up.");
        });
        bus.on("session_expired", (d) => {
            logEvent("session_expired", d, "session expired");
            if (demoMode) {
                $("expired").hidden = false;
            }
        });
    }

    // -- notifications -------------------------------------------------------------------------

    function personName(partnerId) {
        const person = people.get(partnerId);
        return person ? person.name : `partner ${partnerId}`;
    }

    function describe(type, payload) {
        if (type === "demo/message") {
            const from = payload.from || {};
            return { kind: "message", channel: payload.channel,
                     body: [el("span", { class: "from", style: `color:${from.color || "inherit"}` }, from.name || "someone"),
                            ` ${payload.text}`] };
        }
        if (type === "bus.bus/im_status_updated") {
            return { kind: "presence", channel: "presence",
                     body: [`${personName(payload.partner_id)} is now `, el("strong", {}, payload.im_status)] };
        }
        if (type === "demo/joined") {
            return { kind: "joined", channel: PEOPLE_CHANNEL, body: [`${payload.name} joined the board`] };
        }
        const text = JSON.stringify(payload);
        return { kind: "other", channel: "", body: [text && text.length > 240 ? `${text.slice(0, 240)}…` : String(text)] };
    }

    function addToFeed(payload, { id, type }) {
        demo.notifications.push({ id, type, payload });
        const feed = $("feed");
        feed.querySelector(".empty")?.remove();
        const shown = describe(type, payload || {});
        const item = el("li", { class: "note", dataset: { id: String(id), type } },
            el("time", {}, clock()),
            el("div", { class: "meta" },
                el("span", { class: `type ${shown.kind}` }, type),
                el("span", { class: "channel" }, shown.channel || ""),
                el("span", { class: "id" }, `#${id}`)),
            el("div", { class: "body" }, ...shown.body));
        feed.prepend(item);
        while (feed.children.length > FEED_LIMIT) {
            feed.lastChild.remove();
        }
        $("feed-count").textContent = String(demo.notifications.length);
        $("fact-last").textContent = String(Math.max(id, Number($("fact-last").textContent) || 0));
    }

    // -- people --------------------------------------------------------------------------------

    function presenceChannel(partnerId) {
        return `odoo-presence-res.partner_${partnerId}`;
    }

    function upsertPerson(person) {
        const known = people.get(person.partner_id) || {};
        people.set(person.partner_id, Object.assign(known, person));
        demo.bus.addChannel(presenceChannel(person.partner_id));
        renderPeople();
    }

    function renderPeople() {
        const list = $("people");
        list.replaceChildren();
        const order = { online: 0, away: 1, offline: 2 };
        const sorted = [...people.values()].sort((a, b) =>
            (order[a.status] ?? 3) - (order[b.status] ?? 3) || a.name.localeCompare(b.name));
        for (const person of sorted) {
            const status = person.status || "offline";
            const isMe = demo.me && demo.me.partner_id === person.partner_id;
            list.append(el("li", { class: "person", dataset: { status, partner: String(person.partner_id) } },
                el("span", { class: "avatar small", style: `background:${person.color}` }, initials(person.name)),
                el("span", { class: "name" }, person.name, ...(isMe ? [el("span", { class: "you" }, "you")] : [])),
                el("span", { class: "state" }, el("span", { class: "status-dot", dataset: { status } }), status)));
            if (isMe) {
                $("me-dot").dataset.status = status;
                $("me-status").textContent = status;
            }
        }
        if (!sorted.length) {
            list.append(el("li", { class: "empty" }, "Nobody yet."));
        }
        $("people-count").textContent = String(people.size);
    }

    // -- channels and publishing ---------------------------------------------------------------

    function renderChannels() {
        const list = $("channels");
        list.replaceChildren();
        const rooms = [...new Set([...ROOMS, ...roomsOn])];
        for (const room of rooms) {
            const chip = el("li", { class: "chip", dataset: { on: String(roomsOn.has(room)), channel: room },
                                    role: "switch", "aria-checked": String(roomsOn.has(room)), tabindex: "0" }, room);
            chip.addEventListener("click", () => toggleRoom(room));
            list.append(chip);
        }
        list.append(el("li", { class: "chip", dataset: { on: "true", fixed: "true" },
                               title: "Joins and presence of demo people" }, PEOPLE_CHANNEL));
        const select = $("publish-channel");
        const previous = select.value;
        select.replaceChildren(...rooms.map((room) => el("option", { value: room }, room)));
        select.value = rooms.includes(previous) ? previous : "demo.lobby";
    }

    function toggleRoom(room) {
        if (roomsOn.has(room)) {
            roomsOn.delete(room);
            demo.bus.deleteChannel(room);
        } else {
            roomsOn.add(room);
            demo.bus.addChannel(room);
        }
        renderChannels();
    }

    function wireForms() {
        $("channel-form").addEventListener("submit", (event) => {
            event.preventDefault();
            const input = $("channel-input");
            const room = input.value.trim();
            if (/^demo\.[a-z0-9][a-z0-9-]{0,31}$/.test(room) && !roomsOn.has(room)) {
                toggleRoom(room);
                input.value = "";
            }
        });
        $("publish-form").addEventListener("submit", async (event) => {
            event.preventDefault();
            const input = $("publish-text");
            const text = input.value.trim();
            if (!text) {
                return;
            }
            $("publish-error").hidden = true;
            try {
                await rpc("/demo/publish", { channel: $("publish-channel").value, text });
                input.value = "";
            } catch (error) {
                $("publish-error").textContent = error.message;
                $("publish-error").hidden = false;
            }
        });
        $("away").addEventListener("click", () => demo.bus.updatePresence(AWAY_INACTIVITY));
        $("reload").addEventListener("click", () => location.reload());
        $("new-session").addEventListener("click", async () => {
            await signIn();
            $("expired").hidden = true;
            demo.bus.restart();
        });
    }

    // -- start ---------------------------------------------------------------------------------

    async function signIn() {
        const me = await rpc("/demo/session");
        demo.me = me;
        $("me-name").textContent = me.name;
        $("me-avatar").textContent = initials(me.name);
        $("me-avatar").style.background = me.color;
        upsertPerson(me);
    }

    async function start() {
        const bus = new RtbusBus({
            workerUrl: body.workerUrl, busUrl: body.busUrl, version: body.workerVersion, db: body.db,
            transport: requestedTransport(),
        });
        demo.bus = bus;
        $("fact-url").textContent = body.busUrl || location.origin;
        wireConnectionEvents(bus);
        wireForms();
        bus.subscribe("*", addToFeed);
        bus.subscribe("demo/joined", (payload) => upsertPerson(payload));
        bus.subscribe("bus.bus/im_status_updated", (payload) => {
            if (people.has(payload.partner_id)) {
                upsertPerson({ partner_id: payload.partner_id, status: payload.im_status });
            }
        });
        if (demoMode) {
            try {
                await signIn();
                const { people: known } = await rpc("/demo/people");
                known.forEach(upsertPerson);
            } catch (error) {
                logEvent("disconnect", {}, `demo sign-in failed: ${error.message}`);
            }
            bus.addChannel(PEOPLE_CHANNEL, ...roomsOn);
        } else {
            $("demo-off").hidden = false;
            $("publish-button").disabled = true;
            $("away").disabled = true;
        }
        renderChannels();
        bus.start();
    }

    start();
})();
