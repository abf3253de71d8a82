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
run cargo test --workspace
run scripts/build-wasm.sh engine
