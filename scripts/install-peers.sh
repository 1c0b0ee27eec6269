#!/usr/bin/env bash
# Installs the real peers the end-to-end tests run against:
#   - a Python venv at <repo>/.venv with the pinned versions of tests/sim/requirements.txt
#     (pymodbus, python-snap7, asyncua);
#   - kinesalite and kinesis-local (two independent Kinesis implementations) from npm into
#     tests/peers/node_modules (package-lock.json);
#   - mosquitto via apt, only when it is missing.
# Idempotent: work already done (same pins, same lock file) is skipped, so a second run is fast.
# Works as root (CI) or as a user; apt is only used when something is missing.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
REQS="$ROOT/tests/sim/requirements.txt"
PEERS="$ROOT/tests/peers"

log() { printf 'install-peers: %s\n' "$*" >&2; }

# apt-get as root, or through sudo when available; otherwise tell the user what is missing.
APT_UPDATED=0
apt_install() {
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            sudo="sudo -n"
        else
            log "missing: $*; install them with apt-get (needs root)"
            return 1
        fi
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        log "missing: $* and no apt-get on this system; install them by hand"
        return 1
    fi
    if [ "$APT_UPDATED" -eq 0 ]; then
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        APT_UPDATED=1
    fi
    log "apt-get install $*"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

hash_of() { sha256sum "$@" | sha256sum | cut -c1-16; }

# --- Python venv -----------------------------------------------------------------------------
PYTHON="${PYTHON:-python3}"
if ! command -v "$PYTHON" >/dev/null 2>&1; then
    apt_install python3 python3-venv
fi
want_py="$(hash_of "$REQS")"
stamp_py="$VENV/.linewatch-peers"
if [ -x "$VENV/bin/python" ] && [ "$(cat "$stamp_py" 2>/dev/null)" = "$want_py" ]; then
    log "python venv up to date ($VENV)"
else
    if [ ! -x "$VENV/bin/python" ]; then
        log "creating venv $VENV"
        if ! "$PYTHON" -m venv "$VENV" 2>/dev/null; then
            # Debian splits venv/ensurepip into python3-venv.
            rm -rf "$VENV"
            apt_install python3-venv
            "$PYTHON" -m venv "$VENV"
        fi
    fi
    log "pip install -r tests/sim/requirements.txt"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQS"
    "$VENV/bin/python" -c 'import pymodbus, snap7, asyncua; print("pymodbus", pymodbus.__version__)' >&2
    echo "$want_py" >"$stamp_py"
fi

# --- npm peers -------------------------------------------------------------------------------
if ! command -v npm >/dev/null 2>&1; then
    apt_install nodejs npm
fi
want_js="$(hash_of "$PEERS/package.json" "$PEERS/package-lock.json")"
stamp_js="$PEERS/node_modules/.linewatch-peers"
if [ -d "$PEERS/node_modules/kinesalite" ] && [ -d "$PEERS/node_modules/kinesis-local" ] \
    && [ "$(cat "$stamp_js" 2>/dev/null)" = "$want_js" ]; then
    log "npm peers up to date ($PEERS/node_modules)"
else
    log "npm ci in tests/peers"
    (cd "$PEERS" && npm ci --no-audit --no-fund --loglevel=error)
    # leveldown (kinesalite's --path store) ships prebuilt binaries; check one loads.
    (cd "$PEERS" && node -e 'require("leveldown")') \
        || { log "leveldown does not load; kinesalite --path will not work"; exit 1; }
    # kinesis-local is one JavaScript file; check it is there (the kit binds it to loopback
    # through tests/peers/kinesis-local-loopback.js).
    [ -f "$PEERS/node_modules/kinesis-local/main.js" ] \
        || { log "kinesis-local is not installed in $PEERS/node_modules"; exit 1; }
    echo "$want_js" >"$stamp_js"
fi

# --- mosquitto (MQTT broker, for the rule engine's tests) ------------------------------------
if command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; then
    log "mosquitto present"
else
    apt_install mosquitto || log "continuing without mosquitto (only the MQTT tests need it)"
fi

log "done"
