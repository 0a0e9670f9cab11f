// SSE over HTTP/2 lifts the browser's limit of six connections per origin. One gateway (TLS with
// a certificate made for the run, in-memory engine, no nginx, no Redis) and Chromium straight to
// it on 127.0.0.1. A page from the gateway's origin opens ten EventSources on ten channels:
//
// - ALPN offers h2: all ten open, as streams of one connection, and each receives the event
//   published to its channel.
// - The same gateway with GATEWAY__SERVER__HTTP2=false (ALPN offers only http/1.1): Chromium
//   opens six connections and queues the rest; the 7th to 10th EventSource stay CONNECTING and
//   their events never arrive. This is the stall the first case removes.
import { test } from "node:test";
import assert from "node:assert/strict";
import { withGateway, waitFor, metrics, sleep } from "./harness.mjs";

/** EventSources the page opens; more than Chromium's 6 connections per origin over HTTP/1.1. */
const STREAMS = 10;
/** Chromium's limit of HTTP/1.1 connections per origin (kNormalSocketPoolMaxSocketsPerGroup). */
const H1_LIMIT = 6;
/** How long the HTTP/1.1 case watches the stall, before and after publishing. */
const STALL_MS = 2_500;
/** How long EventSources and events get to arrive where they should. */
const ARRIVE_MS = 10_000;

const channels = Array.from({ length: STREAMS }, (_, i) => `h2-${i}`);

/**
 * Network events of `page` from Chrome's DevTools protocol: for every EventSource response, the
 * protocol (`h2`, `http/1.1`) and the id of the connection it came over.
 */
async function watchNetwork(page) {
  const seen = { responses: [], failures: [] };
  const cdp = await page.context().newCDPSession(page);
  cdp.on("Network.responseReceived", ({ type, response }) => {
    seen.responses.push({
      type,
      url: response.url,
      status: response.status,
      protocol: response.protocol,
      connection: response.connectionId,
    });
  });
  cdp.on("Network.loadingFailed", ({ type, errorText }) => seen.failures.push({ type, errorText }));
  await cdp.send("Network.enable");
  return seen;
}

/** Opens one `EventSource('/sse?channel=…')` per channel; state goes to `window.streams`. */
function openEventSources(page, channels) {
  return page.evaluate((channels) => {
    window.streams = channels.map((channel) => {
      const s = { channel, opens: 0, errors: 0, received: [] };
      s.es = new EventSource(`/sse?channel=${encodeURIComponent(channel)}`);
      s.es.onopen = () => s.opens++;
      s.es.onerror = () => s.errors++;
      s.es.onmessage = (e) => s.received.push({ data: e.data, id: e.lastEventId });
      return s;
    });
  }, channels);
}

const snapshot = (page) =>
  page.evaluate(() =>
    window.streams.map(({ channel, opens, errors, received, es }) => ({
      channel,
      opens,
      errors,
      received,
      readyState: es.readyState,
    })),
  );

const opened = (streams) => streams.filter((s) => s.opens > 0);
const describe = (streams) =>
  streams
    .map((s) => `${s.channel}: state ${s.readyState}, opens ${s.opens}, errors ${s.errors}, ` +
      `got ${JSON.stringify(s.received.map((e) => e.data))}`)
    .join("\n  ");

/** Waits (at most `timeoutMs`) until `n` EventSources fired `open`; returns the snapshot then. */
async function waitForOpens(page, n, timeoutMs) {
  try {
    await page.waitForFunction((n) => window.streams.filter((s) => s.opens > 0).length >= n, n, {
      polling: 50,
      timeout: timeoutMs,
    });
  } catch {
    // Fall through: the caller's assertions say what is missing.
  }
  return snapshot(page);
}

/** Waits (at most `timeoutMs`) until `n` events arrived in all; returns the snapshot then. */
async function waitForEvents(page, n, timeoutMs) {
  try {
    await page.waitForFunction((n) => window.streams.reduce((sum, s) => sum + s.received.length, 0) >= n, n, {
      polling: 50,
      timeout: timeoutMs,
    });
  } catch {
    // Fall through.
  }
  return snapshot(page);
}

/** Publishes `data-<i>` to channel i for each given stream index, from Node. */
async function publishTo(gw, indexes) {
  const ids = [];
  for (const i of indexes) ids.push(await gw.publish(channels[i], `data-${i}`));
  return ids;
}

/** The gateway's open SSE connections, per `/metrics` (null when it does not answer). */
async function sseConnections(gateway) {
  const m = await metrics(gateway);
  return m ? m.get('gateway_connections{transport="sse"}') ?? 0 : null;
}

/** The page from the gateway's own origin (the demo page), and its navigation's protocol. */
async function openPage(gw) {
  const page = await gw.newPage();
  const net = await watchNetwork(page);
  const res = await page.goto(gw.url("/"));
  assert.equal(res?.status(), 200, "the demo page loads from the gateway");
  const navigation = await page.evaluate(() => performance.getEntriesByType("navigation")[0]?.nextHopProtocol);
  return { page, net, navigation };
}

