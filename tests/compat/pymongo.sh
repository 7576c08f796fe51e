#!/usr/bin/env bash
# pymongo's own test suite (github.com/mongodb/mongo-python-driver, test/) run twice:
# directly against SecantusDB (shared/MONGO-TESTING.md; or a MongoDB of your own) and
# through Sluice's MongoDB listener in front of it. Prints per-target pass/fail/error/skip
# counts and every test whose result differs from the direct run.
#
# The suite runs with the checkout's own pymongo (pure Python, from PYTHONPATH: the tests
# and the driver are one version), not with the pymongo installed beside SecantusDB.
# Environment:
#   PYMONGO_SRC         a mongo-python-driver checkout (work tree, or a bare git dir:
#                       PYMONGO_REF, else HEAD, is exported). Unset: git clone
#                       https://github.com/mongodb/mongo-python-driver at PYMONGO_REF.
#   PYMONGO_REF         commit/branch (default below).
#   PYMONGO_VENV        virtualenv for pytest (default: in the temp dir, removed).
#   COMPAT_MONGODB      host:port of a running MongoDB to use instead of starting SecantusDB
#                       (it must allow the test commands: configureFailPoint).
#   SECANTUSD           SecantusDB program (default /opt/secantus/bin/secantusd-py).
#   SLUICE_BIN          sluice binary; unset: cargo build --release -p sluice.
#   SLUICE_LOG          RUST_LOG for sluice (default: info).
#   TARGETS             subset of "direct sluice" (default: both). Run them as two
#                       invocations (TARGETS=direct, then TARGETS=sluice): one Python
#                       SecantusDB serving both runs fills its WiredTiger cache during the
#                       second (WT_CACHE_FULL, internal errors in ~180 tests).
#   PYTEST_PATHS        test files/ids instead of the default list below, word-split.
#   PYTEST_EXTRA        extra pytest arguments, word-split (e.g. "-x").
#   RUN_TIMEOUT         seconds one pytest run may take (default 900).
#   TEST_TIMEOUT        per-test timeout in seconds, pytest-timeout (default 60).
#   PYMONGO_COMPAT_OUT  keep junit XML, pytest output, sluice and server logs here.
#   COMPAT_STRICT=1     exit 1 when any test result differs from the direct run.
set -euo pipefail

PYMONGO_REF="${PYMONGO_REF:-ebc4bffcc842464e48a3edbd04802d1a42bc818a}"
RUN_TIMEOUT="${RUN_TIMEOUT:-900}"
TEST_TIMEOUT="${TEST_TIMEOUT:-60}"
TARGETS="${TARGETS:-direct sluice}"
SECANTUSD="${SECANTUSD:-/opt/secantus/bin/secantusd-py}"
MAX_POOL_SIZE=20
# The driver's own files a server answers for: CRUD, cursors, databases, the client,
# bulk writes, sessions, transactions, change streams and retryable writes (the unified
# spec runners and the auth / TLS / load-balancer / encryption suites need servers and
# services these machines do not have).
DEFAULT_PATHS="test/test_collection.py test/test_cursor.py test/test_database.py
test/test_bulk.py test/test_session.py test/test_transactions.py test/test_client.py
test/test_change_stream.py test/test_retryable_writes.py"

COMPAT_NAME=pymongo
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
PIDS=()
declare -A PORT
log() { printf '[%s-compat] %s\n' "$COMPAT_NAME" "$*" >&2; }

# --- prerequisites ------------------------------------------------------------------
python3 -c 'import venv, ensurepip' 2>/dev/null || { log "python3-venv is missing"; exit 2; }
if [ -z "${COMPAT_MONGODB:-}" ] && [ ! -x "$SECANTUSD" ]; then
    log "no SecantusDB at $SECANTUSD (tests/run-all.sh installs it) and no COMPAT_MONGODB"
    exit 2
fi

