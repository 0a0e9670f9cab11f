// Test harness for the real-browser tests: every test gets its own topology on free loopback
// ports and tears it down again, also when the test fails:
//
//   Chromium ──► nginx (round robin, no stickiness) ──► gateway A ─┐
//                                                   └─► gateway B ─┴─► redis-server
//
// or (`withGateway`) Chromium straight to ONE gateway on its in-memory engine, optionally over
// TLS with a certificate made for the run (`openssl`), with or without HTTP/2.
//
// Child processes are started in their own process groups and killed by group; a process-exit
// hook kills whatever a crashed test run left behind.
import { spawn, execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import fs from "node:fs";
import https from "node:https";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import tls from "node:tls";
import { fileURLToPath } from "node:url";
import { setTimeout as sleep } from "node:timers/promises";
import { chromium } from "playwright-core";

export { sleep };

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
export const GATEWAY_BIN = process.env.GATEWAY_BIN || path.join(REPO, "target/debug/gateway");
export const ARTIFACTS = path.join(REPO, "test-artifacts");
const CHROMIUM = process.env.CHROMIUM_BIN || "/usr/bin/chromium";
const REDIS_SERVER = ["/usr/bin/redis-server", "/usr/local/bin/redis-server"].find((p) =>
  fs.existsSync(p),
) ?? "redis-server";
const NGINX = ["/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx"].find((p) =>
  fs.existsSync(p),
) ?? "nginx";

/** How long a test waits for something that should happen promptly. */
export const WAIT_MS = 15_000;

// ---------------------------------------------------------------------------------------------
// Processes

const running = new Set();
const tempDirs = new Set();

function killAllSync() {
  for (const child of running) {
    try {
      process.kill(-child.pid, "SIGKILL");
    } catch {
      // already gone
    }
  }
  running.clear();
  for (const dir of tempDirs) fs.rmSync(dir, { recursive: true, force: true });
  tempDirs.clear();
}
process.on("exit", killAllSync);
for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"]) {
  process.once(signal, () => {
    killAllSync();
    process.exit(128 + os.constants.signals[signal]);
  });
}

