#!/usr/bin/env bash
# The whole test suite: formatting, lints, the wasm package (engine + bindings,
# built first: the browser tests load it), then every test — GPU tests on a
# Vulkan adapter (lavapipe will do), browser tests in headless Chromium.
# `.ci/run` installs all of that on Debian, then runs this.
set -euo pipefail
cd "$(dirname "$0")/.."

run() {
    echo "+ $*"
    "$@"
}

run cargo fmt --all --check
run cargo clippy --workspace --all-targets -- -D warnings
run scripts/build-web.sh
# Release: the GPU tests take as long either way (lavapipe's JIT does that
# work), and a cold release build compiles in about half the CPU time of the dev
# profile, whose dependencies are optimised *and* carry full debug info.
run cargo test --workspace --release
