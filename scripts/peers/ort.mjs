// ONNX Runtime Web in headless Chromium, for scripts/bench-peers.sh: serves
// scripts/peers/ort.html, onnxruntime-web's dist/ and the exported models on
// 127.0.0.1, and for each model and execution provider opens the page in a
// fresh browser launched as tests/browser/drive.mjs launches it (WebGPU flag
// only for the webgpu EP), then:
//   - checks the output on PyTorch's check input against PyTorch's logits,
//   - times session.run: `warmup` runs, then the median of `reps`,
//   - cold start (optional): a fresh page in the same browser, from
//     navigation to the first result, as drive.mjs measures our page.
// Prints one JSON object per model and EP on stdout (an `error` field where
// that combination failed: the failure is a result, not a crash).
//
// The first run (the page's own) and the check run come before the warm-up
// runs. Per-model options, which an EP may override ("webgpu": {...}):
//
//   node ort.mjs '{"peers": "target/peers", "eps": ["webgpu", "wasm"], "warmup": 3, "timeoutMs": 600000,
//                  "models": {"resnet20": {"reps": 31, "cold": true},
//                             "resnet18": {"reps": 11, "webgpu": {"reps": 3, "warmup": 0}}}}'
import { createServer } from "node:http";
import { createReadStream, existsSync, statSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, extname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, "../..");
const require = createRequire(join(root, "tests/browser/package.json"));
const { chromium } = require("playwright-core");

const config = JSON.parse(process.argv[2]);
const peers = resolve(root, config.peers ?? "target/peers");
const routes = [
  ["/ort/", join(peers, "node_modules/onnxruntime-web/dist")],
  ["/models/", join(peers, "models")],
  ["/", here],
];
const types = {
  ".html": "text/html", ".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm",
  ".json": "application/json", ".onnx": "application/octet-stream",
};

const server = createServer((req, res) => {
  const path = decodeURIComponent(new URL(req.url, "http://x").pathname);
  if (path === "/favicon.ico") {
    res.writeHead(204).end();
    return;
  }
  const [prefix, dir] = routes.find(([p]) => path.startsWith(p));
  const file = resolve(dir, path === "/" ? "ort.html" : path.slice(prefix.length));
  if (!file.startsWith(dir) || !existsSync(file) || !statSync(file).isFile()) {
    res.writeHead(404).end();
    return;
  }
  res.writeHead(200, { "content-type": types[extname(file)] ?? "application/octet-stream", "content-length": statSync(file).size });
  createReadStream(file).pipe(res);
});
await new Promise((ok) => server.listen(0, "127.0.0.1", ok));
const base = `http://127.0.0.1:${server.address().port}/ort.html`;

const launchFlags = [
  "--no-sandbox", "--disable-quic", "--no-first-run", "--disable-background-networking",
  "--disable-component-update", "--disable-sync",
];
const timeoutMs = config.timeoutMs ?? 600000;

// Resolves with the page's state once it has its first result, or throws
// what went wrong (an EP that cannot start, say).
async function loaded(page, url) {
  await page.goto(url);
  await page.waitForFunction(() => window.ortPage && (window.ortPage.firstResultMs != null || window.ortPage.error), null, { timeout: timeoutMs, polling: 100 });
  const state = await page.evaluate(() => ({ ...window.ortPage, ort: undefined, session: undefined, feeds: undefined, ready: undefined }));
  if (state.error) throw new Error(state.error);
  // The adapter is described just after the first result.
  await page.waitForFunction(() => window.ortPage.adapter != null, null, { timeout: 30000 });
  return page.evaluate(() => ({ firstResultMs: window.ortPage.firstResultMs, adapter: window.ortPage.adapter, version: window.ortPage.version }));
}

for (const [model, options] of Object.entries(config.models)) {
  for (const ep of config.eps ?? ["webgpu", "wasm"]) {
    const mine = { ...options, ...options[ep] };
    const out = { system: "onnxruntime-web", model, ep, bundle: ep === "webgpu" ? "ort.webgpu.min.mjs" : "ort.wasm.min.mjs", console: [] };
    const flags = ep === "webgpu" ? [...launchFlags, "--enable-unsafe-webgpu"] : launchFlags;
    const browser = await chromium.launch({ executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium", headless: true, args: flags });
    try {
      out.browser = browser.version();
      const page = await browser.newPage();
      page.setDefaultTimeout(timeoutMs);
      page.on("console", (m) => { if (m.type() === "error" || m.type() === "warning") out.console.push(`${m.type()}: ${m.text()}`.slice(0, 500)); });
      page.on("pageerror", (e) => out.console.push(`pageerror: ${e.message}`.slice(0, 500)));
      const url = `${base}?model=${model}&ep=${ep}`;
      const first = await loaded(page, url);
      Object.assign(out, { adapter: first.adapter, version: first.version, firstPageMs: first.firstResultMs });
      out.check = await page.evaluate(() => window.ortCheck());
      out.bench = await page.evaluate(([w, n]) => window.ortBench(w, n), [mine.warmup ?? config.warmup ?? 3, mine.reps]);
      if (mine.cold) {
        const cold = await browser.newPage();
        cold.setDefaultTimeout(timeoutMs);
        out.coldStartMs = (await loaded(cold, url)).firstResultMs;
      }
    } catch (e) {
      out.error = String(e?.message ?? e).split("\n").slice(0, 6).join("\n");
    } finally {
      await browser.close();
    }
    if (!out.console.length) delete out.console;
    console.log(JSON.stringify(out));
  }
}
server.close();