/** A child process in its own process group, with the tail of its output kept for diagnostics. */
class Proc {
  constructor(name, cmd, args, { env, stdout = "log" } = {}) {
    this.name = name;
    this.lines = [];
    this.child = spawn(cmd, args, {
      env,
      detached: true, // own process group: killed as a whole
      stdio: ["ignore", "pipe", "pipe"],
    });
    running.add(this.child);
    this.exited = new Promise((resolve) => {
      this.child.once("exit", (code, signal) => {
        running.delete(this.child);
        this.exitStatus = { code, signal };
        resolve(this.exitStatus);
      });
    });
    this.spawnError = new Promise((resolve) => this.child.once("error", resolve));
    this.child.stderr.setEncoding("utf8");
    this.child.stderr.on("data", (text) => this.#keep(text));
    this.child.stdout.setEncoding("utf8");
    if (stdout === "log") this.child.stdout.on("data", (text) => this.#keep(text));
  }

  #keep(text) {
    for (const line of text.split("\n")) {
      if (line.trim() === "") continue;
      this.lines.push(line);
      if (this.lines.length > 300) this.lines.shift();
    }
  }

  get pid() {
    return this.child.pid;
  }

  get alive() {
    return this.exitStatus === undefined;
  }

  /** Sends `signal` to the whole process group and waits (up to `waitMs`) for the exit. */
  async kill(signal = "SIGKILL", waitMs = 5_000) {
    if (!this.alive) return this.exitStatus;
    try {
      process.kill(-this.child.pid, signal);
    } catch {
      // already gone
    }
    const timeout = sleep(waitMs, null, { ref: false });
    const status = await Promise.race([this.exited, timeout]);
    if (status === null && signal !== "SIGKILL") return this.kill("SIGKILL", waitMs);
    return status;
  }

  tail(n = 40) {
    return this.lines.slice(-n).join("\n");
  }
}

/** Awaits `promise`; if it rejects, kills `proc` (a half-started server) and rethrows. */
async function killOnError(proc, promise) {
  try {
    return await promise;
  } catch (e) {
    await proc.kill("SIGKILL");
    throw e;
  }
}

/** A TCP port on 127.0.0.1 that was free a moment ago. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/**
 * Polls `check` (async, truthy = done) every `intervalMs` until `timeoutMs`; returns its value.
 * `what` (a string, or a function called on timeout) names the wait in the error.
 */
export async function waitFor(what, check, { timeoutMs = WAIT_MS, intervalMs = 50 } = {}) {
  const deadline = Date.now() + timeoutMs;
  let lastError;
  for (;;) {
    try {
      const value = await check();
      if (value) return value;
    } catch (e) {
      lastError = e;
    }
    if (Date.now() > deadline) {
      throw new Error(
        `timed out after ${timeoutMs} ms waiting for ${typeof what === "function" ? what() : what}` +
          (lastError ? ` (last error: ${lastError.message})` : ""),
      );
    }
    await sleep(intervalMs);
  }
}

function redisPing(port) {
  return new Promise((resolve) => {
    const socket = net.connect({ host: "127.0.0.1", port });
    let answer = "";
    const done = (ok) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(1_000, () => done(false));
    socket.on("error", () => done(false));
    socket.on("connect", () => socket.write("PING\r\n"));
    socket.on("data", (d) => {
      answer += d.toString();
      if (answer.includes("\r\n")) done(answer.startsWith("+PONG"));
    });
  });
}

async function startRedis() {
  const port = await freePort();
  const proc = new Proc("redis", REDIS_SERVER, [
    "--port", String(port),
    "--bind", "127.0.0.1",
    "--save", "",
    "--appendonly", "no",
    "--daemonize", "no",
    "--loglevel", "warning",
    "--dir", os.tmpdir(),
  ]);
  const failed = Promise.race([proc.exited, proc.spawnError]).then((e) => {
    throw new Error(`redis-server did not start (${JSON.stringify(e?.message ?? e)}):\n${proc.tail()}`);
  });
  failed.catch(() => {});
  await killOnError(proc, Promise.race([failed, waitFor(`redis-server on ${port}`, () => redisPing(port))]));
  proc.port = port;
  proc.url = `redis://127.0.0.1:${port}/`;
  return proc;
}

/** One gateway instance of the nginx topology (engine redis, plain HTTP). */
function startGateway(name, redis, prefix, extraEnv) {
  return spawnGateway(
    name,
    {
      GATEWAY__REDIS__URL: redis.url,
      GATEWAY__REDIS__KEY_PREFIX: prefix,
      ...extraEnv,
    },
    { engine: "redis", scheme: "http" },
  );
}

/**
 * Starts `GATEWAY_BIN` with the test defaults plus `extraEnv` (nothing is inherited from this
 * process's environment but PATH), waits for the line `listening on <scheme>://ADDR (engine:
 * <engine>)` in its `server.address_file` and then for `/readyz`. The returned process
 * has `addr` (`127.0.0.1:PORT`), `base` (`<scheme>://127.0.0.1:PORT`), `scheme` and, for https,
 * `ca` (the PEM the gateway's certificate verifies against, for `request`).
 */
async function spawnGateway(name, extraEnv, { engine = "redis", scheme = "http", ca } = {}) {
  if (!fs.existsSync(GATEWAY_BIN)) {
    throw new Error(`no gateway binary at ${GATEWAY_BIN}: run \`cargo build -p gateway\` (or set GATEWAY_BIN)`);
  }
  const addressFile = path.join(os.tmpdir(), `gw-address-${process.pid}-${randomBytes(6).toString("hex")}`);
  const env = {
    PATH: process.env.PATH ?? "/usr/bin:/bin",
    RUST_LOG: process.env.TEST_GATEWAY_LOG || "warn",
    GATEWAY__SERVER__LISTEN: "127.0.0.1:0",
    GATEWAY__SERVER__WORKERS: "2",
    GATEWAY__SERVER__SHUTDOWN_TIMEOUT_SECONDS: "3",
    GATEWAY__SERVER__ADDRESS_FILE: addressFile,
    GATEWAY__SSE__RETRY_MS: "250",
    ...extraEnv,
  };
  const proc = new Proc(name, GATEWAY_BIN, [], { env });
  const exited = proc.exited.then((s) => {
    throw new Error(`gateway ${name} exited before listening (${JSON.stringify(s)}):\n${proc.tail()}`);
  });
  exited.catch(() => {});
  // The gateway renames the file into place once listening: it is never seen half-written.
  const readLine = () => {
    try {
      return fs.readFileSync(addressFile, "utf8").split("\n")[0].trim();
    } catch {
      return null;
    }
  };
  const line = await killOnError(proc, Promise.race([
    exited,
    proc.spawnError.then((e) => {
      throw e;
    }),
    waitFor(() => `gateway ${name}'s address file:\n${proc.tail()}`, readLine, { intervalMs: 20 }),
  ]));
  fs.rmSync(addressFile, { force: true });
  const match = /^listening on (https?):\/\/(\S+) \(engine: (\w+)\)$/.exec(line);
  if (!match || match[1] !== scheme || match[3] !== engine) {
    await proc.kill("SIGKILL");
    throw new Error(
      `unexpected address file line from gateway ${name} (want "listening on ${scheme}://ADDR (engine: ${engine})"): ` +
        `${JSON.stringify(line)}\n${proc.tail()}`,
    );
  }
  proc.scheme = scheme;
  proc.addr = match[2];
  proc.base = `${scheme}://${match[2]}`;
  proc.ca = ca;
  // Ready = the engine is up (with Redis: it answers and the pub/sub connection is up).
  await killOnError(
    proc,
    waitFor(`${name} /readyz`, async () => (await request(`${proc.base}/readyz`, { ca })).status === 200),
  );
  return proc;
}

/**
 * The nginx config: the proxy settings of deploy/nginx/nginx.conf, with the test's upstreams,
 * port and prefix directory.
 */
function nginxConfig({ port, upstreams }) {
  const asRoot = process.getuid?.() === 0;
  return `# generated by browser-tests/harness.mjs (mirrors deploy/nginx/nginx.conf)
${asRoot ? "user root;" : "# not root: workers run as the current user"}
worker_processes 1;

events {
    worker_connections 1024;
}

http {
    server_tokens off;
    default_type application/octet-stream;

    client_body_temp_path client_body_temp;
    proxy_temp_path       proxy_temp;
    fastcgi_temp_path     fastcgi_temp;
    uwsgi_temp_path       uwsgi_temp;
    scgi_temp_path        scgi_temp;

    log_format upstream '$remote_addr [$time_local] "$request" $status $body_bytes_sent '
                        'up=$upstream_addr up_status=$upstream_status rt=$request_time';
    access_log access.log upstream;

    map $http_upgrade $connection_upgrade {
        default upgrade;
        ''      '';
    }

    upstream gateway {
        # Round robin, no stickiness.
${upstreams.map((u) => `        server ${u} max_fails=1 fail_timeout=5s;`).join("\n")}
        keepalive 32;
        keepalive_timeout 4s;
    }

    # Streams get fresh upstream connections (served on the gateway's native path).
    upstream gateway_streams {
${upstreams.map((u) => `        server ${u} max_fails=1 fail_timeout=5s;`).join("\n")}
    }

    server {
        listen 127.0.0.1:${port};
        server_name _;

        proxy_http_version 1.1;
        proxy_set_header Host              $http_host;
        proxy_set_header Connection        $connection_upgrade;
        proxy_set_header Upgrade           $http_upgrade;
        proxy_set_header X-Real-IP         $remote_addr;
        proxy_set_header X-Forwarded-For   $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto $scheme;

        proxy_connect_timeout 2s;
        proxy_next_upstream error timeout http_503;
        proxy_next_upstream_tries 3;
        proxy_next_upstream_timeout 15s;

        proxy_buffering off;
        proxy_cache off;
        proxy_read_timeout 1h;
        proxy_send_timeout 1h;

        location /sse {
            proxy_pass http://gateway_streams;
            gzip off;
        }

        location /ws {
            proxy_pass http://gateway_streams;
        }

        location = /publish {
            client_max_body_size 1m;
            proxy_pass http://gateway;
        }

        location = /metrics {
            return 404;
        }

        location = /lb-health {
            access_log off;
            default_type text/plain;
            return 200 "ok\\n";
        }

        location / {
            proxy_pass http://gateway;
        }
    }
}
`;
}

function run(cmd, args) {
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout: 10_000 }, (error, stdout, stderr) =>
      resolve({ ok: !error, missing: error?.code === "ENOENT", output: `${stdout}${stderr}`.trim() }),
    );
  });
}

