#!/usr/bin/env bash
# Builds every binary once (debug profile, the one the tests use), showing progress even
# under a pipe: elapsed time and crates compiled so far out of the dependency graph's size.
# The first build compiles ~400 crates: about 6 minutes on 4 free cores, 15-35 minutes on a
# busy 2-core machine; later builds take seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"

total=$(cargo metadata --format-version 1 --locked 2>/dev/null \
    | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["resolve"]["nodes"]))' 2>/dev/null || echo "?")
echo "== building the binaries (debug profile; a first build takes long, see scripts/build.sh)"
start=$SECONDS
cargo build --workspace --bins --locked --color never "$@" 2>&1 | {
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
