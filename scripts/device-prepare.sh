#!/usr/bin/env bash
# Packs what scripts/device-check.sh runs on a borrowed GPU machine into
# .device/ (git-ignored): release builds of resnet-native and of the engine's
# GPU tests (lib tests: every kernel against its CPU reference; PyTorch
# parity), stripped, and the Vulkan loader's .deb, which that machine lacks.
# The GPU machine has no Rust toolchain and no network, so everything is built
# here (x86-64, glibc of this machine or older).
#
#   scripts/device-prepare.sh
#
# Then, through the workplace's device tool, with `.device` carried:
#   bash scripts/device-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
dir=.device
rm -rf "$dir" && mkdir -p "$dir/debs"

cargo build --release -p resnet-native
cp target/release/resnet-native "$dir/"
# The test executables cargo built, named after their target.
cargo test --release -p engine --lib --test pytorch_parity --no-run --message-format=json 2>/dev/null |
    python3 -c '
import json, shutil, sys
for line in sys.stdin:
    msg = json.loads(line)
    if msg.get("reason") == "compiler-artifact" and msg.get("executable") and msg["profile"]["test"]:
        name = "engine-" + msg["target"]["name"]
        shutil.copy(msg["executable"], sys.argv[1] + "/" + name)
        print("  " + name, file=sys.stderr)
' "$dir"
strip "$dir"/resnet-native "$dir"/engine-*
# The tests read their fixtures through the path they were built at.
pwd >"$dir/source-root"

# The Vulkan loader and the GL vendor-neutral dispatch libraries that the
# NVIDIA driver's ICD (mounted there) links against; that machine lacks both.
lists=$(mktemp -d)
mkdir -p "$lists/partial"
apt=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 "-oDir::State::Lists=$lists")
apt-get "${apt[@]}" update >/dev/null
(cd "$dir/debs" && apt-get "${apt[@]}" download libvulkan1 libglvnd0 libegl1 libgl1 libglx0 libopengl0 libgles2 2>/dev/null)
rm -rf "$lists"
du -sh "$dir"
