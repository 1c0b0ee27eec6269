#!/usr/bin/env bash
# Runs every test of linewatch: installs the real peers the tests talk to
# (pymodbus, kinesalite, mosquitto) if missing, then lint and the whole workspace's tests.
set -euo pipefail
cd "$(dirname "$0")/.."
# CI runs without a login shell: make sure rustup's cargo is on PATH.
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"

bash scripts/install-peers.sh
# CI builds once from a clean clone: incremental caches would only cost disk.
if [ "${CI:-}" = "true" ]; then export CARGO_INCREMENTAL=0; fi
# A minimal rustup toolchain may lack the lint components.
for c in rustfmt clippy; do
    if ! cargo "${c/rustfmt/fmt}" --version >/dev/null 2>&1; then
        rustup component add "$c"
    fi
done

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== the rule engine's core stays pure"
# Its contract (docs/architecture.md): no async runtime, HTTP, AWS, MQTT or store in its
# tree, not even through linewatch-runtime (which it uses without features).
# Two steps, so that a failing `cargo tree` fails the run instead of passing empty.
core_tree=$(cargo tree -p linewatch-rules-core -e normal,build --prefix none --locked)
impure=$(awk '{print $1}' <<<"$core_tree" | grep -xE 'tokio|axum|aws-.*|reqwest|rumqttc|sled' | sort -u || true)
if [ -n "$impure" ]; then
    echo "linewatch-rules-core depends on: $impure" >&2
    exit 1
fi
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
# The programs under test are built once, here, in the dev profile the tests use: the
# test kit only locates target/debug/<name> (a missing one fails; an older one than its
# sources fails under CI=true). No test runs cargo.
bash scripts/build.sh --tests
echo "== receiver script"
python3 tests/sim/test_webhook_receiver.py
echo "== cargo test"
cargo test --workspace --locked -- --test-threads="${LINEWATCH_TEST_THREADS:-2}"
