// Browser client for the gateway's WebSocket transport (`GET /ws`). One ES module, no
// dependencies. The wire protocol is documented in shared/src/ws.rs.
//
//   import { connect } from "/client.js";
//   const client = connect("/ws", { token });   // a string, or a function (async or not)
//                                                // that mints one: called at every connect and
//                                                // when the gateway warns that it expires
//   const sub = client.subscribe("news", (e) => console.log(e.id, e.data));
//   await client.publish("news", "hello");   // only where the gateway allows client publishing
//   const { count, clients } = await client.presence("chat:1");   // where presence is tracked
//   client.subscribe("chat:1", onEvent, { onJoin: (who) => ..., onLeave: (who) => ... });
//
// What it adds over a bare WebSocket: reconnection with backoff, and resuming every channel
// from the last id it delivered, so the app sees each event exactly once across reconnects
// (the server guarantees that; this client deliberately never drops or de-duplicates).
//
// Fallback: where no WebSocket gets through (none in the browser, or `fallbackAfter` attempts
// in a row that never opened, as behind a proxy that breaks upgrades and streams), the client
// switches to long polling (`GET /poll`, module ./client-poll.js, loaded only then) with the
// same API and the same exactness. `transport: "poll"` forces it, `"ws"` forbids it.

const encoder = new TextEncoder();
const decoder = new TextDecoder();

// 4000–4499 ask for a reconnect, 4500–4999 forbid one, as do 1008 (policy) and 1009 (too big):
// reconnecting would only repeat the same refusal.
const shouldReconnect = (code) => !(code >= 4500 && code <= 4999) && code !== 1008 && code !== 1009;

// Subscribe errors worth retrying on the same connection (the store was briefly unreachable);
// anything else (forbidden, bad_position, too_many_channels, ...) ends the subscription.
const TRANSIENT = new Set(["unavailable", "shutting_down", "rate_limited", "closed"]);

const HEARTBEAT_TIMEOUT = 4002;
const WS_OPEN = 1; // WebSocket.OPEN, without needing the global (absent where we fall back)
const TOKEN_EXPIRED = 4501;

function failure(code, message, channel) {
  return Object.assign(new Error(message), { code, channel });
}

// Runs an app callback so that an exception in it cannot break the client's bookkeeping.
function call(fn, ...args) {
  if (!fn) return;
  try {
    fn(...args);
  } catch (e) {
    reportError(e);
  }
}

// "/ws" or "http://host/ws" → "ws://host/ws"; the token goes in the query because browsers
// cannot set headers on a WebSocket handshake.
function socketUrl(url, token) {
  const u = new URL(url, globalThis.location?.href);
  if (u.protocol === "http:") u.protocol = "ws:";
  if (u.protocol === "https:") u.protocol = "wss:";
  if (token) u.searchParams.set("token", token);
  return u.href;
}

// Server → client binary event: [1][len][channel][len][id][len][event name] payload...
function decodeBinaryEvent(buffer) {
  const bytes = new Uint8Array(buffer);
  if (bytes[0] !== 1) throw new Error(`unknown binary frame kind ${bytes[0]}`);
  let at = 1;
  const field = () => {
    const len = bytes[at];
    if (len === undefined || at + 1 + len > bytes.length) throw new Error("truncated binary frame");
    const text = decoder.decode(bytes.subarray(at + 1, at + 1 + len));
    at += 1 + len;
    return text;
  };
  const channel = field();
  const id = field();
  const event = field() || undefined;
  return { channel, id, event, data: bytes.slice(at), binary: true };
}

