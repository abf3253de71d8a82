#!/usr/bin/env bash
# Builds crates for wasm32-unknown-unknown (release), by default the engine.
#   scripts/build-wasm.sh [PACKAGE...]
# Output: target/wasm/wasm32-unknown-unknown/release/.
#
# Uses rustup's toolchain when it has the wasm32 target. Otherwise falls back to
# Debian's Rust (apt-get install rustc-web cargo-web rust-web-src lld-19), which
# ships the standard library's sources and so builds std for wasm32 itself.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=wasm32-unknown-unknown
export CARGO_TARGET_DIR=target/wasm
packages=("${@:-engine}")
package_args=()
for package in "${packages[@]}"; do
    package_args+=(-p "$package")
done

# Warnings in the project's own code fail the build, as clippy's do natively;
# dependencies' lints are capped by cargo. SIMD128 (every current browser has
# it: Chrome/Edge 91, Firefox 89, Safari 16.4) lets LLVM vectorise the CPU
# inference path's loops 4 lanes wide. RUSTFLAGS reaches only the wasm32
# artifacts here (cargo gets --target), so with either toolchain below it
# covers the project's crates and their dependencies, and with Debian's
# -Z build-std the standard library too.
export RUSTFLAGS="${RUSTFLAGS:-} -D warnings -C target-feature=+simd128"

if rustup target list --installed 2>/dev/null | grep -qx "$TARGET"; then
    echo "+ cargo build --target $TARGET --release ${package_args[*]}  (rustup toolchain)"
    cargo build --target "$TARGET" --release "${package_args[@]}"
elif [[ -x /usr/bin/cargo && -x /usr/bin/rustc && -x /usr/bin/wasm-ld-19 ]]; then
    echo "+ /usr/bin/cargo build -Z build-std=std,panic_abort --target $TARGET --release ${package_args[*]}  (Debian toolchain)"
    # Debian's cargo is stable: RUSTC_BOOTSTRAP=1 unlocks -Z build-std. RUSTC is
    # set because rustup's rustc comes first on PATH.
    env RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 \
        CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER=wasm-ld-19 \
        /usr/bin/cargo build -Z build-std=std,panic_abort --target "$TARGET" --release "${package_args[@]}"
else
    echo "No wasm32 toolchain: run 'rustup target add $TARGET', or on Debian" >&2
    echo "'apt-get install rustc-web cargo-web rust-web-src lld-19'." >&2
    exit 1
fi
