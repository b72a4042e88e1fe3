#!/usr/bin/env bash
# The whole test suite, runnable on a fresh machine: installs what the tests need, then runs every check.
# README.md names this script as the test command and .ci/run calls it, so CI and developers run the same thing.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

echo "== formatting"
cargo fmt --check
echo "== clippy"
cargo clippy --locked --all-targets --all-features -- -D warnings
echo "== layering"
bash scripts/check-layers.sh
echo "== tests"
cargo test --locked
