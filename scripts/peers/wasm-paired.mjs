// Our wasm CPU path against ONNX Runtime Web's wasm backend, in one V8
// process (Node: the JavaScript and WebAssembly engine of Chromium), one
// inference of each in turn, single-threaded both: the median over the pairs
// of ours / ORT is the figure, so drift of a shared machine cancels.
//
//   node scripts/peers/wasm-paired.mjs WEIGHTS.safetensors MODEL.onnx [PAIRS]
//
// Needs web/pkg (scripts/build-web.sh) and onnxruntime-web in
// $PEERS/node_modules (default target/peers, as scripts/bench-peers.sh
// installs it). Ours is timed as the package reports it (`inferenceMs`: the
// network, not the image decoding); ORT, `session.run` on the same-sized input.
// Prints one JSON line.
import { readFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const [weights, onnx, pairsArg = "31"] = process.argv.slice(2);
if (!weights || !onnx) {
    console.error("usage: node scripts/peers/wasm-paired.mjs WEIGHTS.safetensors MODEL.onnx [PAIRS]");
    process.exit(2);
}
const root = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const pkg = resolve(root, "web/pkg");
const peers = resolve(root, process.env.PEERS ?? "target/peers");

const ours = await import(pathToFileURL(`${pkg}/resnet_web.js`));
await ours.default({ module_or_path: readFileSync(`${pkg}/resnet_web_bg.wasm`) });
const ort = await import(pathToFileURL(`${peers}/node_modules/onnxruntime-web/dist/ort.wasm.min.mjs`));
ort.env.wasm.numThreads = 1;

const classifier = await ours.Classifier.load(new Uint8Array(readFileSync(weights)), { backend: "cpu" });
const session = await ort.InferenceSession.create(new Uint8Array(readFileSync(onnx)), { executionProviders: ["wasm"] });
const [channels, height, width] = classifier.inputShape;
const input = new ort.Tensor("float32", Float32Array.from({ length: channels * height * width }, (_, i) => Math.sin(i)), [1, channels, height, width]);

// A 24-bit BMP of the model's input size, so that no resizing is timed either side.
function bmp(w, h) {
    const row = Math.ceil((w * 3) / 4) * 4;
    const file = Buffer.alloc(54 + row * h);
    file.write("BM");
    file.writeUInt32LE(file.length, 2);
    file.writeUInt32LE(54, 10);
    file.writeUInt32LE(40, 14);
    file.writeInt32LE(w, 18);
    file.writeInt32LE(h, 22);
    file.writeUInt16LE(1, 26);
    file.writeUInt16LE(24, 28);
    for (let i = 54; i < file.length; i++) file[i] = (i * 37) & 255;
    return new Uint8Array(file);
}
const image = bmp(width, height);
const oursOnce = async () => (await classifier.classify(image, 5)).timings.inferenceMs;
const ortOnce = async () => {
    const start = performance.now();
    await session.run({ [session.inputNames[0]]: input });
    return performance.now() - start;
};

for (let i = 0; i < 3; i++) {
    await oursOnce();
    await ortOnce();
}
const pairs = [];
for (let i = 0; i < Number(pairsArg); i++) pairs.push([await oursOnce(), await ortOnce()]);
const median = (values) => values.slice().sort((a, b) => a - b)[values.length >> 1];
console.log(JSON.stringify({
    model: classifier.architecture,
    node: process.version,
    ort: ort.env.versions.web,
    pairs: pairs.length,
    ours_ms: median(pairs.map(([o]) => o)),
    ort_ms: median(pairs.map(([, r]) => r)),
    ours_over_ort: median(pairs.map(([o, r]) => o / r)),
}));
