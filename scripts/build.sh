#!/usr/bin/env bash
# Builds every binary and test once (debug profile, the one the tests use), showing progress
# even under a pipe: elapsed time and crates compiled so far out of the dependency graph's size.
# `build.sh --tests` (what scripts/test.sh runs) builds through `cargo test --no-run`, so the
# binaries carry the tests' feature set (dev-dependencies turn on e.g. tokio's test-util): one
# build instead of two, which also halves the disk a cold build needs. Without it, only the
# binaries are built (what scripts/run-local.sh needs).
# The first build compiles ~400 crates: about 6 minutes on 4 free cores, 15-35 minutes on a
# busy 2-core machine; later builds take seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"

total=$(cargo metadata --format-version 1 --locked 2>/dev/null \
    | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["resolve"]["nodes"]))' 2>/dev/null || echo "?")
what=(build --workspace --bins); label="binaries"
if [ "${1:-}" = "--tests" ]; then shift; what=(test --workspace --no-run); label="binaries and tests"; fi
echo "== building the $label (debug profile; a first build takes long, see scripts/build.sh)"
start=$SECONDS
cargo "${what[@]}" --locked --color never "$@" 2>&1 | {
    n=0
    while IFS= read -r line; do
        case "$line" in
            *Compiling*) n=$((n + 1))
                printf '[%02d:%02d %d/~%s] %s\n' $(((SECONDS - start) / 60)) $(((SECONDS - start) % 60)) "$n" "$total" "${line#"${line%%[![:space:]]*}"}" ;;
            *) printf '%s\n' "$line" ;;
        esac
    done
}
printf '== built in %dm%02ds\n' $(((SECONDS - start) / 60)) $(((SECONDS - start) % 60))