test("HTTP/2: ten EventSources on one origin all open and all receive", { timeout: 40_000 }, (t) =>
  withGateway(t, { tls: true }, async (gw) => {
    assert.equal(await gw.alpn(["h2", "http/1.1"]), "h2", "the gateway selects h2 by ALPN");
    assert.equal(await gw.alpn(["http/1.1"]), "http/1.1", "and still serves HTTP/1.1 to clients that offer only that");

    const { page, net, navigation } = await openPage(gw);
    assert.equal(navigation, "h2", "Chromium loaded the page over HTTP/2 (navigation nextHopProtocol)");

    await openEventSources(page, channels);
    const atOpen = await waitForOpens(page, STREAMS, ARRIVE_MS);
    assert.equal(opened(atOpen).length, STREAMS, `all ${STREAMS} EventSources opened:\n  ${describe(atOpen)}`);
    assert.ok(atOpen.every((s) => s.readyState === 1 && s.errors === 0), `all OPEN, none failed:\n  ${describe(atOpen)}`);
    await waitFor(
      `the gateway holding ${STREAMS} SSE connections`,
      async () => (await sseConnections(gw.gateway)) === STREAMS,
      { timeoutMs: 5_000 },
    );

    await publishTo(gw, channels.keys());
    const end = await waitForEvents(page, STREAMS, ARRIVE_MS);
    await sleep(300); // a duplicate or misrouted event would show by now
    const final = await snapshot(page);
    for (const [i, s] of final.entries()) {
      const got = s.received.map((e) => e.data);
      assert.deepEqual(got, [`data-${i}`], `${s.channel} received its one event:\n  ${describe(final)}`);
    }
    assert.equal(end.reduce((n, s) => n + s.received.length, 0), STREAMS);

    // Every EventSource response came over HTTP/2, all as streams of one connection.
    const sse = net.responses.filter((r) => r.type === "EventSource");
    assert.equal(sse.length, STREAMS, `${STREAMS} EventSource responses seen: ${JSON.stringify(net.responses)}`);
    assert.ok(sse.every((r) => r.status === 200 && r.protocol === "h2"), `all 200 over h2: ${JSON.stringify(sse)}`);
    const connections = new Set(sse.map((r) => r.connection));
    assert.equal(connections.size, 1, `one HTTP/2 connection carries all ${STREAMS}: ${JSON.stringify(sse)}`);
    t.diagnostic(`h2: ${STREAMS} EventSources open and delivered over ${connections.size} connection; navigation ${navigation}`);
  }),
);

test("HTTP/1.1 only (GATEWAY__SERVER__HTTP2=false): the 7th EventSource on one origin stalls", { timeout: 40_000 }, (t) =>
  withGateway(t, { tls: true, http2: false }, async (gw) => {
    const alpn = await gw.alpn(["h2", "http/1.1"]);
    assert.ok(
      alpn === "http/1.1" || alpn === false,
      `the gateway does not select h2 by ALPN (selected: ${JSON.stringify(alpn)})`,
    );

    const { page, net, navigation } = await openPage(gw);
    assert.equal(navigation, "http/1.1", "Chromium loaded the page over HTTP/1.1 (navigation nextHopProtocol)");

    await openEventSources(page, channels);
    await waitForOpens(page, H1_LIMIT, ARRIVE_MS);
    await sleep(STALL_MS); // time for any further EventSource to open, were it going to
    const stalled = await snapshot(page);
    const open = opened(stalled);
    assert.ok(open.length < STREAMS, `fewer than ${STREAMS} EventSources open over HTTP/1.1:\n  ${describe(stalled)}`);
    assert.ok(
      open.length > 0 && open.length <= H1_LIMIT,
      `at most ${H1_LIMIT} (Chromium's per-origin limit) opened:\n  ${describe(stalled)}`,
    );
    const waiting = stalled.filter((s) => s.opens === 0);
    assert.ok(waiting.every((s) => s.readyState === 0), `the others are still CONNECTING:\n  ${describe(stalled)}`);
    assert.equal(await sseConnections(gw.gateway), open.length, "the gateway holds exactly the open ones");

    await publishTo(gw, channels.keys());
    await waitForEvents(page, open.length, ARRIVE_MS);
    await sleep(STALL_MS); // time for the others' events to arrive, were they going to
    const end = await snapshot(page);
    const received = end.reduce((n, s) => n + s.received.length, 0);
    assert.ok(received < STREAMS, `not all ${STREAMS} events arrived over HTTP/1.1 (got ${received}):\n  ${describe(end)}`);
    for (const [i, s] of end.entries()) {
      const want = s.opens > 0 ? [`data-${i}`] : [];
      const got = s.received.map((e) => e.data);
      assert.deepEqual(got, want, `${s.channel} (${s.opens > 0 ? "open" : "stalled"}):\n  ${describe(end)}`);
    }

    // Each open EventSource has an HTTP/1.1 connection of its own.
    const sse = net.responses.filter((r) => r.type === "EventSource");
    assert.equal(sse.length, open.length, `one EventSource response per open stream: ${JSON.stringify(net.responses)}`);
    assert.ok(
      sse.every((r) => r.status === 200 && r.protocol === "http/1.1"),
      `all 200 over http/1.1: ${JSON.stringify(sse)}`,
    );
    assert.equal(new Set(sse.map((r) => r.connection)).size, open.length, `one connection each: ${JSON.stringify(sse)}`);
    t.diagnostic(
      `http/1.1: ${open.length} of ${STREAMS} EventSources open, ${received} of ${STREAMS} events delivered; ` +
        `navigation ${navigation}`,
    );
  }),
);
