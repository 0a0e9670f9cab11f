// Compression (issue 15) decoded by a real browser. One gateway (in-memory engine) with
// GATEWAY__COMPRESSION__SSE and __WS on; Chromium sends `Accept-Encoding: gzip, deflate, br, zstd`
// and offers `permessage-deflate; client_max_window_bits` by default. A page from the gateway's
// origin holds an EventSource and a WebSocket on one channel; Node publishes ~0.7 KiB JSON events
// one at a time, and each must arrive, exactly, on both before the next is published. Both
// refer back: after the first, each SSE piece and each WebSocket message (the gateway keeps
// server context takeover for Chromium's offer) is compressed against the event before it.
//
// Plain HTTP (the EventSource served raw on its socket) and TLS (ALPN h2: served by hyper as an
// HTTP/2 stream); Chrome's DevTools network events show the coding the gateway chose, the
// extension it answered, and that the stream's bytes on the wire are fewer than decoded.
import { test } from "node:test";
import assert from "node:assert/strict";
import { withGateway } from "./harness.mjs";

const EVENTS = 5;
const CHANNEL = "zip";
const ENV = { GATEWAY__COMPRESSION__SSE: "true", GATEWAY__COMPRESSION__WS: "true" };

/** A JSON update like real ones (~0.7 KiB). */
function update(i) {
  const rows = Array.from({ length: 12 }, (_, r) => ({ symbol: `SYM${r}`, bid: 100 + i + r / 10, ask: 101 + i + r / 10, venue: "XNAS" }));
  return JSON.stringify({ seq: i, rows });
}

/** EventSource response headers, WebSocket handshake headers, and EventSource bytes seen. */
async function watchNetwork(page) {
  const seen = { sse: [], ws: [], encoded: 0, decoded: 0, sseIds: new Set() };
  const cdp = await page.context().newCDPSession(page);
  cdp.on("Network.responseReceived", ({ type, requestId, response }) => {
    if (type !== "EventSource") return;
    seen.sseIds.add(requestId);
    seen.sse.push({ protocol: response.protocol, headers: lower(response.headers) });
  });
  cdp.on("Network.dataReceived", ({ requestId, dataLength, encodedDataLength }) => {
    if (!seen.sseIds.has(requestId)) return;
    seen.decoded += dataLength;
    seen.encoded += encodedDataLength;
  });
  cdp.on("Network.webSocketHandshakeResponseReceived", ({ response }) => {
    seen.ws.push(lower(response.headers));
  });
  await cdp.send("Network.enable");
  return seen;
}

function lower(headers) {
  return Object.fromEntries(Object.entries(headers).map(([k, v]) => [k.toLowerCase(), v]));
}

/** An EventSource and a WebSocket on CHANNEL; state in `window.zip`. */
function openBoth(page, channel) {
  return page.evaluate((channel) => {
    const z = { sse: [], ws: [], subscribed: false, sseOpen: false, errors: [] };
    window.zip = z;
    const es = new EventSource(`/sse?channel=${channel}`);
    es.onopen = () => (z.sseOpen = true);
    es.onerror = () => z.errors.push("sse error");
    es.onmessage = (e) => z.sse.push({ id: e.lastEventId, data: e.data });
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${scheme}://${location.host}/ws`);
    ws.onopen = () => {
      z.extensions = ws.extensions;
      ws.send(JSON.stringify({ type: "subscribe", channel }));
    };
    ws.onclose = (e) => z.errors.push(`ws closed ${e.code}`);
    ws.onmessage = (e) => {
      const m = JSON.parse(e.data);
      if (m.type === "subscribed") z.subscribed = true;
      if (m.type === "event") z.ws.push({ id: m.id, data: typeof m.data === "string" ? m.data : JSON.stringify(m.data) });
    };
  }, channel);
}

async function scenario(t, gw, { protocol }) {
  const page = await gw.newPage();
  const net = await watchNetwork(page);
  const res = await page.goto(gw.url("/"));
  assert.equal(res?.status(), 200);
  await openBoth(page, CHANNEL);
  await page.waitForFunction(() => window.zip.sseOpen && window.zip.subscribed, null, { timeout: 10_000 });

  const sent = [];
  for (let i = 0; i < EVENTS; i++) {
    const data = update(i);
    const id = await gw.publish(CHANNEL, data);
    sent.push({ id, data });
    // Both decoded before the next event exists: nothing is held back in a compressor.
    await page.waitForFunction((n) => window.zip.sse.length >= n && window.zip.ws.length >= n, i + 1, {
      timeout: 10_000,
    });
  }
  const got = await page.evaluate(() => window.zip);
  assert.deepEqual(got.sse, sent, "the EventSource received every event exactly");
  assert.deepEqual(got.ws, sent, "the WebSocket received every event exactly");
  assert.deepEqual(got.errors, []);

  assert.equal(got.extensions, "permessage-deflate; client_no_context_takeover");
  assert.equal(net.ws[0]?.["sec-websocket-extensions"], got.extensions);
  assert.equal(net.sse.length, 1, JSON.stringify(net.sse));
  assert.equal(net.sse[0].protocol, protocol);
  assert.equal(net.sse[0].headers["content-encoding"], "gzip", JSON.stringify(net.sse[0].headers));
  assert.ok(net.encoded > 0 && net.encoded < net.decoded / 2, `EventSource bytes: ${net.encoded} on the wire for ${net.decoded} decoded`);
  t.diagnostic(`${protocol}: EventSource ${net.encoded} bytes on the wire for ${net.decoded} decoded; WebSocket ${got.extensions}`);
}

test("Chromium decodes gzip SSE (served raw) and permessage-deflate over plain HTTP", { timeout: 40_000 }, (t) =>
  withGateway(t, { gatewayEnv: ENV }, (gw) => scenario(t, gw, { protocol: "http/1.1" })),
);

test("Chromium decodes gzip SSE over HTTP/2 (hyper) and permessage-deflate over TLS", { timeout: 40_000 }, (t) =>
  withGateway(t, { tls: true, gatewayEnv: ENV }, (gw) => scenario(t, gw, { protocol: "h2" })),
);