async function startNginx(dir, upstreams) {
  const port = await freePort();
  const conf = path.join(dir, "nginx.conf");
  fs.writeFileSync(conf, nginxConfig({ port, upstreams }));
  const prefix = `${dir}/`;
  const errorLog = path.join(dir, "error.log");
  const globals = `daemon off; pid ${path.join(dir, "nginx.pid")}; error_log ${errorLog} warn;`;
  const base = ["-p", prefix, "-c", conf, "-e", errorLog];
  const check = await run(NGINX, [...base, "-g", globals, "-t", "-q"]);
  if (!check.ok) throw new Error(`nginx -t failed for ${conf}:\n${check.output}`);
  const proc = new Proc("nginx", NGINX, [...base, "-g", globals]);
  proc.errorLog = errorLog;
  proc.accessLog = path.join(dir, "access.log");
  const failed = Promise.race([proc.exited, proc.spawnError]).then((e) => {
    throw new Error(`nginx exited at start (${JSON.stringify(e?.message ?? e)}):\n${readTail(errorLog)}\n${proc.tail()}`);
  });
  failed.catch(() => {});
  await killOnError(
    proc,
    Promise.race([
      failed,
      waitFor(`nginx on ${port}`, async () => (await fetch(`http://127.0.0.1:${port}/lb-health`)).ok),
    ]),
  );
  proc.port = port;
  proc.base = `http://127.0.0.1:${port}`;
  return proc;
}

