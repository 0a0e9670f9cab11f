// The JS client (/client.js) in a real browser, over WebSocket through nginx (round robin, no
// stickiness) to two gateways on one Redis. Midway through a stream of events the instance
// holding the socket is SIGKILLed; the client must go back to "connecting", reconnect through
// nginx to the survivor, resubscribe from its last ids, and end up with every event exactly once,
// in order.
import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { withTopology, publishSequence, assertExactlyOnce, sleep, WAIT_MS } from "./harness.mjs";

const N = 150;

/** Imports the client in the page, connects, subscribes every channel; records into globals. */
function startClient(page, channels) {
  return page.evaluate(async (channels) => {
    const { connect } = await import("/client.js");
    window.events = [];
    window.states = [];
    window.gaps = [];
    window.clientErrors = [];
    window.subscribed = {};
    const client = connect("/ws", { minDelay: 100, maxDelay: 1000 });
    window.client = client;
    window.states.push(client.state);
    client.on("state", (state, info) => {
      let detail;
      try {
        detail = JSON.stringify(info);
      } catch {
        detail = String(info);
      }
      window.states.push(state);
      window.stateInfo = [...(window.stateInfo ?? []), `${state} ${detail ?? ""}`];
    });
    for (const channel of channels) {
      window.subscribed[channel] = 0;
      client.subscribe(
        channel,
        (e) =>
          window.events.push({ channel: e.channel, id: e.id, data: e.data, event: e.event, binary: e.binary }),
        {
          onSubscribed: () => window.subscribed[channel]++,
          onGap: (...args) => window.gaps.push(JSON.stringify(args)),
          onError: (...args) => window.clientErrors.push(args.map((a) => a?.message ?? JSON.stringify(a)).join(" ")),
        },
      );
    }
  }, channels);
}

const snapshot = (page) =>
  page.evaluate(() => ({
    events: window.events,
    states: window.states,
    stateInfo: window.stateInfo ?? [],
    gaps: window.gaps,
    clientErrors: window.clientErrors,
    subscribed: window.subscribed,
    state: window.client.state,
  }));

async function failover(t, channelCount) {
  await withTopology(t, {}, async (topo) => {
    const base = `ws-${randomBytes(3).toString("hex")}`;
    const channels = Array.from({ length: channelCount }, (_, i) => `${base}-${i}`);
    const page = await topo.newPage();
    await page.goto(topo.url("/"));
    await startClient(page, channels);
    try {
      await page.waitForFunction(
        () => window.client.state === "open" && Object.values(window.subscribed).every((n) => n >= 1),
        null,
        { polling: 50 },
      );
    } catch (e) {
      throw new Error(`client did not open and confirm its subscriptions: ${JSON.stringify(await snapshot(page))}`, {
        cause: e,
      });
    }

    const victim = await topo.holder("ws");
    const survivor = topo.other(victim);
    t.diagnostic(`WebSocket opened on gateway ${victim.name}; killing it at event ${N / 2}, publishing meanwhile`);

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
    try {
      await page.waitForFunction((n) => window.events.length >= n, N, { polling: 50, timeout: WAIT_MS });
    } catch {
      // The assertions below say what is missing.
    }
    await sleep(400); // late duplicates would show up here
    const end = await snapshot(page);

    assert.equal(killStatus?.signal, "SIGKILL", "the holding instance was killed");
    assert.ok(
      atKill.events.length > 0 && atKill.events.length < N,
      `kill happened mid-stream (events before the kill: ${atKill.events.length})`,
    );
    assertExactlyOnce(end.events, { channels, count: N });
    assert.deepEqual(end.gaps, [], "no gap reported: history covered the outage");
    assert.deepEqual(end.clientErrors, [], "no subscription errors");

    const after = end.states.slice(atKill.states.length);
    const connecting = after.indexOf("connecting");
    assert.ok(
      connecting >= 0 && after.indexOf("open", connecting) > connecting,
      `after the kill the client went "connecting" and back to "open" (states after kill: ${JSON.stringify(after)}, all: ${JSON.stringify(end.states)})`,
    );
    assert.equal(end.state, "open", "client is open at the end");
    for (const channel of channels) {
      assert.ok(end.subscribed[channel] >= 1, `${channel} confirmed`);
    }
    // One socket, on the survivor (a client that opened a second socket would show here).
    assert.equal(await topo.holder("ws"), survivor, "the survivor holds the only WebSocket now");
    assert.deepEqual(page.errors, [], "no uncaught errors in the page");
    t.diagnostic(
      `published during the kill: ${duringKill}; received before it: ${atKill.events.length}; states: ${end.states.join(" → ")}; ` +
        `subscribed: ${JSON.stringify(end.subscribed)}`,
    );
  });
}

test("WS: client.js survives SIGKILL of its instance behind nginx, exactly once in order", { timeout: 60_000 }, (t) =>
  failover(t, 1),
);

test("WS: client.js with two channels on one socket survives SIGKILL of the instance", { timeout: 60_000 }, (t) =>
  failover(t, 2),
);
