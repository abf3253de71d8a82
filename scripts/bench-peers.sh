#!/usr/bin/env bash
# Peer comparison: PyTorch on the CPU and ONNX Runtime Web (WebGPU and wasm,
# in headless Chromium) side by side with this engine (native `resnet-native
# bench` and the web page), in one run, on four workloads:
#   1. CIFAR ResNet-20 (option A) inference, batch 1, ms: PyTorch CPU (2 threads,
#      and 1), ORT Web webgpu and wasm, ours native ("resnet20 infer-folded b1")
#      and our page via scripts/bench-web.sh (WebGPU forced, the wasm CPU path,
#      and the default backend "auto");
#   2. ResNet-20 training step, batch 128, img/s: PyTorch CPU (SGD with momentum,
#      cross-entropy, random data), Burn 0.22.1 on its wgpu backend, on the
#      same adapter as ours (scripts/peers/burn, built here), and ours native
#      ("resnet20 train b128");
#   3. torchvision ResNet-18 224x224 inference, batch 1, ms: PyTorch CPU, ORT Web
#      webgpu and wasm, ours native ("resnet18 infer-folded b1") and our page
#      (the same three runs);
#   4. ResNet-20 cold start in the browser (navigation to the first result, in
#      a fresh page of an already warm browser, as bench-web.sh measures it):
#      ORT Web vs our page.
# Then our wasm CPU path and ORT Web's wasm backend paired in one V8 process
# (scripts/peers/wasm-paired.mjs in Node: one inference of each in turn, the
# median of ours / ORT), on ResNet-20 and ResNet-18: a ratio that holds on a
# loaded machine, printed under the table.
# Every figure is a median of N runs after warm-up runs (3 for PyTorch, ORT Web
# and our page; `resnet-native bench` does 1 and may cut N to fit its time
# budget: results.json has each figure's reps). ORT Web times session.run
# (input upload, network, output read-back); our page's figure is the same
# span (its `inferenceMs`), with the whole classify() call (image decode and
# preprocessing included) in parentheses; native `bench` times submit + wait.
# The ResNet-20 is ours (weights/cifar10-resnet20.safetensors) in
# tests/pytorch_parity.py's module; the ResNet-18 is torchvision's with random
# weights (seed 0). Both are exported with torch.onnx.export (opset 17, eval
# mode), and the ORT page checks its output against PyTorch's on one input
# before timing (results.json: check_max_abs_diff).
#
# Writes target/peers/results.json (every figure: system, backend, adapter or
# CPU, workload, median, unit, reps), target/peers/table.md (also printed) and
# target/peers/peers.png; --publish copies the chart to docs/bench/peers.png
# (README's Benchmarks section shows it; paste table.md there by hand).
#
# Installs, on first use:
#   - Python: $PYTHON if set (it must have torch and torchvision), else a venv
#     in target/peers/venv with pip's torch torchvision numpy. Without $PYTHON
#     this DOWNLOADS A LOT: PyPI's Linux torch wheel pulls the CUDA libraries
#     (~3 GB); set TORCH_INDEX_URL (e.g. https://download.pytorch.org/whl/cpu)
#     for the CPU-only wheel where that index is reachable. onnx, onnxscript and
#     matplotlib are pip-installed into that Python when missing.
#   - npm: onnxruntime-web 1.30.x into target/peers/node_modules (~140 MB).
#   - cargo: Burn 0.22.1 and its dependencies (scripts/peers/burn/Cargo.lock),
#     built into target/peers/burn-target (~15 minutes on 2 cores, once). Its
#     first run also autotunes Burn's kernels (14 minutes on llvmpipe), cached
#     in target/environment/ for later runs.
# Needs: cargo, a Vulkan adapter (lavapipe where there is no GPU), and unless
# --skip-browser: node/npm, Chromium (/usr/bin/chromium or $CHROMIUM),
# tests/browser/node_modules (npm ci there) and what scripts/build-web.sh needs
# (wasm32 target, wasm-bindgen-cli at Cargo.lock's version).
#
# Takes about 30 minutes on a loaded 2-core machine without a GPU (most of it
# SwiftShader: the WebGPU runs and their cold starts), plus whatever building
# resnet-native and the wasm package (scripts/bench-web.sh) needs: the run in
# README took 44 minutes with both rebuilt. --quick: about 15 minutes, plus builds.
#
#   scripts/bench-peers.sh [--quick] [--skip-browser] [--skip-torch] [--skip-burn]
#                          [--skip-native] [--publish]
#     --quick             fewer repetitions (a smoke run; noisier figures)
#     --skip-browser      no ORT Web and no page (no npm, Chromium or wasm build)
#     --skip-torch        no PyTorch timings and no export (ORT and our page's
#                         ResNet-18 then reuse an earlier run's models, if any)
#     --skip-burn         no Burn (nothing of it built)
#     --skip-native       no `resnet-native bench`
#     --publish           copy the chart to docs/bench/peers.png
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"