// Client → server binary publish: [2][len][channel][len][event name][len][req] payload...
function encodeBinaryPublish(channel, event, req, data) {
  const fields = [channel, event || "", req].map((s) => encoder.encode(s));
  if (fields.some((f) => f.length > 255)) throw failure("field_too_long", "binary frame fields are at most 255 bytes", channel);
  const payload = ArrayBuffer.isView(data)
    ? new Uint8Array(data.buffer, data.byteOffset, data.byteLength)
    : new Uint8Array(data);
  const frame = new Uint8Array(1 + fields.reduce((n, f) => n + 1 + f.length, 0) + payload.length);
  let at = 0;
  frame[at++] = 2;
  for (const f of fields) {
    frame[at++] = f.length;
    frame.set(f, at);
    at += f.length;
  }
  frame.set(payload, at);
  return frame;
}

export function connect(url, options = {}) {
  return new Client(url, options);
}

class Client {
  #url;
  #opts;
  #state = "connecting";
  #finished = false; // closed for good: by close() or by a no-reconnect close code
  #ws = null;
  #attempt = 0; // consecutive failed connections, for backoff
  #timer = null; // pending reconnect
  #pinger = null;
  #deadline = null; // handshake deadline, then pong deadline
  #nextReq = 1;
  #pending = new Map(); // String(req) → { resolve, reject } | { sub } | { unsubscribed: channel }
  #outbox = []; // publish frames written while not yet open
  #subs = new Map(); // channel → subscription record
  #positions = new Map(); // channel → last id seen (kept after unsubscribe)
  #draining = new Map(); // channel → unsubscribes not yet acknowledged on this socket
  #listeners = new Map(); // type → Set of callbacks
  #poller = null; // the long-poll loop, once fallen back
  #polling = false; // falling back or fallen back: reads go over HTTP
  #everOpened = false; // a WebSocket opened at least once: failures are outages, not a proxy
  #wsFailures = 0; // WebSocket attempts in a row that never opened

  // connectTimeout (an extra, defaulting to pongTimeout): a stalled server can hold a browser's
  // WebSocket handshake for minutes, so we impose our own deadline.
  // transport: "auto" (WebSocket, falling back to long polling), "ws" or "poll"; pollTimeout:
  // seconds a poll waits for the next event (the gateway bounds it).
  constructor(url, { token, minDelay = 250, maxDelay = 10000, pingInterval = 15000, pongTimeout = 10000, connectTimeout = pongTimeout, transport = "auto", fallbackAfter = 2, pollTimeout = 25 } = {}) {
    this.#url = url;
    const scheme = new URL(socketUrl(url)).protocol; // throws now, not on every retry, for a bad URL
    if (scheme !== "ws:" && scheme !== "wss:") throw new TypeError(`not a WebSocket URL: ${url}`);
    this.#opts = { token, minDelay, maxDelay, pingInterval, pongTimeout, connectTimeout, transport, fallbackAfter, pollTimeout };
    if (transport === "poll" || (transport === "auto" && typeof globalThis.WebSocket !== "function")) this.#fallBack();
    else this.#open();
  }

  // "ws" or "poll": what the client uses now.
  get transport() {
    return this.#poller ? "poll" : "ws";
  }

  get state() {
    return this.#state;
  }

