#!/usr/bin/env bash
# Runs on a borrowed GPU machine (the workplace's device tool), from the
# repository root, with .device/ carried (scripts/device-prepare.sh fills it):
#   1. `resnet-native info` (which measures and reports the kernel variants);
#   2. `bench --json` on ResNet-20 and the GEMM ceiling; then three rounds of
#      our ResNet-20 training step and PyTorch CUDA fp32's on the same card
#      (scripts/peers/peers.py torch-cuda), for issue 5's real-GPU ratio;
#   3. a per-kernel profile of our training step;
#   4. every GPU kernel against its CPU reference, and the PyTorch-parity
#      tests, on the real adapter.
# Everything it prints and writes lands in $OUT (or target/device-check), in
# at most six files (the device tool brings back eight at most). About 2 minutes on
# an H200, 1 to 3 more to start it; each part is time-limited so one hang
# costs only its own slot.
#
#   bash scripts/device-check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-target/device-check}
mkdir -p "$out"
exec > >(tee "$out/log.txt") 2>&1
bin=.device
[[ -x $bin/resnet-native ]] || { echo "no $bin/resnet-native: run scripts/device-prepare.sh here first and carry .device" >&2; exit 2; }

# The Vulkan loader and GL dispatch libraries; the driver's ICD comes with the
# machine's driver mount.
for f in "$bin"/debs/*.deb; do dpkg -x "$f" /; done
ldconfig
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
[[ -f $icd ]] && export VK_DRIVER_FILES=$icd
echo "Vulkan ICD: ${VK_DRIVER_FILES:-system}"
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
# The loader says why when it finds no driver; info also measures the kernel
# variants once (cached for the steps after it).
step "info (kernel variants measured)" 60 env VK_LOADER_DEBUG=error,warn "$bin"/resnet-native info
# Every conv shape and model of ResNet-20 once; then the ratio in alternating
# rounds (ours, PyTorch, ours, ...), since PyTorch speeds up over its first
# runs: each round's ratio is printed and the median is the figure.
step "bench resnet20" 120 sh -c "$bin/resnet-native bench --json --filter resnet20 > $out/bench.json"
# An earlier build, where one was packed as .device/resnet-native-before: the
# same benchmark, to compare kernels on this card.
if [[ -x $bin/resnet-native-before ]]; then
    step "bench resnet20 (earlier build)" 120 sh -c "$bin/resnet-native-before bench --json --filter resnet20 > $out/bench-before.json"
fi
rounds=$(mktemp -d)
for round in 1 2 3; do
    step "round $round: ours" 60 sh -c "$bin/resnet-native bench --json --filter 'resnet20 train' --reps 30 > $rounds/ours$round.json"
    step "round $round: PyTorch CUDA fp32" 60 python3 scripts/peers/peers.py torch-cuda --reps 50 --out "$rounds/torch$round.json"
done
step "profile resnet20 train" 60 sh -c "$bin/resnet-native bench --filter 'resnet20 train' --reps 3 --profile > $out/profile.txt"
step "engine kernels vs CPU references" 180 "$bin"/engine-engine --test-threads 4
step "PyTorch parity" 60 "$bin"/engine-pytorch_parity
python3 - "$rounds" "$out/rounds.json" <<'EOF' || status=1
import json, statistics, sys
rounds, summary = sys.argv[1], sys.argv[2]
ratios, kept = [], []
for round in (1, 2, 3):
    ours = json.load(open(f"{rounds}/ours{round}.json"))
    torch = json.load(open(f"{rounds}/torch{round}.json"))
    kept.append({"ours": ours, "torch": torch})
    train = next(m for m in ours["models"] if m["mode"] == "train")
    base = torch["results"][0]["images_per_s"]
    ratios.append(train["images_per_s"] / base)
    print(f"round {round}: ResNet-20 training, batch {train['batch']}: ours {train['images_per_s']:.0f} img/s on "
          f"{ours['adapter']['name']} ({ours['adapter']['variant']}), {train['ceiling_ratio']:.2f} of its GEMM ceiling; "
          f"PyTorch {torch['torch']} CUDA fp32 {base:.0f} img/s on {torch['gpu']}: ratio {ratios[-1]:.2f}")
print(f"ours / PyTorch CUDA fp32, median of {len(ratios)} rounds: {statistics.median(ratios):.2f}")
json.dump({"ratios": ratios, "median_ratio": statistics.median(ratios), "rounds": kept}, open(summary, "w"), indent=1)
EOF
exit $status
