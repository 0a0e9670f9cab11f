// The demo page (/) through nginx: it connects by itself from its URL parameters, publishes
// through its own form, and shows the event in its log. Screenshots go to test-artifacts/.
import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { randomBytes } from "node:crypto";
import { withTopology, sleep, ARTIFACTS } from "./harness.mjs";

/** Text of `selector`, trimmed, or null when absent. */
const text = (page, selector) =>
  page.evaluate((s) => document.querySelector(s)?.textContent.trim() ?? null, selector);

for (const transport of ["ws", "sse"]) {
  test(`demo page (transport=${transport}): autoconnect, publish from the form, event in the log`, { timeout: 60_000 }, (t) =>
    withTopology(t, {}, async (topo) => {
      const page = await topo.newPage();
      fs.mkdirSync(ARTIFACTS, { recursive: true });
      const screenshot = path.join(ARTIFACTS, `demo-${transport}.png`);
      try {
        await page.goto(topo.url(`/?channels=demo&transport=${transport}&autoconnect=1`));
        try {
          await page.waitForFunction(
            () => /^(open|connected)$/i.test(document.querySelector("#state")?.textContent.trim() ?? ""),
            null,
            { polling: 50 },
          );
        } catch (e) {
          throw new Error(`#state never became "open" (it shows ${JSON.stringify(await text(page, "#state"))})`, {
            cause: e,
          });
        }
        // The page really uses the selected transport.
        await topo.holder(transport);
        assert.equal(await page.locator("#transport").inputValue(), transport, "#transport shows the URL's choice");

        const data = `hello from the ${transport} demo ${randomBytes(3).toString("hex")}`;
        await page.fill("#publish-channel", "demo");
        await page.fill("#publish-data", data);
        await page.click("#publish");

        const entry = page.locator("#log .event[data-channel='demo']").filter({
          has: page.locator(".data", { hasText: data }),
        });
        try {
          await entry.first().waitFor({ state: "attached" });
        } catch (e) {
          throw new Error(
            `the published event never appeared in #log; #publish-result shows ${JSON.stringify(
              await text(page, "#publish-result"),
            )}; #log: ${JSON.stringify(await page.locator("#log").innerHTML().catch(() => null))}`,
            { cause: e },
          );
        }
        await sleep(300); // a duplicate would arrive about now
        const entries = await entry.evaluateAll((els) =>
          els.map((el) => ({ id: el.getAttribute("data-id"), data: el.querySelector(".data")?.textContent })),
        );
        assert.equal(entries.length, 1, `the event is in the log exactly once: ${JSON.stringify(entries)}`);
        assert.equal(entries[0].data, data, ".data shows exactly the published text");
        assert.match(entries[0].id ?? "", /^[^:,\s]+:\d+$/, "data-id is the event's position");
        assert.deepEqual(page.errors.map(String), [], "no uncaught errors in the page");
        t.diagnostic(`event ${entries[0].id}; #publish-result: ${await text(page, "#publish-result")}`);
      } finally {
        await page.screenshot({ path: screenshot, fullPage: true }).catch(() => {});
      }
    }),
  );
}