quick=false browser=true torch=true burn=true native=true publish=false
for arg in "$@"; do
    case "$arg" in
        --quick) quick=true ;;
        --skip-browser) browser=false ;;
        --skip-torch) torch=false ;;
        --skip-burn) burn=false ;;
        --skip-native) native=false ;;
        --publish) publish=true ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown option $arg (see --help)" >&2; exit 2 ;;
    esac
done
if $quick; then
    reps=5 reps18=3 gpu18_reps=1 train_reps=2 web18_reps=1 warmup=2
else
    reps=31 reps18=11 gpu18_reps=3 train_reps=5 web18_reps=5 warmup=3
fi

out=target/peers
raw=$out/raw
rm -rf "$raw" && mkdir -p "$raw" "$out/models"
notes=$raw/notes.tsv
: >"$notes"
started=$(date +%s)
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
say() { printf '\n== %s (%s s)\n' "$*" $(($(date +%s) - started)) >&2; }
missing() { echo "bench-peers: $1" >&2; exit 1; }
# note KIND SYSTEM BACKEND WORKLOAD MESSAGE: a failed or skipped figure, for report.py.
note() { printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$(printf '%s' "$5" | tr '\t\n' '  ' | cut -c1-400)" >>"$notes"; }
last_lines() { grep -v '^\s*$' "$1" | tail -n "${2:-3}" | tr '\n' ' '; }

# --- prerequisites, checked before anything long starts ---------------------
command -v cargo >/dev/null || missing "cargo is missing (rustup: https://rustup.rs)"
if $browser; then
    chromium=${CHROMIUM:-/usr/bin/chromium}
    [[ -x "$chromium" ]] || missing "Chromium is missing at $chromium (apt-get install chromium, or set CHROMIUM), or use --skip-browser"
    command -v node >/dev/null && command -v npm >/dev/null || missing "node and npm are missing (apt-get install nodejs npm), or use --skip-browser"
    [[ -d tests/browser/node_modules/playwright-core ]] || missing "tests/browser/node_modules is missing: (cd tests/browser && npm ci), or use --skip-browser"
    command -v wasm-bindgen >/dev/null || missing "wasm-bindgen is missing, which scripts/build-web.sh needs: cargo install wasm-bindgen-cli --version =$(grep -A1 '^name = "wasm-bindgen"$' Cargo.lock | sed -n 's/^version = "\(.*\)"$/\1/p') (or use --skip-browser)"
fi

# --- Python -----------------------------------------------------------------
if [[ -n "${PYTHON:-}" ]]; then
    py=$PYTHON
elif $torch || [[ -x $out/venv/bin/python ]]; then
    py=$out/venv/bin/python
    if [[ ! -x "$py" ]]; then
        say "creating $out/venv and installing torch, torchvision (a large download)"
        python3 -m venv "$out/venv" || missing "python3 -m venv failed (apt-get install python3-venv)"
        "$py" -m pip install -q --upgrade pip
        "$py" -m pip install -q ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL" --extra-index-url https://pypi.org/simple} torch torchvision numpy
    fi
else
    py=python3 # only the report's chart needs more than the standard library
fi
if $torch; then
    "$py" -c 'import torch, torchvision, numpy' 2>/dev/null || missing "$py lacks torch/torchvision/numpy (pip install torch torchvision numpy, or unset PYTHON)"
    wanted="onnx onnxscript matplotlib"
else
    wanted=matplotlib
fi
if ! "$py" -c "import ${wanted// /, }" 2>/dev/null; then
    say "pip-installing $wanted into $py"
    "$py" -m pip install -q $wanted || missing "could not pip-install $wanted into $py (set PYTHON to a Python that has them)"
fi

# --- npm: onnxruntime-web ---------------------------------------------------
if $browser; then
    ort_version=$(node -p 'require("./target/peers/node_modules/onnxruntime-web/package.json").version' 2>/dev/null || true)
    if [[ "$ort_version" != 1.30.* ]]; then
        say "npm-installing onnxruntime-web@~1.30.0 into $out/node_modules"
        [[ -f $out/package.json ]] || echo '{"private": true, "description": "peers for scripts/bench-peers.sh"}' >$out/package.json
        npm install --prefix "$out" --no-audit --no-fund --loglevel=error onnxruntime-web@~1.30.0 >&2
    fi
fi

if $native || $browser; then
    say "building resnet-native"
    cargo build --release -q -p resnet-native
fi
if $burn; then
    say "building the Burn peer (scripts/peers/burn; long the first time)"
    cargo build --release -q --locked --manifest-path scripts/peers/burn/Cargo.toml --target-dir "$out/burn-target"
fi

# --- the models (PyTorch exports them) --------------------------------------
if $torch; then
    say "exporting the models to ONNX"
    "$py" scripts/peers/peers.py prepare --out "$out/models"
fi
have_models=$([[ -f $out/models/resnet20.onnx && -f $out/models/resnet18.safetensors ]] && echo true || echo false)

# --- PyTorch ----------------------------------------------------------------
if $torch; then
    say "PyTorch on the CPU"
    if ! "$py" scripts/peers/peers.py torch --out "$raw/torch.json" --reps "$reps" --warmup "$warmup" \
        --train-reps "$train_reps" --threads 2,1 2>"$raw/torch.log"; then
        note error PyTorch all all "$(last_lines "$raw/torch.log")"
    fi
    cat "$raw/torch.log" >&2
fi

# --- Burn, on the adapter wgpu picks by default (named beside ours) ---------
if $burn; then
    say "Burn: ResNet-20 training step"
    if ! "$out/burn-target/release/burn-peer" --reps "$train_reps" --warmup "$warmup" >"$raw/burn.json" 2>"$raw/burn.log"; then
        note error Burn all all "$(last_lines "$raw/burn.log")"
        rm -f "$raw/burn.json"
    fi
    grep -v '^\s*$' "$raw/burn.log" | tail -n 3 >&2
fi

# --- ours, native -----------------------------------------------------------
if $native; then
    for case in "resnet20 infer-folded b1" "resnet20 train b128" "resnet18 infer-folded b1"; do
        say "resnet-native bench: $case"
        key=$(echo "$case" | sed 's/infer-folded/infer/; s/ /-/g')
        r=$reps
        [[ "$case" == resnet18* ]] && r=$reps18
        [[ "$case" == *train* ]] && r=$train_reps
        if ! ./target/release/resnet-native bench --json --reps "$r" --filter "$case" >"$raw/native-$key.json" 2>"$raw/native-$key.log"; then
            note error "ours (resnet-native)" "native wgpu" "$key" "$(last_lines "$raw/native-$key.log")"
            rm -f "$raw/native-$key.json"
        fi
        grep -E '^(adapter|resnet)' "$raw/native-$key.log" >&2 || true
    done
fi

# --- the browser: ONNX Runtime Web, then our page ---------------------------
if $browser; then
    if $have_models; then
        say "ONNX Runtime Web in Chromium"
        # ResNet-18 on WebGPU: over a minute per run on SwiftShader, so fewer runs
        # and no warm-up beyond the page's first run and the check run.
        config=$(printf '{"peers": "%s", "warmup": %d, "eps": ["webgpu", "wasm"], "models": {"resnet20": {"reps": %d, "cold": true}, "resnet18": {"reps": %d, "webgpu": {"reps": %d, "warmup": 0}}}}' \
            "$out" "$warmup" "$reps" "$reps18" "$gpu18_reps")
        if ! node scripts/peers/ort.mjs "$config" >"$raw/ort.jsonl" 2>"$raw/ort.log"; then
            note error "ONNX Runtime Web" "all" all "$(last_lines "$raw/ort.log")"
        fi
        cut -c1-300 "$raw/ort.jsonl" >&2
    else
        note skipped "ONNX Runtime Web" all all "no exported models (run without --skip-torch once)"
    fi

    say "our page (scripts/bench-web.sh, ResNet-20)"
    if ! bash scripts/bench-web.sh weights/cifar10-resnet20.safetensors "$reps" >"$raw/web-resnet20.jsonl" 2>"$raw/web-resnet20.log"; then
        note error "ours (web page)" all resnet20 "$(last_lines "$raw/web-resnet20.log")"
    fi
    cat "$raw/web-resnet20.jsonl" >&2

    if ! $have_models; then
        note skipped "ours (web page)" all resnet18-infer-b1 "no ResNet-18 safetensors (run without --skip-torch once)"
    else
        say "our page (scripts/bench-web.sh, ResNet-18)"
        if ! bash scripts/bench-web.sh "$out/models/resnet18.safetensors" "$web18_reps" >"$raw/web-resnet18.jsonl" 2>"$raw/web-resnet18.log"; then
            note error "ours (web page)" all resnet18-infer-b1 "$(last_lines "$raw/web-resnet18.log")"
        fi
        cat "$raw/web-resnet18.jsonl" >&2
    fi

    # Both CPU paths side by side in one V8 process (web/pkg is built by now).
    if $have_models; then
        say "our wasm CPU path and ORT Web's wasm, paired in Node"
        for model in resnet20 resnet18; do
            weights=$([[ $model == resnet20 ]] && echo weights/cifar10-resnet20.safetensors || echo "$out/models/resnet18.safetensors")
            pairs=$([[ $model == resnet20 ]] && echo "$reps" || echo "$reps18")
            if ! PEERS=$out node scripts/peers/wasm-paired.mjs "$weights" "$out/models/$model.onnx" "$pairs" \
                >>"$raw/wasm-paired.jsonl" 2>"$raw/wasm-paired-$model.log"; then
                note error "ours (web page)" "wasm CPU path" "$model-infer-b1" "paired with ORT in Node: $(last_lines "$raw/wasm-paired-$model.log")"
            fi
        done
        cat "$raw/wasm-paired.jsonl" >&2
    fi
fi

# --- the report ---------------------------------------------------------------
elapsed=$(($(date +%s) - started))
cpu=$(sed -n 's/^model name\s*:\s*//p' /proc/cpuinfo | head -1)
browser_version=$($browser && "${CHROMIUM:-/usr/bin/chromium}" --version 2>/dev/null || true)
"$py" -c 'import json, sys
keys = ["date", "cpu", "cores", "load_start", "load_end", "browser", "commit", "quick", "elapsed_s", "reps"]
meta = dict(zip(keys, sys.argv[1:]))
meta["cores"], meta["elapsed_s"] = int(meta["cores"]), int(meta["elapsed_s"])
meta["quick"] = meta["quick"] == "true"
start, end = meta["load_start"].split()[0], meta["load_end"].split()[0]
meta["machine"] = "%d cores (%s), load average %s at the start, %s at the end" % (meta["cores"], meta["cpu"], start, end)
meta["convention"] = "N runs after warm-up runs (" + meta.pop("reps") + ")"
json.dump(meta, open(sys.argv[-1], "w"), indent=1)' \
    "$(date -u +%Y-%m-%d)" "$cpu" "$(nproc)" "$load_start" "$(cut -d' ' -f1-3 /proc/loadavg)" "$browser_version" \
    "$(git describe --always --dirty 2>/dev/null || echo unknown)" "$quick" "$elapsed" \
    "N = $reps for ResNet-20 inference, $reps18 for ResNet-18 (on WebGPU: $gpu18_reps; our page: $web18_reps), $train_reps training steps; warm-up $warmup (native bench: 1)" \
    "$raw/meta.json"
"$py" scripts/peers/report.py --raw "$raw" --out "$out"
if $publish; then
    mkdir -p docs/bench
    cp "$out/peers.png" docs/bench/peers.png
    echo "copied the chart to docs/bench/peers.png" >&2
fi
say "done"
