// The presence helper of /client.js in a real browser, on one gateway (in-memory engine) that
// tracks "room" with join/leave events: client.presence() answers over the WebSocket command
// and, for a client on long polling, over GET /presence; onJoin/onLeave get a second
// client's coming and going, once each, and onEvent none of them.
import { test } from "node:test";
import assert from "node:assert/strict";
import { withGateway } from "./harness.mjs";

const gatewayEnv = { GATEWAY__PRESENCE__CHANNELS: "room", GATEWAY__PRESENCE__EVENTS: "room" };

test("client.presence() and onJoin/onLeave", async (t) => {
  await withGateway(t, { gatewayEnv }, async (gw) => {
    const page = await gw.newPage();
    await page.goto(gw.url("/"));
    const wait = (fn, arg) => page.waitForFunction(fn, arg, { polling: 50 });
    await page.evaluate(async () => {
      const { connect } = await import("/client.js");
      window.connect = connect;
      window.joins = [];
      window.leaves = [];
      window.others = [];
      window.a = connect("/ws");
      window.a.subscribe("room", (e) => window.others.push(e.event ?? e.data), {
        onSubscribed: () => (window.subscribed = true),
        onJoin: (who, e) => window.joins.push(`${who.conn} ${e.event}`),
        onLeave: (who, e) => window.leaves.push(`${who.conn} ${e.event}`),
      });
    });
    await wait(() => window.subscribed);
    const mine = await page.evaluate(() => window.a.presence("room"));
    assert.equal(mine.channel, "room");
    assert.equal(mine.count, 1);
    const own = mine.clients[0].conn;

    await page.evaluate(() => {
      window.b = window.connect("/ws");
      window.b.subscribe("room", () => {}, { onSubscribed: () => (window.bSubscribed = true) });
    });
    await wait(() => window.bSubscribed);
    const both = await page.evaluate(() => window.a.presence("room"));
    assert.equal(both.count, 2);
    const other = both.clients.map((c) => c.conn).find((c) => c !== own);
    await wait((other) => window.joins.includes(`${other} presence.join`), other);
    // Over long polling the helper asks GET /presence.
    const polled = await page.evaluate(async () => {
      const c = window.connect("/ws", { transport: "poll" });
      try {
        while (c.state !== "open") await new Promise((r) => setTimeout(r, 20));
        return { transport: c.transport, roster: await c.presence("room") };
      } finally {
        c.close();
      }
    });
    assert.equal(polled.transport, "poll");
    assert.equal(polled.roster.count, 2);

    await page.evaluate(() => window.b.close());
    await wait((other) => window.leaves.includes(`${other} presence.leave`), other);
    await new Promise((r) => setTimeout(r, 300));
    const seen = await page.evaluate(() => ({ joins: window.joins, leaves: window.leaves, others: window.others }));
    assert.deepEqual(seen.joins.filter((j) => j.startsWith(other)), [`${other} presence.join`]);
    assert.deepEqual(seen.leaves, [`${other} presence.leave`]);
    assert.deepEqual(seen.others, [], "presence events go to onJoin/onLeave only");
    assert.equal((await page.evaluate(() => window.a.presence("room"))).count, 1);
  });
});