function readTail(file, n = 40) {
  try {
    return fs.readFileSync(file, "utf8").trimEnd().split("\n").slice(-n).join("\n");
  } catch {
    return "";
  }
}

export const BROWSER_ARGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

/** Debian's Chromium, headless, with `BROWSER_ARGS` and then `extraArgs`. */
export function launchBrowser(extraArgs = []) {
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args: [...BROWSER_ARGS, ...extraArgs] });
}

// ---------------------------------------------------------------------------------------------
// HTTP helpers

/**
 * One HTTP request from Node; resolves to `{ status, headers, text }`. `http:` goes through
 * `fetch`; `https:` through `node:https` (HTTP/1.1), verifying the server's certificate against
 * `ca` (a PEM) when given, else not verifying at all (self-signed test certificates). Bounded by
 * `timeoutMs`.
 */
export async function request(url, { method = "GET", headers = {}, body, ca, timeoutMs = 5_000 } = {}) {
  if (!url.startsWith("https:")) {
    const res = await fetch(url, { method, headers, body, signal: AbortSignal.timeout(timeoutMs) });
    return { status: res.status, headers: res.headers, text: await res.text() };
  }
  return new Promise((resolve, reject) => {
    const req = https.request(
      url,
      {
        method,
        headers: body === undefined ? headers : { ...headers, "content-length": Buffer.byteLength(body) },
        agent: false, // a fresh connection, closed afterwards: nothing outlives the test
        ...(ca ? { ca } : { rejectUnauthorized: false }),
        timeout: timeoutMs,
      },
      (res) => {
        res.setEncoding("utf8");
        let text = "";
        res.on("data", (chunk) => (text += chunk));
        res.on("end", () => resolve({ status: res.statusCode, headers: res.headers, text }));
        res.on("error", reject);
      },
    );
    req.on("timeout", () => req.destroy(new Error(`${method} ${url}: no answer within ${timeoutMs} ms`)));
    req.on("error", reject);
    req.end(body);
  });
}

/**
 * `POST /publish` on `base` (an instance or nginx); returns the event id. Never retries. For an
 * `https:` base, `ca` is the PEM to verify the certificate with (see `request`).
 */
export async function publish(base, channel, data, { event, apiKey, ca } = {}) {
  const body = { channel, data };
  if (event !== undefined) body.event = event;
  const headers = { "content-type": "application/json" };
  if (apiKey) headers.authorization = `Bearer ${apiKey}`;
  const res = await request(`${base}/publish`, {
    method: "POST",
    headers,
    body: JSON.stringify(body),
    ca,
    timeoutMs: WAIT_MS,
  });
  if (res.status !== 200) throw new Error(`publish to ${base} failed: ${res.status} ${res.text}`);
  return JSON.parse(res.text).id;
}

/**
 * The application protocol a TLS server at `addr` (`host:port`) picks by ALPN from `offer`:
 * `"h2"`, `"http/1.1"`, or `false` when it selected none. The certificate is verified against
 * `ca` when given.
 */
export function negotiatedAlpn(addr, { offer = ["h2", "http/1.1"], ca, timeoutMs = 5_000 } = {}) {
  const { hostname: host, port } = new URL(`https://${addr}`);
  return new Promise((resolve, reject) => {
    const socket = tls.connect({
      host,
      port: Number(port),
      ALPNProtocols: offer,
      ...(ca ? { ca } : { rejectUnauthorized: false }),
    });
    socket.setTimeout(timeoutMs, () => socket.destroy(new Error(`TLS handshake with ${addr} took over ${timeoutMs} ms`)));
    socket.once("secureConnect", () => {
      const protocol = socket.alpnProtocol;
      socket.destroy();
      resolve(protocol);
    });
    socket.once("error", reject);
  });
}

