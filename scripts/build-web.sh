#!/usr/bin/env bash
# Builds the browser package: the `resnet-web` crate for wasm32, then its
# JavaScript bindings, into web/pkg/ (an ES module, its .d.ts types and a
# package.json), which the page (web/www, `resnet-native serve`) loads and
# other web apps can import.
#   scripts/build-web.sh
# Needs wasm-bindgen-cli at exactly the wasm-bindgen version in Cargo.lock:
#   cargo install wasm-bindgen-cli --version =<that version>
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(grep -A1 '^name = "wasm-bindgen"$' Cargo.lock | sed -n 's/^version = "\(.*\)"$/\1/p')
if ! installed=$(wasm-bindgen --version 2>/dev/null); then
    echo "wasm-bindgen is not installed: cargo install wasm-bindgen-cli --version =$version" >&2
    exit 1
fi
if [[ "$installed" != "wasm-bindgen $version" ]]; then
    echo "$installed is installed but Cargo.lock uses $version:" >&2
    echo "  cargo install wasm-bindgen-cli --version =$version --force" >&2
    exit 1
fi

bash scripts/build-wasm.sh resnet-web
rm -rf web/pkg
wasm-bindgen --target web --out-dir web/pkg target/wasm/wasm32-unknown-unknown/release/resnet_web.wasm
sed "s/\"version\": \".*\"/\"version\": \"$(grep -m1 '^version' Cargo.toml | sed 's/.*"\(.*\)"/\1/')\"/" web/package.json > web/pkg/package.json
cp web/README.md web/pkg/README.md
raw=$(stat -c %s web/pkg/resnet_web_bg.wasm)
gzipped=$(gzip -9 -c web/pkg/resnet_web_bg.wasm | wc -c)
echo "web/pkg: resnet_web_bg.wasm is $raw bytes ($gzipped gzipped)"