  // Types: "state" (state, info) and "error" ({ code, message, channel }) for server errors
  // that belong to no request or subscription. Returns a function that removes the listener.
  on(type, fn) {
    if (!this.#listeners.has(type)) this.#listeners.set(type, new Set());
    this.#listeners.get(type).add(fn);
    return () => this.#listeners.get(type).delete(fn);
  }

  // latest: start with the channel's last N events (when there is no `since`). onJoin/onLeave
  // (entry, event): a channel's presence.join / presence.leave events go there instead of to
  // onEvent; entry is { conn, sub, info }.
  subscribe(channel, onEvent, { since, latest, onGap, onSubscribed, onError, onJoin, onLeave } = {}) {
    if (this.#subs.has(channel)) throw failure("already_subscribed", `already subscribed to ${channel}`, channel);
    const sub = { channel, onEvent, onGap, onSubscribed, onError, onJoin, onLeave, position: since || undefined, latest, retries: 0, retry: null };
    if (this.#finished) {
      queueMicrotask(() => call(onError, { code: "closed", message: "the client is closed" }));
      return { channel, position: sub.position, unsubscribe() {} };
    }
    this.#subs.set(channel, sub);
    if (sub.position) this.#positions.set(channel, sub.position);
    if (this.#poller) {
      this.#poller.wake();
    } else if (this.#isOpen()) {
      this.#sendSubscribe(sub);
    } // otherwise it is sent on open, with everything else
    return {
      channel,
      get position() {
        return sub.position;
      },
      unsubscribe: () => this.#unsubscribe(sub),
    };
  }

  unsubscribe(channel) {
    const sub = this.#subs.get(channel);
    if (sub) this.#unsubscribe(sub);
  }

  position(channel) {
    return this.#positions.get(channel);
  }

  // One page of a channel's history: { events, gap?, next, head, more } (see GET /history).
  history(channel, { since, limit } = {}) {
    if (this.#polling) return this.#fetchJson("history", channel, { since, limit });
    return this.#request((req) => JSON.stringify({ type: "history", channel, since, limit, req }));
  }

  // Who is subscribed to a channel right now, on every instance: { channel, count, clients? }
  // (clients: [{ conn, sub, info }], absent past the gateway's presence.max_entries).
  presence(channel) {
    if (this.#polling) return this.#fetchJson("presence", channel, {});
    return this.#request((req) => JSON.stringify({ type: "presence", channel, req }));
  }

  publish(channel, data, { event } = {}) {
    return this.#request((req) => JSON.stringify({ type: "publish", channel, data, event, req }));
  }

  publishBinary(channel, bytes, { event } = {}) {
    // The binary frame carries req as text; the server echoes it back as a JSON string.
    return this.#request((req) => encodeBinaryPublish(channel, event, String(req), bytes));
  }

  close() {
    if (this.#finished) return;
    this.#finished = true;
    clearTimeout(this.#timer);
    this.#poller?.stop();
    const ws = this.#ws;
    this.#detach(ws, 1000, "client closed");
    ws?.close(1000, "client closed");
    this.#setState("closed", { code: 1000, reason: "client closed" });
  }

  // ---- connection lifecycle ----

  async #open() {
    this.#timer = null;
    let ws;
    try {
      const token = typeof this.#opts.token === "function" ? await this.#opts.token() : this.#opts.token;
      if (this.#finished) return;
      ws = new WebSocket(socketUrl(this.#url, token));
    } catch (e) {
      // A bad URL or a failing token callback: back off like a failed connection.
      this.#reconnect(1006, String(e?.message ?? e));
      return;
    }
    this.#ws = ws;
    ws.binaryType = "arraybuffer";
    ws.onopen = () => this.#onOpen(ws);
    ws.onmessage = (e) => this.#onMessage(e.data);
    ws.onclose = (e) => this.#lost(ws, e.code, e.reason);
    this.#deadline = setTimeout(() => this.#giveUp(ws, "no answer to the handshake within connectTimeout"), this.#opts.connectTimeout);
  }

  // Abandons a socket that stopped answering, without waiting for a closing handshake its peer
  // will never complete (a browser can wait a minute for one), and reconnects.
  #giveUp(ws, reason) {
    this.#lost(ws, HEARTBEAT_TIMEOUT, reason);
    ws.close(HEARTBEAT_TIMEOUT, "heartbeat timeout");
  }

  #onOpen(ws) {
    clearTimeout(this.#deadline); // the handshake deadline
    this.#deadline = null;
    this.#attempt = 0;
    this.#everOpened = true;
    this.#wsFailures = 0;
    this.#setState("open", {});
    for (const sub of this.#subs.values()) this.#sendSubscribe(sub);
    for (const frame of this.#outbox.splice(0)) ws.send(frame);
    // Liveness: a socket can look open long after its peer vanished (failover, NAT timeout).
    // Any incoming message proves life; the ping guarantees there is one to wait for.
    this.#pinger = setInterval(() => {
      this.#send({ type: "ping" });
      this.#deadline ??= setTimeout(() => this.#giveUp(ws, "no pong within pongTimeout"), this.#opts.pongTimeout);
    }, this.#opts.pingInterval);
  }

  // The socket ended (or we gave up on it): fail what was in flight, then reconnect or stop.
  #lost(ws, code, reason) {
    if (ws !== this.#ws) return; // a socket we already dropped
    this.#detach(ws, code, reason);
    if (this.#finished) return;
    // An expired token ends the connection for good, unless the app gave a token callback
    // that can mint a fresh one for the reconnect.
    const refreshable = code === TOKEN_EXPIRED && typeof this.#opts.token === "function";
    if (!shouldReconnect(code) && !refreshable) {
      this.#finished = true;
      for (const sub of this.#subs.values()) call(sub.onError, { code, message: reason || `closed with code ${code}` });
      this.#setState("closed", { code, reason });
      return;
    }
    if (!this.#everOpened && this.#opts.transport === "auto" && ++this.#wsFailures >= this.#opts.fallbackAfter) {
      this.#fallBack();
      return;
    }
    this.#reconnect(code, reason);
  }

  // ---- long-poll fallback ----

  async #fallBack() {
    this.#polling = true;
    this.#setState("connecting", { transport: "poll" });
    let poll;
    try {
      poll = await import(new URL("./client-poll.js", import.meta.url).href);
    } catch (e) {
      this.#reconnect(1006, `cannot load the long-poll transport: ${e?.message ?? e}`);
      return;
    }
    if (this.#finished) return;
    const client = this;
    this.#poller = poll.startPolling(poll.pollUrl(socketUrl(this.#url)), { timeout: this.#opts.pollTimeout }, {
      subs: () => this.#subs,
      token: async () => (typeof this.#opts.token === "function" ? await this.#opts.token() : this.#opts.token),
      opened() {
        if (client.#state !== "open") client.#setState("open", { transport: "poll" });
      },
      lost: (info) => this.#setState("connecting", { transport: "poll", ...info }),
      fatal: ({ code, reason }) => {
        this.#finished = true;
        this.#poller.stop();
        for (const sub of this.#subs.values()) call(sub.onError, { code, message: reason });
        this.#setState("closed", { code, reason });
      },
      delivered: (event) => this.#deliver(event),
      gap: (msg) => call(this.#subs.get(msg.channel)?.onGap, { channel: msg.channel, first_available: msg.first_available }),
      subscribed: (sub, position) => {
        this.#positions.set(sub.channel, position);
        call(sub.onSubscribed, { channel: sub.channel, position, recovered: false });
      },
      failed: (sub, error) => {
        if (this.#subs.get(sub.channel) === sub) this.#subs.delete(sub.channel);
        call(sub.onError, error);
      },
      backoff: (n) => this.#backoff(n),
    });
  }

  // GET /<path>?channel=...&<params> beside the WebSocket URL, with the token.
  async #fetchJson(path, channel, params) {
    const u = new URL(socketUrl(this.#url));
    u.protocol = u.protocol === "wss:" ? "https:" : "http:";
    u.pathname = u.pathname.replace(/\/ws$/, "") + "/" + path;
    u.search = "";
    u.searchParams.set("channel", channel);
    for (const [k, v] of Object.entries(params)) if (v) u.searchParams.set(k, v);
    const token = typeof this.#opts.token === "function" ? await this.#opts.token() : this.#opts.token;
    const res = await fetch(u, { headers: token ? { authorization: `Bearer ${token}` } : {}, cache: "no-store" });
    const body = await res.json();
    if (!res.ok) throw failure(body.error, body.detail, channel);
    return body;
  }

  #detach(ws, code, reason) {
    if (ws) ws.onopen = ws.onmessage = ws.onclose = null;
    this.#ws = null;
    clearInterval(this.#pinger);
    clearTimeout(this.#deadline);
    this.#deadline = null;
    this.#draining.clear();
    for (const sub of this.#subs.values()) clearTimeout(sub.retry);
    // Publishes are not retried: the app cannot know whether one was stored, so it decides.
    const error = failure("disconnected", `connection closed (${code}${reason ? ": " + reason : ""}) before a reply`);
    for (const entry of this.#pending.values()) entry.reject?.(error);
    this.#pending.clear();
    this.#outbox = [];
  }

  #reconnect(code, reason) {
    const delay = this.#backoff(this.#attempt++);
    this.#setState("connecting", { attempt: this.#attempt, delay, code, reason });
    this.#timer = setTimeout(() => this.#open(), delay);
  }

  // Full jitter: random(0, min(maxDelay, minDelay * 2^n)), so a crowd of clients that lost the
  // same instance does not come back in lockstep.
  #backoff(n) {
    return Math.random() * Math.min(this.#opts.maxDelay, this.#opts.minDelay * 2 ** n);
  }

  #setState(state, info) {
    this.#state = state;
    this.#emit("state", state, info);
  }

  #emit(type, ...args) {
    for (const fn of [...(this.#listeners.get(type) ?? [])]) call(fn, ...args);
  }

  #isOpen() {
    return this.#state === "open" && this.#ws?.readyState === WS_OPEN;
  }

  // ---- commands ----

  #send(message) {
    message.req ??= this.#nextReq++;
    this.#ws.send(JSON.stringify(message));
    return String(message.req);
  }

  #sendSubscribe(sub) {
    // `since` is the last id delivered (or the subscription's start): the server resumes right
    // after it, which is what makes reconnects lossless and duplicate-free.
    const req = this.#send({ type: "subscribe", channel: sub.channel, since: sub.position, latest: sub.position ? undefined : sub.latest });
    this.#pending.set(req, { sub });
  }

  #unsubscribe(sub) {
    if (this.#subs.get(sub.channel) !== sub) return;
    this.#subs.delete(sub.channel);
    clearTimeout(sub.retry);
    if (this.#poller) {
      this.#poller.wake();
    } else if (this.#isOpen()) {
      // Events of this subscription may already be on the wire; until the server acknowledges,
      // frames for the channel belong to it, not to a new subscription to the same channel.
      this.#draining.set(sub.channel, (this.#draining.get(sub.channel) ?? 0) + 1);
      const req = this.#send({ type: "unsubscribe", channel: sub.channel });
      this.#pending.set(req, { unsubscribed: sub.channel });
    }
  }

  #request(frameFor) {
    if (this.#finished) return Promise.reject(failure("closed", "the client is closed"));
    if (this.#polling) return Promise.reject(failure("not_websocket", "publishing needs the WebSocket; this client fell back to long polling"));
    return new Promise((resolve, reject) => {
      const req = this.#nextReq++;
      const frame = frameFor(req); // may throw: the promise rejects
      this.#pending.set(String(req), { resolve, reject });
      if (this.#isOpen()) this.#ws.send(frame);
      else this.#outbox.push(frame); // sent on open; rejected if this attempt fails
    });
  }

  // ---- incoming ----

  #onMessage(raw) {
    clearTimeout(this.#deadline); // anything at all proves the connection alive
    this.#deadline = null;
    if (typeof raw !== "string") {
      let event;
      try {
        event = decodeBinaryEvent(raw);
      } catch (e) {
        this.#emit("error", { code: "bad_binary", message: e.message });
        return;
      }
      this.#deliver(event);
      return;
    }
    let msg;
    try {
      msg = JSON.parse(raw);
    } catch (e) {
      this.#emit("error", { code: "bad_json", message: e.message });
      return;
    }
    const entry = msg.req === undefined ? undefined : this.#pending.get(String(msg.req));
    if (entry) this.#pending.delete(String(msg.req));
    switch (msg.type) {
      case "event":
        this.#deliver({ channel: msg.channel, id: msg.id, event: msg.event, data: msg.data, binary: false });
        break;
      case "gap": {
        const sub = this.#current(msg.channel);
        call(sub?.onGap, { channel: msg.channel, first_available: msg.first_available });
        break;
      }
      case "subscribed": {
        const sub = entry?.sub;
        if (!sub || this.#subs.get(sub.channel) !== sub) break;
        // Subscribed precedes the subscription's events, and its position is where they start:
        // adopting it lets a fresh subscription resume after a reconnect instead of starting
        // over at the head (which would skip whatever was published while disconnected).
        sub.position = msg.position;
        sub.retries = 0;
        this.#positions.set(sub.channel, msg.position);
        call(sub.onSubscribed, { channel: msg.channel, position: msg.position, recovered: msg.recovered });
        break;
      }
      case "unsubscribed":
        if (msg.reason) {
          // A fresh token no longer allows the channel: the subscription ends here.
          const sub = this.#subs.get(msg.channel);
          if (sub) {
            this.#subs.delete(msg.channel);
            call(sub.onError, { code: msg.reason, message: `no longer allowed: ${msg.channel}` });
          }
        } else {
          this.#acknowledgeUnsubscribe(entry);
        }
        break;
      case "token_expiring":
        // With a token callback, refresh in place: the connection and its subscriptions go on.
        if (typeof this.#opts.token === "function") this.#refreshToken();
        break;
      case "published":
        entry?.resolve?.(msg.id);
        break;
      case "history":
      case "presence": {
        const { type, req, ...answer } = msg;
        entry?.resolve?.(answer);
        break;
      }
      case "error":
        this.#onError(msg, entry);
        break;
      // "pong": nothing to do beyond having arrived.
    }
  }

  async #refreshToken() {
    const ws = this.#ws;
    try {
      const token = await this.#opts.token();
      if (ws === this.#ws && ws?.readyState === WS_OPEN) ws.send(JSON.stringify({ type: "auth", token }));
    } catch (e) {
      reportError(e); // the connection closes at exp with 4501 and reconnects with a new token
    }
  }

  #current(channel) {
    return this.#draining.get(channel) ? undefined : this.#subs.get(channel);
  }

  #deliver(event) {
    const sub = this.#current(event.channel);
    if (!sub) return; // the app unsubscribed; the frame was already on its way
    sub.position = event.id;
    this.#positions.set(event.channel, event.id);
    const onPresence = event.event === "presence.join" ? sub.onJoin : event.event === "presence.leave" ? sub.onLeave : undefined;
    if (onPresence) call(onPresence, event.data, event);
    else call(sub.onEvent, event);
  }

  #acknowledgeUnsubscribe(entry) {
    const channel = entry?.unsubscribed;
    if (channel === undefined) return;
    const left = (this.#draining.get(channel) ?? 1) - 1;
    if (left > 0) this.#draining.set(channel, left);
    else this.#draining.delete(channel);
  }

  #onError(msg, entry) {
    const error = { code: msg.code, message: msg.message };
    if (entry?.reject) {
      entry.reject(failure(msg.code, msg.message, msg.channel));
    } else if (entry?.sub) {
      const sub = entry.sub;
      if (this.#subs.get(sub.channel) !== sub) return;
      call(sub.onError, error);
      if (TRANSIENT.has(msg.code)) {
        // The server dropped the subscription; ask again later on this same connection.
        sub.retry = setTimeout(() => this.#isOpen() && this.#sendSubscribe(sub), this.#backoff(sub.retries++));
      } else {
        this.#subs.delete(sub.channel);
      }
    } else if (entry?.unsubscribed !== undefined) {
      this.#acknowledgeUnsubscribe(entry);
    } else {
      // No request to pin it on (e.g. rate_limited carries no req): tell whoever listens.
      this.#emit("error", { ...error, channel: msg.channel });
    }
  }
}