/**
 * A self-signed certificate for `localhost` and 127.0.0.1 (P-256, one day), made with the
 * `openssl` CLI (Debian package `openssl`) in `dir`; returns `{ cert, key, pem }` (two paths and
 * the certificate's text).
 */
export async function makeTestCert(dir) {
  const cert = path.join(dir, "cert.pem");
  const key = path.join(dir, "key.pem");
  const { ok, output, missing } = await run("openssl", [
    "req", "-x509",
    "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
    "-nodes", "-days", "1",
    "-subj", "/CN=localhost",
    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
    "-keyout", key, "-out", cert,
  ]);
  if (missing) throw new Error("no `openssl` on PATH: the TLS tests need it (Debian: apt-get install openssl)");
  if (!ok || !fs.existsSync(cert) || !fs.existsSync(key)) {
    throw new Error(`openssl could not make a test certificate:\n${output}`);
  }
  return { cert, key, pem: fs.readFileSync(cert, "utf8") };
}

/** Parses Prometheus text into a Map of `name{labels}` (labels as written) → number. */
export function parseMetrics(text) {
  const samples = new Map();
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?)\s+(\S+)/.exec(line);
    if (m) samples.set(m[1], Number(m[2]));
  }
  return samples;
}

/** A gateway's metrics, or null when it does not answer (e.g. killed). */
export async function metrics(instance) {
  try {
    const res = await request(`${instance.base}/metrics`, { ca: instance.ca, timeoutMs: 2_000 });
    if (res.status !== 200) return null;
    return parseMetrics(res.text);
  } catch {
    return null;
  }
}

/** Open streaming connections of an instance by transport; null when it does not answer. */
export async function connections(instance) {
  const m = await metrics(instance);
  if (!m) return null;
  return {
    sse: m.get('gateway_connections{transport="sse"}') ?? 0,
    ws: m.get('gateway_connections{transport="ws"}') ?? 0,
  };
}

// ---------------------------------------------------------------------------------------------
// Topology

/**
 * Starts redis, two gateways, nginx and Chromium; registers cleanup with `t.after`. Tests use
 * `withTopology`, which also prints every process's logs when the test fails.
 */
export async function startTopology(t, { gatewayEnv = {} } = {}) {
  const topo = new Topology();
  t.after(() => topo.stop());
  try {
    await topo.start(gatewayEnv);
  } catch (e) {
    topo.dumpLogs(t);
    await topo.stop();
    throw e;
  }
  return topo;
}

/** Runs `fn(topology)`; on failure prints every process's log tail, then rethrows. */
export async function withTopology(t, options, fn) {
  const topo = await startTopology(t, options);
  try {
    return await fn(topo);
  } catch (e) {
    topo.dumpLogs(t);
    throw e;
  } finally {
    await topo.stop();
  }
}

/** A fresh page in its own context of `browser`; console output and errors go to `pageLog`. */
async function newLoggedPage(browser, pageLog) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 800 } });
  const page = await context.newPage();
  page.errors = [];
  page.on("console", (msg) => pageLog.push(`[console.${msg.type()}] ${msg.text()}`));
  page.on("pageerror", (err) => {
    page.errors.push(err);
    pageLog.push(`[pageerror] ${err.stack ?? err}`);
  });
  page.setDefaultTimeout(WAIT_MS);
  return page;
}

