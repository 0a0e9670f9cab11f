// The operators' status page (/admin) in real Chromium, straight to one gateway on its
// in-memory engine with `admin.enabled`: the page takes the API key, follows /admin/feed, and
// its self-drawn charts show (and keep showing) the load a second page and Node put on the
// instance: SSE and WebSocket clients, publishes, deliveries.
//
// The screenshot goes to test-artifacts/admin.png; with UPDATE_ADMIN_SCREENSHOT=1 it also
// replaces the committed deploy/admin.png (the README shows it).
import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { randomBytes } from "node:crypto";
import { withGateway, sleep, ARTIFACTS, REPO } from "./harness.mjs";

const KEY = `admin-browser-${randomBytes(8).toString("hex")}`;

/** Per chart: how many points it holds and how many of its pixels are drawn in a series colour. */
const chartState = (page) =>
  page.evaluate(() =>
    Object.fromEntries(
      Object.entries(window.admin.charts).map(([name, chart]) => {
        const c = chart.canvas;
        const pixels = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
        const colours = chart.series.map((s) => [1, 3, 5].map((i) => parseInt(s.color.slice(i, i + 2), 16)));
        let coloured = 0;
        for (let i = 0; i < pixels.length; i += 4) {
          const [r, g, b, a] = [pixels[i], pixels[i + 1], pixels[i + 2], pixels[i + 3]];
          if (a > 200 && colours.some(([cr, cg, cb]) => Math.abs(r - cr) + Math.abs(g - cg) + Math.abs(b - cb) < 30)) {
            coloured++;
          }
        }
        return [name, { points: Number(c.dataset.points ?? 0), coloured, image: c.toDataURL() }];
      }),
    ),
  );

test("admin page: charts draw the instance's load and keep updating", { timeout: 90_000 }, (t) =>
  withGateway(
    t,
    { gatewayEnv: { GATEWAY__ADMIN__ENABLED: "true", GATEWAY__PUBLISH__API_KEY: KEY } },
    async (fixture) => {
      const admin = await fixture.newPage();
      await admin.setViewportSize({ width: 1280, height: 860 });
      await admin.goto(fixture.url("/admin"));
      await admin.fill("#key", KEY);
      await admin.click("#connect");
      await admin.waitForFunction(() => document.querySelector("#state").dataset.state === "live", null, {
        polling: 50,
      });
      await admin.waitForFunction(() => window.admin.snapshots >= 1, null, { polling: 50 });

      // Load: four SSE streams and one WebSocket from another page, publishes from Node.
      const clients = await fixture.newPage();
      await clients.goto(fixture.url("/"));
      await clients.evaluate(() => {
        window.counts = { sse: 0, ws: 0 };
        for (const channel of ["news", "news", "news", "sports"]) {
          new EventSource(`/sse?channel=${channel}`).onmessage = () => window.counts.sse++;
        }
        const ws = new WebSocket(`ws://${location.host}/ws`);
        ws.onopen = () => ws.send(JSON.stringify({ type: "subscribe", channel: "news" }));
        ws.onmessage = () => window.counts.ws++;
      });
      await admin.waitForFunction(
        () => window.admin.last?.connections.sse === 4 && window.admin.last?.connections.ws === 1,
        null,
        { polling: 100 },
      );
      let publishing = true;
      const published = (async () => {
        let i = 0;
        while (publishing) {
          await fixture.publish(i % 3 === 0 ? "sports" : "news", `tick ${i}`, { apiKey: KEY });
          i++;
          await sleep(40);
        }
        return i;
      })();
      try {
        await admin.waitForFunction(() => (window.admin.last?.delivery_rate ?? 0) > 0, null, { polling: 100 });
        const before = await chartState(admin);
        const snapshotsBefore = await admin.evaluate(() => window.admin.snapshots);
        const shotBefore = await admin.screenshot();
        await sleep(3_200);
        const after = await chartState(admin);
        const shotAfter = await admin.screenshot();

        for (const [name, chart] of Object.entries(after)) {
          assert.ok(chart.points >= 3, `${name}: ${chart.points} points drawn`);
          assert.ok(chart.coloured > 40, `${name}: ${chart.coloured} pixels of its lines are drawn`);
          assert.ok(chart.points > before[name].points, `${name} got new points (${before[name].points} → ${chart.points})`);
          assert.notEqual(chart.image, before[name].image, `${name} was redrawn`);
        }
        assert.ok(!shotAfter.equals(shotBefore), "the page looks different 3 s later");
        const snapshots = await admin.evaluate(() => window.admin.snapshots);
        assert.ok(snapshots - snapshotsBefore >= 2, `snapshots arrived meanwhile (${snapshots - snapshotsBefore})`);

        // The numbers are this instance's.
        const last = await admin.evaluate(() => window.admin.last);
        assert.equal(last.connections.sse, 4);
        assert.equal(last.connections.ws, 1);
        assert.equal(last.topology.kind, "memory");
        assert.ok(last.publish_rate > 5, `publish rate ${last.publish_rate}`);
        assert.ok(last.delivery_rate > last.publish_rate, `delivery rate ${last.delivery_rate}`);
        const rows = await admin.locator("#busiest tr").evaluateAll((trs) =>
          trs.map((tr) => [...tr.cells].map((td) => td.textContent)),
        );
        assert.deepEqual(rows[0].slice(0, 2), ["news", "4"], JSON.stringify(rows));
        assert.deepEqual(rows[1].slice(0, 2), ["sports", "1"], JSON.stringify(rows));
        assert.equal(await admin.locator("#ready").textContent(), "ready");
        const counts = await clients.evaluate(() => window.counts);
        assert.ok(counts.sse > 0 && counts.ws > 0, `the clients received events: ${JSON.stringify(counts)}`);
        assert.deepEqual(admin.errors, [], "no errors in the admin page");

        fs.mkdirSync(ARTIFACTS, { recursive: true });
        fs.writeFileSync(path.join(ARTIFACTS, "admin.png"), shotAfter);
        if (process.env.UPDATE_ADMIN_SCREENSHOT === "1") {
          fs.writeFileSync(path.join(REPO, "deploy/admin.png"), shotAfter);
          t.diagnostic("deploy/admin.png updated");
        }
      } finally {
        publishing = false;
        t.diagnostic(`published ${await published} events`);
      }
    },
  ),
);

test("admin page: a wrong key is refused and the form comes back", { timeout: 60_000 }, (t) =>
  withGateway(
    t,
    { gatewayEnv: { GATEWAY__ADMIN__ENABLED: "true", GATEWAY__PUBLISH__API_KEY: KEY } },
    async (fixture) => {
      const page = await fixture.newPage();
      await page.goto(fixture.url("/admin"));
      await page.fill("#key", "not-the-key");
      await page.click("#connect");
      await page.waitForFunction(() => document.querySelector("#state").dataset.state === "error", null, {
        polling: 50,
      });
      assert.match(await page.locator("#error").textContent(), /^401 unauthorized/);
      assert.equal(await page.locator("#key-form").isVisible(), true);
      assert.equal(await page.evaluate(() => window.admin.snapshots), 0);
    },
  ),
);
