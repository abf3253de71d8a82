#!/usr/bin/env bash
# In-browser benchmark: the real page in headless Chromium, with WebGPU
# forced (`?backend=webgpu`: SwiftShader here), without WebGPU (the wasm CPU
# path), and with WebGPU available but the page's default `backend: "auto"`
# (which picks the CPU path on CPU adapters such as SwiftShader). For each:
# median latency of one classification over N runs after warm-up, and cold
# start (navigation to the first result in a fresh page, the image given as
# soon as the page can take one, at DOMContentLoaded: the page classifies it
# once its model has loaded; coldInferenceMs: its first network run, mostly
# the browser compiling pipelines). Prints one JSON line per run: webgpu,
# cpu, auto.
#   scripts/bench-web.sh [WEIGHTS] [N]
# WEIGHTS defaults to the shipped CIFAR-10 ResNet-20; N to 50.
# KERNELS=register-tile|workgroup-tile|compact-tile picks the WebGPU run's
# kernels (default: the package's choice for the adapter). RESNET_WEB=<dir>
# serves another checkout's web/ folder (its pkg/ built already) instead of
# building and serving this one's, e.g. to compare with another branch.
# Needs what the browser tests need (scripts/build-web.sh, chromium,
# tests/browser/node_modules).
set -euo pipefail
cd "$(dirname "$0")/.."
weights=${1:-weights/cifar10-resnet20.safetensors}
runs=${2:-50}
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
web=${RESNET_WEB:-web}
webgpu_query="?backend=webgpu${KERNELS:+&kernels=$KERNELS}"

cargo build --release -q -p resnet-native
if [[ -z "${RESNET_WEB:-}" ]]; then
    bash scripts/build-web.sh >/dev/null
fi
work=$(mktemp -d)
port=$((20000 + RANDOM % 20000))
./target/release/resnet-native serve --port "$port" --weights "$weights" --web "$web" >"$work/serve.log" 2>&1 &
server=$!
trap 'kill $server; rm -rf "$work"' EXIT
sleep 1
# A CIFAR-10-sized test image; larger models resize it like any other.
node -e '
const zlib = require("zlib"), fs = require("fs");
const crc = (b) => { let c = ~0; for (const x of b) { c ^= x; for (let k = 0; k < 8; k++) c = (c >>> 1) ^ (0xedb88320 & -(c & 1)); } return ~c >>> 0; };
const chunk = (t, d) => { const l = Buffer.alloc(4); l.writeUInt32BE(d.length); const td = Buffer.concat([Buffer.from(t), d]); const c = Buffer.alloc(4); c.writeUInt32BE(crc(td)); return Buffer.concat([l, td, c]); };
const rows = []; for (let y = 0; y < 32; y++) { rows.push(0); for (let x = 0; x < 32; x++) rows.push(x * 8, y * 8, 128); }
const ihdr = Buffer.alloc(13); ihdr.writeUInt32BE(32, 0); ihdr.writeUInt32BE(32, 4); ihdr[8] = 8; ihdr[9] = 2;
fs.writeFileSync(process.argv[1], Buffer.concat([Buffer.from([137, 80, 78, 71, 13, 10, 26, 10]), chunk("IHDR", ihdr), chunk("IDAT", zlib.deflateSync(Buffer.from(rows))), chunk("IEND", Buffer.alloc(0))]));
' "$work/image.png"
for run in "webgpu true $webgpu_query" "cpu false " "auto true "; do
    read -r requested webgpu query <<<"$run"
    node tests/browser/drive.mjs "{\"url\": \"http://127.0.0.1:$port/${query:-}\", \"webgpu\": $webgpu, \"images\": [\"$work/image.png\"], \"bench\": $runs, \"timeoutMs\": 900000}" |
        node -e '
let s = ""; process.stdin.on("data", (d) => (s += d)).on("end", () => {
  const r = JSON.parse(s);
  if (r.failure) { console.error(r.failure); process.exit(1); }
  console.log(JSON.stringify({ run: process.argv[1], model: r.architecture, backend: r.backend, adapter: r.adapter, loadMs: r.loadMs, ...r.bench }));
});' "$requested"
done