class Topology {
  constructor() {
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), "gw-browser-"));
    tempDirs.add(this.dir);
    this.prefix = `bt${randomBytes(4).toString("hex")}:`;
    this.gateways = [];
    this.pageLog = [];
    this.stopped = false;
  }

  async start(gatewayEnv) {
    // Chromium starts meanwhile; it is awaited whatever happens, so stop() always sees it.
    const browser = launchBrowser().then((b) => (this.browser = b));
    browser.catch(() => {}); // observed below; never an unhandled rejection
    const checkStopped = () => {
      if (this.stopped) throw new Error("topology stopped while starting");
    };
    try {
      this.redis = await startRedis();
      checkStopped();
      const started = await Promise.allSettled(
        ["A", "B"].map((name) => startGateway(name, this.redis, this.prefix, gatewayEnv)),
      );
      this.gateways = started.filter((r) => r.status === "fulfilled").map((r) => r.value);
      const failed = started.find((r) => r.status === "rejected");
      if (failed) throw failed.reason;
      checkStopped();
      this.nginx = await startNginx(this.dir, this.gateways.map((g) => g.addr));
    } finally {
      await browser.catch(() => {});
      if (this.stopped) await this.stop(); // a stop() that ran meanwhile missed what started since
    }
    await browser;
    checkStopped();
  }

  /** URL through nginx. */
  url(p = "/") {
    return `${this.nginx.base}${p}`;
  }

  /** A fresh page (own browser context) whose console output and errors are kept. */
  newPage() {
    return newLoggedPage(this.browser, this.pageLog);
  }

  /** Publishes through nginx (default) or `via` (an instance). */
  publish(channel, data, options = {}) {
    return publish(options.via?.base ?? this.nginx.base, channel, data, options);
  }

  /**
   * Waits until exactly one instance holds `expected` (default 1) connections of `transport`
   * and no other instance holds any; returns that instance.
   */
  async holder(transport, expected = 1) {
    let seen;
    return waitFor(() => `one instance holding ${expected} ${transport} connection(s) (seen: ${seen})`, async () => {
      const counts = await Promise.all(
        this.gateways.map(async (g) => (g.alive ? await connections(g) : null)),
      );
      seen = JSON.stringify(counts);
      const holders = this.gateways.filter((g, i) => counts[i] && counts[i][transport] > 0);
      const total = counts.reduce((sum, c) => sum + (c ? c.sse + c.ws : 0), 0);
      if (holders.length === 1 && counts[this.gateways.indexOf(holders[0])][transport] === expected && total === expected) {
        return holders[0];
      }
      return null;
    });
  }

  /** The other gateway. */
  other(instance) {
    return this.gateways.find((g) => g !== instance);
  }

  /** Signals an instance (default SIGKILL) and waits for it to exit. */
  kill(instance, signal = "SIGKILL") {
    return instance.kill(signal);
  }

  /** Lines of nginx's access log (request, status, upstream). */
  accessLog() {
    try {
      return fs.readFileSync(this.nginx.accessLog, "utf8").trimEnd().split("\n");
    } catch {
      return [];
    }
  }

  dumpLogs(t) {
    const parts = [];
    for (const g of this.gateways) parts.push(`--- gateway ${g.name} (${g.addr}) ${g.alive ? "running" : JSON.stringify(g.exitStatus)}\n${g.tail()}`);
    if (this.redis) {
      const boring = /oO0OoO0OoO0Oo|Redis version=|Configuration loaded|Server initialized|Memory overcommit/;
      const lines = this.redis.lines.filter((l) => !boring.test(l)).slice(-40);
      parts.push(`--- redis ${this.redis.alive ? "running" : JSON.stringify(this.redis.exitStatus)}\n${lines.join("\n")}`);
    }
    if (this.nginx) {
      parts.push(`--- nginx error.log\n${readTail(this.nginx.errorLog)}`);
      parts.push(`--- nginx access.log\n${readTail(this.nginx.accessLog)}`);
    }
    parts.push(`--- browser console\n${this.pageLog.slice(-60).join("\n")}`);
    const text = parts.join("\n");
    // stderr reaches the terminal with every reporter; t.diagnostic lands in the report.
    process.stderr.write(`\n==== logs of failed test ${t?.name ?? ""}\n${text}\n====\n`);
  }

  /** Stops everything started so far; safe to call again (it then stops what started since). */
  async stop() {
    this.stopped = true;
    const browser = this.browser;
    this.browser = undefined;
    if (browser) await Promise.race([browser.close().catch(() => {}), sleep(5_000, null, { ref: false })]);
    // nginx: fast shutdown (SIGKILL after 5 s); the rest are throwaway: SIGKILL.
    await Promise.all([
      this.nginx?.kill("SIGTERM"),
      ...[...this.gateways, this.redis].filter(Boolean).map((p) => p.kill("SIGKILL")),
    ]);
    fs.rmSync(this.dir, { recursive: true, force: true });
    tempDirs.delete(this.dir);
  }
}

// ---------------------------------------------------------------------------------------------
// Assertions shared by the tests

/** `"<epoch>:<offset>"` → { epoch, offset } (offset as a number). */
export function parseId(id) {
  const m = /^([^:,]+):(\d+)$/.exec(id);
  if (!m) throw new Error(`not a single-channel position: ${JSON.stringify(id)}`);
  return { epoch: m[1], offset: Number(m[2]) };
}

/**
 * Checks a delivery against what `publishSequence` published: event i (data String(i)) went to
 * channels[i % channels.length], and channels are fresh, so on each channel the k-th event
 * (from 1) has offset k under one epoch. `events` are { data, id, channel? } in arrival order;
 * `id` is the event's position, or with `cursor` an SSE cursor listing every channel's position
 * in sorted channel order (`channels` must be given sorted). Returns a list of problems: lost,
 * duplicated, reordered or misrouted events, and ids that do not match.
 */
