// A browser's native EventSource, through nginx (round robin, no stickiness) to two gateways on
// one Redis. Midway through a stream of events the instance holding the connection is
// SIGKILLed; the browser reconnects through nginx to the survivor with Last-Event-ID, and must
// end up with every event exactly once, in order.
import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { withTopology, publishSequence, assertExactlyOnce, metrics, sleep, WAIT_MS } from "./harness.mjs";

const N = 150;

/** Opens `new EventSource(url)` in the page and records everything into window globals. */
function openEventSource(page, url) {
  return page.evaluate((url) => {
    window.received = [];
    window.gaps = [];
    window.opens = 0;
    window.errors = 0;
    const es = new EventSource(url);
    window.es = es;
    es.onopen = () => window.opens++;
    es.onerror = () => window.errors++;
    es.onmessage = (e) => window.received.push({ data: e.data, id: e.lastEventId });
    es.addEventListener("gap", (e) => window.gaps.push({ data: e.data, id: e.lastEventId }));
  }, url);
}

const snapshot = (page) =>
  page.evaluate(() => ({
    received: window.received,
    gaps: window.gaps,
    opens: window.opens,
    errors: window.errors,
    readyState: window.es.readyState,
  }));

/** Waits until `n` events arrived, then a little longer so late duplicates would show. */
async function waitForAll(page, n) {
  try {
    await page.waitForFunction((n) => window.received.length >= n, n, { polling: 50, timeout: WAIT_MS });
  } catch {
    // Fall through: the assertions below say what is missing.
  }
  await sleep(400);
  return snapshot(page);
}

async function failover(t, channelCount) {
  await withTopology(t, {}, async (topo) => {
    const base = `sse-${randomBytes(3).toString("hex")}`;
    const channels = Array.from({ length: channelCount }, (_, i) => `${base}-${i}`); // sorted
    const page = await topo.newPage();
    await page.goto(topo.url("/"));
    const query = channels.map((c) => `channel=${encodeURIComponent(c)}`).join("&");
    await openEventSource(page, `/sse?${query}`);
    await page.waitForFunction(() => window.opens >= 1, null, { polling: 50 });

    const victim = await topo.holder("sse");
    const survivor = topo.other(victim);
    t.diagnostic(`EventSource opened on gateway ${victim.name}; killing it at event ${N / 2}, publishing meanwhile`);

    let atKill;
    let killStatus;
    const { duringKill } = await publishSequence(topo, channels, {
      count: N,
      killAt: N / 2,
      survivor,
      onMidway: async () => {
        atKill = await snapshot(page);
        killStatus = await topo.kill(victim, "SIGKILL");
      },
    });
    const end = await waitForAll(page, N);

    assert.equal(killStatus?.signal, "SIGKILL", "the holding instance was killed");
    assert.ok(
      atKill.received.length > 0 && atKill.received.length < N,
      `kill happened mid-stream (events before the kill: ${atKill.received.length})`,
    );
    assertExactlyOnce(end.received, { channels, count: N, cursor: true });
    assert.deepEqual(end.gaps, [], "no gap reported: history covered the outage");
    assert.ok(end.errors >= 1, `EventSource saw the connection drop (error events: ${end.errors})`);
    assert.ok(end.opens >= 2, `EventSource reconnected (open events: ${end.opens})`);
    assert.equal(end.readyState, 1, "EventSource is OPEN at the end");

    // The reconnect landed on the survivor, which resumed from the browser's Last-Event-ID.
    assert.equal(await topo.holder("sse"), survivor, "the survivor holds the stream now");
    const m = await metrics(survivor);
    assert.ok(
      (m.get('gateway_resumes_total{outcome="recovered"}') ?? 0) >= 1,
      `the survivor resumed a cursor without loss (resumes: ${JSON.stringify(
        [...m].filter(([k]) => k.startsWith("gateway_resumes_total")),
      )})`,
    );
    t.diagnostic(
      `published during the kill: ${duringKill}; received before it: ${atKill.received.length}, opens: ${end.opens}, errors: ${end.errors}, ` +
        `last id: ${end.received.at(-1)?.id}`,
    );
  });
}

test("SSE: native EventSource survives SIGKILL of its instance behind nginx, exactly once in order", { timeout: 60_000 }, (t) =>
  failover(t, 1),
);

test("SSE: two channels on one EventSource (cursor id) survive SIGKILL of the instance", { timeout: 60_000 }, (t) =>
  failover(t, 2),
);