# --- temp dir and cleanup -------------------------------------------------------------
WORK="$(mktemp -d /tmp/sluice-pymongo-compat.XXXXXX)"
mkdir -p "$WORK/out"
cleanup() {
    local rc=$? pid
    set +e
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null
    done
    if [ -n "${PYMONGO_COMPAT_OUT:-}" ]; then
        mkdir -p "$PYMONGO_COMPAT_OUT"
        cp -rf "$WORK"/out/. "$PYMONGO_COMPAT_OUT"/ 2>/dev/null
        log "results kept in $PYMONGO_COMPAT_OUT"
    fi
    rm -rf "$WORK"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# --- the suite ------------------------------------------------------------------------
SRC="$WORK/pymongo"
mkdir -p "$SRC"
if [ -n "${PYMONGO_SRC:-}" ]; then
    if [ -d "$PYMONGO_SRC/test" ] && [ -d "$PYMONGO_SRC/pymongo" ]; then
        log "using checkout $PYMONGO_SRC"
        (cd "$PYMONGO_SRC" && tar --exclude=.git -cf - .) | tar -xf - -C "$SRC"
        PYMONGO_COMMIT="$(git -C "$PYMONGO_SRC" rev-parse HEAD 2>/dev/null || echo unknown)"
    elif git --git-dir="$PYMONGO_SRC" rev-parse HEAD >/dev/null 2>&1; then
        rev="$PYMONGO_REF"
        git --git-dir="$PYMONGO_SRC" cat-file -e "$rev^{commit}" 2>/dev/null || rev=HEAD
        log "exporting $rev of git dir $PYMONGO_SRC"
        git --git-dir="$PYMONGO_SRC" archive "$rev" | tar -xf - -C "$SRC"
        PYMONGO_COMMIT="$(git --git-dir="$PYMONGO_SRC" rev-parse "$rev")"
    else
        log "PYMONGO_SRC=$PYMONGO_SRC is neither a mongo-python-driver checkout nor a git dir"
        exit 2
    fi
else
    log "cloning mongo-python-driver at $PYMONGO_REF"
    git clone --quiet https://github.com/mongodb/mongo-python-driver "$WORK/pymongo-git"
    git -C "$WORK/pymongo-git" checkout --quiet "$PYMONGO_REF"
    git -C "$WORK/pymongo-git" archive HEAD | tar -xf - -C "$SRC"
    PYMONGO_COMMIT="$(git -C "$WORK/pymongo-git" rev-parse HEAD)"
fi

# --- virtualenv -------------------------------------------------------------------------
VENV="${PYMONGO_VENV:-$WORK/venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PY="$VENV/bin/python"
log "installing the suite's test requirements"
"$PY" -m pip install --quiet --disable-pip-version-check -r "$SRC/requirements.txt" \
    -r "$SRC/requirements/test.txt" pytest-timeout
PYMONGO_INFO="$(cd "$SRC" && PYTHONPATH="$SRC" "$PY" -c 'import pymongo, bson
print(f"pymongo {pymongo.__version__} (C extensions: {pymongo.has_c()} / {bson.has_c()})")')"
log "$PYMONGO_INFO"

# --- sluice binary ------------------------------------------------------------------------
if [[ " $TARGETS " != *" sluice "* ]]; then
    SLUICE_BIN="${SLUICE_BIN:-none}"
elif [ -z "${SLUICE_BIN:-}" ]; then
    log "building sluice (cargo build --release -p sluice)"
    (cd "$ROOT" && cargo build --release -p sluice)
    SLUICE_BIN="$ROOT/target/release/sluice"
fi
[ "$SLUICE_BIN" = none ] || [ -x "$SLUICE_BIN" ] || { log "no sluice binary at $SLUICE_BIN"; exit 2; }

# --- the server -----------------------------------------------------------------------------
# ping PORT: succeeds when the MongoDB wire server on 127.0.0.1:PORT answers a ping.
ping() {
    PYTHONPATH="$SRC" "$PY" -c 'import sys, pymongo
pymongo.MongoClient("127.0.0.1", int(sys.argv[1]), directConnection=True,
    serverSelectionTimeoutMS=1000).admin.command("ping")' "$1" >/dev/null 2>&1
}
if [ -n "${COMPAT_MONGODB:-}" ]; then
    MONGO_HOST="${COMPAT_MONGODB%:*}"
    PORT[direct]="${COMPAT_MONGODB##*:}"
    SERVER_INFO="MongoDB at $COMPAT_MONGODB"
else
    MONGO_HOST=127.0.0.1
    PORT[direct]="$(free_port)"
    # A one-member replica set (its default), test commands on: the suite arms failpoints.
    "$SECANTUSD" --host 127.0.0.1 --port "${PORT[direct]}" --storage-path :memory: \
        --enable-test-commands --log-level WARNING >"$WORK/out/secantusd.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 100); do ping "${PORT[direct]}" && break; sleep 0.3; done
    ping "${PORT[direct]}" || { log "SecantusDB did not come up"; tail "$WORK/out/secantusd.log" >&2; exit 1; }
    SERVER_INFO="SecantusDB $("$(dirname "$SECANTUSD")/pip" show SecantusDB 2>/dev/null | sed -n 's/^Version: //p')"
fi
log "$SERVER_INFO on $MONGO_HOST:${PORT[direct]}"

# --- sluice ---------------------------------------------------------------------------------
start_sluice() {
    local port admin pg
    port="$(free_port)"
    admin="$(free_port)"
    pg="$(free_port)"
    cat >"$WORK/sluice.toml" <<EOF
[admin]
listen = "127.0.0.1:$admin"

[postgres]
listen = "127.0.0.1:$pg"

[mongo]
listen = "127.0.0.1:$port"
upstream = "mongodb://$MONGO_HOST:${PORT[direct]}/?directConnection=true"
max_pool_size = $MAX_POOL_SIZE
min_pool_size = 2
pool_timeout = "15s"
EOF
    RUST_LOG="${SLUICE_LOG:-info}" "$SLUICE_BIN" run --config "$WORK/sluice.toml" \
        >"$WORK/out/sluice.log" 2>&1 &
    PIDS+=($!)
    PORT[sluice]=$port
    for _ in $(seq 100); do
        if ping "$port"; then log "sluice on 127.0.0.1:$port"; return 0; fi
        sleep 0.2
    done
    log "sluice did not come up:"
    tail -n 30 "$WORK/out/sluice.log" >&2
    exit 1
}
for t in $TARGETS; do
    case $t in
        sluice) start_sluice ;;
        direct) ;;
        *) log "unknown target $t"; exit 2 ;;
    esac