export function deliveryProblems(events, { channels, count, cursor = false }) {
  const problems = [];
  const perChannel = channels.map(() => []);
  events.forEach((e, j) => {
    const i = Number(e.data);
    if (typeof e.data !== "string" || !Number.isInteger(i) || String(i) !== e.data || i < 0 || i >= count) {
      problems.push(`arrival #${j}: unexpected data ${JSON.stringify(e.data)} (id ${e.id})`);
      return;
    }
    const c = i % channels.length;
    if (e.channel !== undefined && e.channel !== channels[c]) {
      problems.push(`arrival #${j}: data ${i} arrived on ${e.channel}, was published on ${channels[c]}`);
    }
    perChannel[c].push({ i, id: e.id, j });
  });
  channels.forEach((channel, c) => {
    const expected = Array.from({ length: count }, (_, i) => i).filter((i) => i % channels.length === c);
    const got = perChannel[c].map((x) => x.i);
    const seen = new Map();
    for (const i of got) seen.set(i, (seen.get(i) ?? 0) + 1);
    const lost = expected.filter((i) => !seen.has(i));
    const duplicated = [...seen].filter(([, n]) => n > 1).map(([i, n]) => `${i}×${n}`);
    if (lost.length) problems.push(`${channel}: lost ${lost.length}: ${lost.join(",")}`);
    if (duplicated.length) problems.push(`${channel}: duplicated: ${duplicated.join(",")}`);
    const k = got.findIndex((i, k) => i !== expected[k]);
    if (k >= 0 && !lost.length && !duplicated.length) {
      problems.push(`${channel}: out of order from position ${k}: ${got.slice(Math.max(0, k - 3), k + 5).join(",")}`);
    }
    let epoch;
    perChannel[c].forEach((x, k) => {
      const position = cursor ? String(x.id).split(",")[c] : x.id;
      let parsed;
      try {
        parsed = parseId(position);
      } catch (err) {
        problems.push(`${channel}: data ${x.i}: ${err.message} (id ${x.id})`);
        return;
      }
      epoch ??= parsed.epoch;
      if (parsed.epoch !== epoch || parsed.offset !== k + 1) {
        if (problems.length < 40) {
          problems.push(`${channel}: data ${x.i} (its ${k + 1}. event) has id ${x.id}, expected ${epoch}:${k + 1}`);
        }
      }
    });
  });
  if (events.length !== count) problems.push(`received ${events.length} events in all, published ${count}`);
  return problems;
}

/** Asserts `deliveryProblems` finds nothing; the message lists what went wrong. */
export function assertExactlyOnce(events, options) {
  const problems = deliveryProblems(events, options);
  if (problems.length) {
    throw new Error(`delivery was not exactly-once in order:\n  ${problems.slice(0, 40).join("\n  ")}`);
  }
}

/**
 * Publishes `count` events (data "0".."count-1", event i on channels[i % channels.length]) one at
 * a time at about `perSecond`, through nginx. At event `killAt` it starts `onMidway()` (which
 * kills an instance) without waiting for it, and while that runs keeps publishing as fast as it
 * can straight to `survivor`, so the kill lands while events are on their way to the browser;
 * afterwards it goes on through nginx. A publish never races the kill on the instance being
 * killed (whose outcome would be unknown), and none is retried. Returns the ids and how many
 * events were published while the kill was under way.
 */
export async function publishSequence(topo, channels, { count, perSecond = 50, killAt, survivor, onMidway }) {
  const ids = [];
  const interval = 1000 / perSecond;
  let killing = null;
  let killed = false;
  let duringKill = 0;
  let next = Date.now();
  for (let i = 0; i < count; i++) {
    if (i === killAt && onMidway) {
      killing = Promise.resolve(onMidway()).finally(() => (killed = true));
    }
    const racing = killing && !killed;
    const channel = channels[i % channels.length];
    ids.push(await topo.publish(channel, String(i), racing ? { via: survivor } : {}));
    if (racing) {
      duringKill++;
      next = Date.now();
      continue;
    }
    if (killing) await killing; // rethrows a failed kill
    next += interval;
    const wait = next - Date.now();
    if (wait > 0) await sleep(wait);
    else next = Date.now();
  }
  if (killing) await killing;
  return { ids, duringKill };
}

// ---------------------------------------------------------------------------------------------
// One gateway, no nginx, no Redis

