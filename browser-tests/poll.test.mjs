// The long-poll fallback of /client.js in a real browser, through nginx (round robin, no
// stickiness) to two gateways on one Redis: polls land on either instance and each continues
// from the cursor alone. The fallback is forced two ways — a page without WebSocket and
// EventSource, and a page whose WebSocket never opens (as behind a proxy that breaks upgrades
// and streams) — and midway one instance is SIGKILLed; every event must arrive exactly once,
// in order, with contiguous ids.
import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { withTopology, withGateway, publishSequence, assertExactlyOnce, sleep, WAIT_MS } from "./harness.mjs";

const N = 120;

/** Breaks the page's streaming transports, imports the client, subscribes; records globals. */
function startClient(page, channels, breakage) {
  return page.evaluate(
    async ({ channels, breakage }) => {
      if (breakage === "absent") {
        globalThis.WebSocket = undefined;
        globalThis.EventSource = undefined;
      } else {
        // A WebSocket that never opens: the upgrade dies in a proxy.
        globalThis.WebSocket = class {
          constructor() {
            setTimeout(() => this.onclose?.({ code: 1006, reason: "" }), 20);
          }
          send() {}
          close() {}
        };
        globalThis.EventSource = undefined;
      }
      const { connect } = await import("/client.js");
      window.events = [];
      window.states = [];
      window.gaps = [];
      window.clientErrors = [];
      window.subscribed = {};
      const client = connect("/ws", { minDelay: 50, maxDelay: 500, pollTimeout: 5 });
      window.client = client;
      client.on("state", (state) => window.states.push(state));
      for (const channel of channels) {
        window.subscribed[channel] = 0;
        client.subscribe(channel, (e) => window.events.push({ channel: e.channel, id: e.id, data: e.data }), {
          onSubscribed: () => window.subscribed[channel]++,
          onGap: (g) => window.gaps.push(JSON.stringify(g)),
          onError: (e) => window.clientErrors.push(e?.message ?? JSON.stringify(e)),
        });
      }
    },
    { channels, breakage },
  );
}

const snapshot = (page) =>
  page.evaluate(() => ({
    events: window.events,
    states: window.states,
    gaps: window.gaps,
    clientErrors: window.clientErrors,
    subscribed: window.subscribed,
    state: window.client.state,
    transport: window.client.transport,
  }));

async function fallback(t, breakage, channelCount) {
  await withTopology(t, {}, async (topo) => {
    const base = `poll-${randomBytes(3).toString("hex")}`;
    const channels = Array.from({ length: channelCount }, (_, i) => `${base}-${i}`);
    const page = await topo.newPage();
    await page.goto(topo.url("/"));
    await startClient(page, channels, breakage);
    try {
      await page.waitForFunction(
        () => window.client.state === "open" && Object.values(window.subscribed).every((n) => n >= 1),
        null,
        { polling: 50, timeout: WAIT_MS },
      );
    } catch (e) {
      throw new Error(`client did not fall back and subscribe: ${JSON.stringify(await snapshot(page))}`, { cause: e });
    }
    assert.equal((await snapshot(page)).transport, "poll", "the client fell back to long polling");

    const [victim, survivor] = topo.gateways;
    let atKill;
    let killStatus;
    await publishSequence(topo, channels, {
      count: N,
      killAt: N / 2,
      survivor,
      onMidway: async () => {
        atKill = await snapshot(page);
        killStatus = await topo.kill(victim, "SIGKILL");
      },
    });
    try {
      await page.waitForFunction((n) => window.events.length >= n, N, { polling: 50, timeout: WAIT_MS });
    } catch {
      // The assertions below say what is missing.
    }
    await sleep(400); // late duplicates would show up here
    const end = await snapshot(page);
    assert.equal(killStatus?.signal, "SIGKILL", "one instance was killed");
    assert.ok(atKill.events.length > 0 && atKill.events.length < N, `kill mid-stream (${atKill.events.length})`);
    assertExactlyOnce(end.events, { channels, count: N });
    assert.deepEqual(end.gaps, [], "no gap: history covered everything");
    assert.deepEqual(end.clientErrors, [], "no subscription errors");
    assert.equal(end.transport, "poll");
    assert.deepEqual(page.errors, [], "no uncaught errors in the page");
    t.diagnostic(`states: ${end.states.join(" → ")}`);
  });
}

test("poll: client.js without WebSocket and EventSource long-polls through nginx, exactly once", { timeout: 60_000 }, (t) =>
  fallback(t, "absent", 1),
);

test("poll: client.js whose WebSocket never opens falls back, two channels, exactly once", { timeout: 60_000 }, (t) =>
  fallback(t, "broken", 2),
);

// While a poll waits (up to pollTimeout), subscribing and unsubscribing start a new poll at once:
// the new channel's events arrive well before the waiting poll would have returned, with its
// latest value first, and the dropped channel's events stop.
test("poll: subscriptions change while a poll waits; latest values; history", { timeout: 60_000 }, (t) =>
  withGateway(t, {}, async (fixture) => {
    await fixture.publish("late", "before-1");
    await fixture.publish("late", "before-2");
    const page = await fixture.newPage();
    await page.goto(fixture.url("/"));
    await page.evaluate(async () => {
      const { connect } = await import("/client.js");
      window.got = [];
      const client = connect("/ws", { transport: "poll", pollTimeout: 20 });
      window.client = client;
      window.subA = client.subscribe("a", (e) => window.got.push(`${e.channel}:${e.data}`));
    });
    await page.waitForFunction(() => window.client.state === "open" && window.client.position("a"), null, {
      polling: 50,
      timeout: WAIT_MS,
    });
    await sleep(300); // the poll for "a" is now waiting
    const started = Date.now();
    await page.evaluate(() => {
      window.client.subscribe("late", (e) => window.got.push(`${e.channel}:${e.data}`), { latest: 1 });
      window.subA.unsubscribe();
    });
    await page.waitForFunction(() => window.client.position("late"), null, { polling: 50, timeout: WAIT_MS });
    await fixture.publish("a", "dropped");
    await fixture.publish("late", "after");
    await page.waitForFunction(() => window.got.includes("late:after"), null, { polling: 50, timeout: WAIT_MS });
    const elapsed = Date.now() - started;
    assert.ok(elapsed < 10_000, `the change did not wait for the 20 s poll (${elapsed} ms)`);
    await sleep(300);
    const got = await page.evaluate(() => window.got);
    assert.deepEqual(got, ["late:before-2", "late:after"], "latest value, then live; nothing of the dropped channel");
    const history = await page.evaluate(() => window.client.history("late", { limit: 2 }));
    assert.deepEqual(
      history.events.map((e) => e.data),
      ["before-1", "before-2"],
    );
    assert.equal(history.more, true);
    assert.equal(await page.evaluate(() => window.client.transport), "poll");
    assert.deepEqual(page.errors, [], "no uncaught errors in the page");
  }),
);