done

# --- the runs -------------------------------------------------------------------------------
# The suite's own default selection (-m default: not the auth, TLS, load-balancer, OCSP,
# encryption, mockupdb ... markers). The suite finds its server by DB_IP / DB_PORT and
# discovers the rest itself (replica set, mongos, test commands).
# shellcheck disable=SC2206
PATHS=(${PYTEST_PATHS:-$DEFAULT_PATHS})
# shellcheck disable=SC2206
EXTRA=(${PYTEST_EXTRA:-})
for t in $TARGETS; do
    log "running the suite: $t"
    start=$(date +%s)
    set +e
    (cd "$SRC" && DB_IP=127.0.0.1 DB_PORT="${PORT[$t]}" PYTHONPATH="$SRC" \
        timeout -s INT -k 30 "$RUN_TIMEOUT" "$PY" -m pytest "${PATHS[@]}" \
        -m "${MARKERS:-default}" -p no:randomly -o addopts="" -o cache_dir="$WORK/cache-$t" \
        --timeout="$TEST_TIMEOUT" -q -rfE --no-header "${EXTRA[@]}" \
        --junitxml="$WORK/out/junit-$t.xml" >"$WORK/out/pytest-$t.log" 2>&1)
    rc=$?
    set -e
    log "$t: pytest exit $rc after $(($(date +%s) - start))s; $(tail -n 1 "$WORK/out/pytest-$t.log")"
    if [ $rc -eq 124 ] || [ $rc -eq 137 ] || [ $rc -eq 2 ]; then log "$t: run interrupted (timeout ${RUN_TIMEOUT}s?)"; fi
done

# --- summary --------------------------------------------------------------------------------
{
    echo "mongo-python-driver commit: $PYMONGO_COMMIT"
    echo "$PYMONGO_INFO"
    echo "server: $SERVER_INFO"
    echo "sluice: $("$SLUICE_BIN" --version 2>/dev/null || echo unknown) ($SLUICE_BIN)"
} | tee "$WORK/out/versions.txt"
set +e
python3 "$ROOT/tests/compat/junit_diff.py" "$WORK/out" $TARGETS | tee "$WORK/out/summary.txt"
rc=${PIPESTATUS[0]}
set -e
if [ "${COMPAT_STRICT:-0}" = 1 ] && [ "$rc" -ne 0 ]; then exit 1; fi
exit 0
