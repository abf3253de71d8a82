#!/usr/bin/env bash
# The whole test suite: formatting, lints, every test (GPU tests included) and
# the wasm32 build of the engine. Needs a Vulkan adapter (lavapipe will do) and
# a wasm32 toolchain; `.ci/run` installs both on Debian, then runs this.
set -euo pipefail
cd "$(dirname "$0")/.."

run() {
    echo "+ $*"
    "$@"
}

run cargo fmt --all --check
run cargo clippy --workspace --all-targets -- -D warnings
# Release: the GPU tests take as long either way (lavapipe's JIT does that
# work), and a cold release build compiles in about half the CPU time of the dev
# profile, whose dependencies are optimised *and* carry full debug info.
run cargo test --workspace --release
run scripts/build-wasm.sh engine
