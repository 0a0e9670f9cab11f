// Long-poll transport of /client.js, loaded only when neither a WebSocket nor streaming gets
// through (a proxy that buffers or cuts streams): `GET /poll` with the cursor of every
// subscribed channel. The server keeps nothing between polls, so any instance answers, and
// each event arrives exactly once, as over the WebSocket. See the gateway's README, "Long poll".

// A page's `next` lists one position per channel, in sorted channel order (the cursor).
const sorted = (channels) => [...channels].sort();

function base64Bytes(text) {
  const raw = atob(text);
  const bytes = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
  return bytes;
}

// The poll URL beside the WebSocket URL: "ws://host/ws" → "http://host/poll".
export function pollUrl(socketUrl) {
  const u = new URL(socketUrl, globalThis.location?.href);
  if (u.protocol === "ws:") u.protocol = "http:";
  if (u.protocol === "wss:") u.protocol = "https:";
  u.pathname = u.pathname.replace(/\/ws$/, "") + "/poll";
  u.search = "";
  return u.href;
}

// Runs the poll loop for `host`, the client's side of it:
//   subs() → Map channel → { channel, position, latest }; token() → token or undefined;
//   opened(); lost(info); fatal(info); delivered(event); gap(msg); subscribed(sub, position);
//   failed(sub, error); backoff(n) → ms.
// Returns { wake() (the subscriptions changed: start a new poll), stop() }.
export function startPolling(url, { timeout }, host) {
  let stopped = false;
  let inflight = null; // AbortController of the current request
  let wakeUp = null; // resolves an idle wait

  const wake = () => {
    inflight?.abort();
    wakeUp?.();
  };
  const idle = (ms) =>
    new Promise((resolve) => {
      const timer = ms === undefined ? undefined : setTimeout(resolve, ms);
      wakeUp = () => {
        clearTimeout(timer);
        resolve();
      };
    });

  async function get(channels, params) {
    const u = new URL(url);
    for (const c of channels) u.searchParams.append("channel", c);
    for (const [k, v] of Object.entries(params)) if (v !== undefined) u.searchParams.set(k, v);
    // Made before anything is awaited, so a change of subscriptions meanwhile aborts this one.
    const controller = (inflight = new AbortController());
    const headers = {};
    const token = await host.token();
    if (token) headers.authorization = `Bearer ${token}`;
    const res = await fetch(u, { headers, cache: "no-store", signal: controller.signal });
    const body = await res.json().catch(() => ({}));
    return { status: res.status, body };
  }

  // Applies one page: its messages in order, then every channel's position from `next` — only
  // to the subscriptions the request was made for (`asked`: channel → subscription), not to
  // one that replaced them meanwhile.
  function apply(channels, page, asked) {
    const current = (channel) => asked.get(channel) !== undefined && host.subs().get(channel) === asked.get(channel);
    for (const m of page.messages ?? []) {
      if (!current(m.channel)) continue;
      if (m.type === "event") {
        const binary = m.binary === true;
        host.delivered({ channel: m.channel, id: m.id, event: m.event, data: binary ? base64Bytes(m.data) : m.data, binary });
      } else if (m.type === "gap") {
        host.gap(m);
      }
    }
    const positions = String(page.next ?? "").split(",");
    channels.forEach((c, i) => {
      if (current(c) && positions[i]) asked.get(c).position = positions[i];
    });
  }

  async function loop() {
    let attempt = 0;
    while (!stopped) {
      const subs = [...host.subs().values()];
      if (subs.length === 0) {
        host.opened();
        await idle();
        continue;
      }
      // A channel without a position first learns where it starts (and, with `latest`, gets
      // its last events), on its own: a cursor must name a position for every channel.
      const fresh = subs.find((s) => !s.position);
      const channels = fresh ? [fresh.channel] : sorted(subs.map((s) => s.channel));
      const asked = new Map(channels.map((c) => [c, host.subs().get(c)]));
      const params = fresh
        ? { timeout: 0, latest: fresh.latest }
        : { timeout, lastEventId: channels.map((c) => host.subs().get(c).position).join(",") };
      let reply;
      try {
        reply = await get(channels, params);
      } catch (e) {
        if (stopped) return;
        if (e?.name === "AbortError") continue; // the subscriptions changed
        const delay = host.backoff(attempt++);
        host.lost({ attempt, delay, reason: String(e?.message ?? e) });
        await idle(delay);
        continue;
      }
      if (stopped) return;
      const { status, body } = reply;
      if (status === 200) {
        attempt = 0;
        host.opened();
        if (fresh) {
          if (host.subs().get(fresh.channel) !== fresh) continue;
          const position = String(body.next ?? "");
          // The last events of a `latest` subscription come with it.
          fresh.position = position;
          host.subscribed(fresh, position);
        }
        apply(channels, body, asked);
        continue;
      }
      const error = { code: body.error ?? `http_${status}`, message: body.detail ?? `HTTP ${status}` };
      if (status === 401) {
        host.fatal({ code: 4500, reason: error.message });
        return;
      }
      if (status >= 400 && status < 500 && status !== 429 && status !== 408) {
        // Refused for these channels (forbidden, invalid): those subscriptions end.
        for (const c of channels) {
          const sub = host.subs().get(c);
          if (sub) host.failed(sub, error);
        }
        continue;
      }
      const delay = host.backoff(attempt++);
      host.lost({ attempt, delay, code: status, reason: error.message });
      await idle(delay);
    }
  }

  loop();
  return {
    wake,
    stop() {
      stopped = true;
      wake();
    },
  };
}