/**
 * Starts ONE gateway (in-memory engine: no Redis, no nginx) and Chromium, straight to each other
 * on 127.0.0.1; registers cleanup with `t.after`. Options:
 *
 * - `tls`: serve HTTPS with a self-signed certificate made for this run (`makeTestCert`), passed
 *   as `GATEWAY__SERVER__TLS_CERT` / `GATEWAY__SERVER__TLS_KEY`; the gateway must then print
 *   `listening on https://…`, and Chromium runs with `--ignore-certificate-errors`.
 * - `http2: false`: also set `GATEWAY__SERVER__HTTP2=false` (ALPN offers only `http/1.1`).
 *   Left alone otherwise, so the gateway's default applies.
 * - `gatewayEnv`: more `GATEWAY__…` settings.
 *
 * Tests use `withGateway`, which also prints the logs when the test fails.
 */
export async function startSingleGateway(t, { tls = false, http2, gatewayEnv = {}, name = "solo" } = {}) {
  const fixture = new SingleGateway(name);
  t.after(() => fixture.stop());
  try {
    await fixture.start({ tls, http2, gatewayEnv });
  } catch (e) {
    fixture.dumpLogs(t);
    await fixture.stop();
    throw e;
  }
  return fixture;
}

/** Runs `fn(fixture)` on a `startSingleGateway`; on failure prints the log tails, then rethrows. */
export async function withGateway(t, options, fn) {
  const fixture = await startSingleGateway(t, options);
  try {
    return await fn(fixture);
  } catch (e) {
    fixture.dumpLogs(t);
    throw e;
  } finally {
    await fixture.stop();
  }
}

class SingleGateway {
  constructor(name) {
    this.name = name;
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), "gw-browser-"));
    tempDirs.add(this.dir);
    this.pageLog = [];
    this.stopped = false;
  }

  async start({ tls, http2, gatewayEnv }) {
    // Chromium starts meanwhile; it is awaited whatever happens, so stop() always sees it.
    const browser = launchBrowser(tls ? ["--ignore-certificate-errors"] : []).then((b) => (this.browser = b));
    browser.catch(() => {}); // observed below; never an unhandled rejection
    try {
      const env = { ...gatewayEnv };
      if (tls) {
        this.cert = await makeTestCert(this.dir);
        env.GATEWAY__SERVER__TLS_CERT = this.cert.cert;
        env.GATEWAY__SERVER__TLS_KEY = this.cert.key;
      }
      if (http2 === false) env.GATEWAY__SERVER__HTTP2 = "false";
      if (this.stopped) throw new Error("stopped while starting");
      this.gateway = await spawnGateway(this.name, env, {
        engine: env.GATEWAY__REDIS__URL ? "redis" : "memory",
        scheme: tls ? "https" : "http",
        ca: this.cert?.pem,
      });
    } finally {
      await browser.catch(() => {});
      if (this.stopped) await this.stop(); // a stop() that ran meanwhile missed what started since
    }
    await browser;
    if (this.stopped) throw new Error("stopped while starting");
  }

  /** URL on the gateway (its own origin). */
  url(p = "/") {
    return `${this.gateway.base}${p}`;
  }

  /** A fresh page (own browser context) whose console output and errors are kept. */
  newPage() {
    return newLoggedPage(this.browser, this.pageLog);
  }

  /** `POST /publish` on the gateway; returns the event id. */
  publish(channel, data, options = {}) {
    return publish(this.gateway.base, channel, data, { ca: this.gateway.ca, ...options });
  }

  /** What the gateway selects by ALPN when offered `offer` (see `negotiatedAlpn`). */
  alpn(offer) {
    return negotiatedAlpn(this.gateway.addr, { offer, ca: this.gateway.ca });
  }

  dumpLogs(t) {
    const g = this.gateway;
    const parts = [];
    if (g) parts.push(`--- gateway ${g.name} (${g.base}) ${g.alive ? "running" : JSON.stringify(g.exitStatus)}\n${g.tail()}`);
    parts.push(`--- browser console\n${this.pageLog.slice(-60).join("\n")}`);
    process.stderr.write(`\n==== logs of failed test ${t?.name ?? ""}\n${parts.join("\n")}\n====\n`);
  }

  /** Stops everything started so far; safe to call again. */
  async stop() {
    this.stopped = true;
    const browser = this.browser;
    this.browser = undefined;
    if (browser) await Promise.race([browser.close().catch(() => {}), sleep(5_000, null, { ref: false })]);
    await this.gateway?.kill("SIGKILL");
    fs.rmSync(this.dir, { recursive: true, force: true });
    tempDirs.delete(this.dir);
  }
}
