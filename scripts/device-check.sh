#!/usr/bin/env bash
# Runs on a borrowed GPU machine (the workplace's device tool), from the
# repository root, with .device/ carried (scripts/device-prepare.sh fills it):
#   1. every GPU kernel against its CPU reference, and the PyTorch-parity
#      tests, on the real adapter;
#   2. `resnet-native info` (which measures and reports the kernel variants)
#      and `bench --json` on ResNet-20 and the GEMM ceiling;
#   3. PyTorch CUDA fp32 on the same card, the same ResNet-20 training step
#      (scripts/peers/peers.py torch-cuda), for issue 5's real-GPU ratio.
# Everything it prints and writes lands in $OUT (or target/device-check).
# About 5 minutes on an H100-class machine; each part is time-limited so one
# hang costs only its own slot.
#
#   bash scripts/device-check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-target/device-check}
mkdir -p "$out"
exec > >(tee "$out/log.txt") 2>&1
bin=.device
[[ -x $bin/resnet-native ]] || { echo "no $bin/resnet-native: run scripts/device-prepare.sh here first and carry .device" >&2; exit 2; }

# The Vulkan loader; the driver's ICD comes with the machine's driver mount.
for f in "$bin"/debs/*.deb; do dpkg -x "$f" /; done
ldconfig
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
if [[ -f $icd ]] && ! ls /usr/share/vulkan/icd.d/nvidia* /etc/vulkan/icd.d/nvidia* >/dev/null 2>&1; then
    export VK_DRIVER_FILES=$icd
fi
# The tests find their fixtures under the directory they were built in.
root=$(cat "$bin/source-root")
if [[ ! -e $root ]]; then
    mkdir -p "$(dirname "$root")" && ln -s "$PWD" "$root"
fi
export RESNET_CACHE_DIR=$out
nvidia-smi -L || true
status=0
step() { # name, seconds, command...
    local name=$1 seconds=$2
    shift 2
    echo "=== $name"
    local start=$SECONDS
    timeout "$seconds" "$@" || { echo "=== $name FAILED (exit $?)"; status=1; }
    echo "=== $name: $((SECONDS - start)) s"
}
step "info (kernel variants measured)" 120 "$bin"/resnet-native info
step "engine kernels vs CPU references" 240 "$bin"/engine-engine --test-threads 4
step "PyTorch parity" 120 "$bin"/engine-pytorch_parity
step "bench resnet20" 240 sh -c "$bin/resnet-native bench --json --filter resnet20 > $out/bench.json"
step "PyTorch CUDA fp32" 120 python3 scripts/peers/peers.py torch-cuda --out "$out/torch-cuda.json"
python3 - "$out" <<'EOF' || status=1
import json, os, sys
out = sys.argv[1]
ours = json.load(open(f"{out}/bench.json"))
train = next(m for m in ours["models"] if m["mode"] == "train")
line = (f"ResNet-20 training, batch {train['batch']}: ours {train['images_per_s']:.0f} img/s on "
        f"{ours['adapter']['name']} ({ours['adapter']['variant']}), {train['ceiling_ratio']:.2f} of its GEMM ceiling")
if os.path.exists(f"{out}/torch-cuda.json"):
    torch = json.load(open(f"{out}/torch-cuda.json"))
    base = torch["results"][0]["images_per_s"]
    line += f"; PyTorch {torch['torch']} CUDA fp32 {base:.0f} img/s on {torch['gpu']}: ratio {train['images_per_s'] / base:.2f}"
else:
    line += "; no PyTorch CUDA figure (see above)"
print(line)
EOF
exit $status
