// Drives the real page in headless Chromium and prints what it showed as JSON.
// Called by native-cli/tests/browser.rs (which compares it with the native
// `resnet-native classify`) and by scripts/bench-web.sh.
//
//   node drive.mjs '{"url": "...", "webgpu": true, "images": [...], "bad": [...],
//                    "drop": "x.png", "early": "x.png", "variants": "x.png", "screenshot": "out.png",
//                    "model": {"path": "m.safetensors", "architecture": "ResNet-18", "images": [...]},
//                    "bench": 50}'
import { chromium } from "playwright-core";
import { readFileSync, readdirSync } from "node:fs";
import { basename } from "node:path";

const config = JSON.parse(process.argv[2]);

// CPU time (ms, user + system) used so far by this process's descendants (the
// browser's processes), on Linux; null elsewhere. On a busy machine wall time
// depends on the load, CPU time much less.
function descendantsCpuMs() {
  try {
    const procs = new Map();
    for (const name of readdirSync("/proc")) {
      if (!/^\d+$/.test(name)) continue;
      try {
        const stat = readFileSync(`/proc/${name}/stat`, "utf8");
        const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
        procs.set(Number(name), { ppid: Number(fields[1]), ticks: Number(fields[11]) + Number(fields[12]) });
      } catch {}
    }
    const inTree = (pid) => {
      for (let p = pid, depth = 0; p > 1 && depth < 64; p = procs.get(p)?.ppid ?? 0, depth++) {
        if (p === process.pid) return true;
      }
      return false;
    };
    let ticks = 0;
    for (const [pid, { ticks: t }] of procs) if (pid !== process.pid && inTree(pid)) ticks += t;
    return ticks * 10; // USER_HZ is 100 on Linux
  } catch {
    return null;
  }
}
const flags = [
  "--no-sandbox", "--disable-quic", "--no-first-run", "--disable-background-networking",
  "--disable-component-update", "--disable-sync",
];
if (config.webgpu) flags.push("--enable-unsafe-webgpu");

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  headless: true,
  args: flags,
});
const out = { results: [], errors: [], console: [], requests: [] };
try {
  const page = await browser.newPage({ viewport: { width: 900, height: 640 } });
  page.on("console", (m) => out.console.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => out.console.push(`pageerror: ${e.message}`));
  page.on("request", (r) => out.requests.push(r.url()));
  page.setDefaultTimeout(config.timeoutMs ?? 120000);

  await page.goto(config.url);
  await page.evaluate(() => window.resnetApp.ready);
  Object.assign(out, await page.evaluate(() => {
    const c = window.resnetApp.classifier;
    return c
      ? { backend: c.backend, adapter: c.adapter, architecture: c.architecture, loadMs: c.loadMs }
      : { loadError: document.getElementById("error").textContent };
  }));
  if (out.loadError) throw new Error(out.loadError);
  // The longest the page's main thread went without running a 10 ms timer
  // while the images below were classified: the page must stay responsive.
  await page.evaluate(() => {
    let last = performance.now();
    window.maxMainThreadGapMs = 0;
    setInterval(() => {
      const now = performance.now();
      window.maxMainThreadGapMs = Math.max(window.maxMainThreadGapMs, now - last);
      last = now;
    }, 10);
  });

  // Picks a file with the file input; resolves once the page shows its result
  // or an error naming it.
  const pick = async (path) => {
    const name = basename(path);
    await page.evaluate(() => {
      document.getElementById("error").hidden = true;
      document.getElementById("name").textContent = "";
    });
    const started = Date.now();
    await page.setInputFiles("#file", path);
    await page.waitForFunction((name) => {
      const error = document.getElementById("error");
      const done = document.getElementById("result").dataset.state === "done"
        && document.getElementById("name").textContent === name;
      return done || (!error.hidden && error.textContent.startsWith(name));
    }, name);
    return { name, wallMs: Date.now() - started, ...(await shown()) };
  };
  const shown = (on = page) => on.evaluate(() => {
    const error = document.getElementById("error");
    if (!error.hidden) return { error: error.textContent };
    return {
      backend: document.getElementById("result").dataset.backend,
      top: [...document.querySelectorAll("#top li")].map((li) => ({
        label: li.dataset.label, index: Number(li.dataset.index), probability: Number(li.dataset.probability),
      })),
      timings: window.resnetApp.last.timings,
    };
  });

  // A fresh page given an image as soon as it can take one, before its
  // model has loaded (it classifies the image once loaded): what it showed,
  // whether the model had loaded first, the time from navigation to the
  // result (the cold start) and its first network run's.
  const early = async (path) => {
    const fresh = await browser.newPage();
    fresh.setDefaultTimeout(config.timeoutMs ?? 120000);
    await fresh.goto(config.url, { waitUntil: "domcontentloaded" });
    const loadedFirst = await fresh.evaluate(() => window.resnetApp.classifier != null);
    await fresh.setInputFiles("#file", path);
    await fresh.waitForFunction(() => window.resnetApp.firstResultMs != null || !document.getElementById("error").hidden);
    const result = { path, loadedFirst, ...(await shown(fresh)) };
    result.firstResultMs = await fresh.evaluate(() => window.resnetApp.firstResultMs);
    await fresh.close();
    return result;
  };

  for (const path of config.images ?? []) out.results.push({ path, ...(await pick(path)) });
  if (config.early) out.early = await early(config.early);
  out.maxMainThreadGapMs = await page.evaluate(() => window.maxMainThreadGapMs);
  for (const path of config.bad ?? []) out.errors.push({ path, ...(await pick(path)) });
  if (config.images?.length && config.bad?.length) {
    out.afterErrors = { path: config.images[0], ...(await pick(config.images[0])) };
  }

  if (config.drop) {
    // A real drop event carrying the file, as a person dragging it would send.
    const bytes = [...readFileSync(config.drop)];
    const name = basename(config.drop);
    await page.evaluate(({ bytes, name }) => {
      document.getElementById("name").textContent = "";
      const transfer = new DataTransfer();
      transfer.items.add(new File([new Uint8Array(bytes)], name, { type: "image/png" }));
      document.getElementById("drop").dispatchEvent(new DragEvent("drop", { dataTransfer: transfer, bubbles: true }));
    }, { bytes, name });
    await page.waitForFunction((name) => document.getElementById("name").textContent === name
      && document.getElementById("result").dataset.state === "done", name);
    out.dropped = { path: config.drop, ...(await shown()) };
  }

  if (config.screenshot) {
    if (config.images?.length) await pick(config.images[0]);
    await page.screenshot({ path: config.screenshot, fullPage: true });
  }

  if (config.variants) {
    // The same picture as every input type the API takes, through the
    // package used directly on the page's main thread (the page itself runs
    // it in a worker, where there are no <img> elements).
    const bytes = [...readFileSync(config.variants)];
    out.variants = await page.evaluate(async ({ bytes, backend }) => {
      const { default: init, Classifier } = await import("./pkg/resnet_web.js");
      await init();
      const c = await Classifier.fromUrl("model.safetensors", { backend });
      const u8 = new Uint8Array(bytes);
      const blob = new Blob([u8], { type: "image/png" });
      const img = new Image();
      img.src = URL.createObjectURL(blob);
      const bitmap = await createImageBitmap(blob);
      const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
      const context = canvas.getContext("2d");
      context.drawImage(bitmap, 0, 0);
      const imageData = context.getImageData(0, 0, bitmap.width, bitmap.height);
      const inputs = { Uint8Array: u8, ArrayBuffer: u8.slice().buffer, Blob: blob, HTMLImageElement: img, ImageBitmap: bitmap, ImageData: imageData };
      const result = {};
      for (const [kind, input] of Object.entries(inputs)) result[kind] = (await c.classify(input, 5)).top;
      try { await c.classify(42); } catch (e) { result.wrongType = e.message; }
      try { await Classifier.fromUrl("absent.safetensors", { backend }); } catch (e) { result.absentUrl = e.message; }
      result.backend = c.backend;
      c.free();
      return result;
    }, { bytes, backend: out.backend });
  }

  if (config.model) {
    // Another network dropped on the page: it replaces the model, then classifies.
    await page.setInputFiles("#file", config.model.path);
    await page.waitForFunction((arch) => window.resnetApp.classifier?.architecture === arch, config.model.architecture);
    out.model = await page.evaluate(() => {
      const c = window.resnetApp.classifier;
      return { architecture: c.architecture, classes: c.classes.length, inputShape: [...c.inputShape], backend: c.backend };
    });
    out.modelResults = [];
    for (const path of config.model.images) out.modelResults.push({ path, ...(await pick(path)) });
  }

  if (config.bench) {
    // Median in-page latency of one classification after warm-up.
    const bytes = [...readFileSync(config.images[0])];
    await page.evaluate(async ({ bytes }) => {
      const input = new Uint8Array(bytes);
      for (let i = 0; i < 3; i++) await window.resnetApp.classifier.classify(input);
    }, { bytes });
    const cpuBefore = descendantsCpuMs();
    out.bench = await page.evaluate(async ({ bytes, n }) => {
      const c = window.resnetApp.classifier;
      const input = new Uint8Array(bytes);
      const total = [], network = [];
      for (let i = 0; i < n; i++) {
        const t0 = performance.now();
        const r = await c.classify(input);
        total.push(performance.now() - t0);
        network.push(r.timings.inferenceMs);
      }
      const median = (xs) => xs.sort((a, b) => a - b)[xs.length >> 1];
      return { n, medianMs: median(total), medianNetworkMs: median(network) };
    }, { bytes, n: config.bench });
    // The browser's CPU time per classification (all its processes and
    // threads): what the run costs whatever else the machine is doing.
    const cpuAfter = descendantsCpuMs();
    if (cpuBefore != null && cpuAfter != null) out.bench.cpuMsPerRun = (cpuAfter - cpuBefore) / config.bench;
    // Cold start: a fresh page, from navigation to the first result, the
    // image given as soon as the page can take it (as ONNX Runtime Web's
    // peer page runs its first inference as soon as it has loaded).
    const cold = await early(config.images[0]);
    if (cold.error) throw new Error(cold.error);
    out.bench.coldStartMs = cold.firstResultMs;
    // Of which the first network run: on WebGPU mostly waiting for the
    // browser to compile the pipelines.
    out.bench.coldInferenceMs = cold.timings.inferenceMs;
  }
} catch (e) {
  out.failure = String(e.stack ?? e);
} finally {
  await browser.close();
}
console.log(JSON.stringify(out, null, 1));
