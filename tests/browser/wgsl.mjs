// Compiles WGSL modules in Chromium's WebGPU (Tint, stricter than naga: e.g.
// its uniformity analysis) and creates a compute pipeline for every entry
// point of each. Usage: node wgsl.mjs MODULES.json, where the file holds
// [{"name": ..., "code": ...}]; prints [{"name", "module", "entries": {entry:
// error or null}}] as JSON, with "subgroups" telling whether the adapter had
// the feature (modules that enable it fail without).
import { chromium } from "playwright-core";
import { readFileSync } from "fs";
import { createServer } from "http";

const modules = JSON.parse(readFileSync(process.argv[2], "utf8"));
// WebGPU needs a secure context: an empty page from localhost.
const server = createServer((_, res) => res.end("<!doctype html><title>wgsl</title>"));
await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--enable-unsafe-webgpu", "--disable-background-networking"],
});
try {
  const page = await browser.newPage();
  await page.goto(`http://127.0.0.1:${server.address().port}/`);
  const out = await page.evaluate(async (modules) => {
    const adapter = await navigator.gpu.requestAdapter();
    const subgroups = adapter.features.has("subgroups");
    const device = await adapter.requestDevice({ requiredFeatures: subgroups ? ["subgroups"] : [] });
    const results = [];
    for (const { name, code } of modules) {
      device.pushErrorScope("validation");
      const module = device.createShaderModule({ code });
      const messages = (await module.getCompilationInfo()).messages
        .filter((m) => m.type === "error")
        .map((m) => `${m.lineNum}:${m.linePos} ${m.message}`);
      const scope = await device.popErrorScope();
      const entries = {};
      for (const [, entry] of code.matchAll(/@compute[^]*?fn\s+(\w+)/g)) {
        device.pushErrorScope("validation");
        device.createComputePipeline({ layout: "auto", compute: { module, entryPoint: entry } });
        entries[entry] = (await device.popErrorScope())?.message ?? null;
      }
      results.push({ name, module: messages.length ? messages.join("\n") : scope?.message ?? null, entries });
    }
    return { subgroups, results };
  }, modules);
  console.log(JSON.stringify(out));
} finally {
  await browser.close();
  server.close();
}
