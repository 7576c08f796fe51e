#!/usr/bin/env bash
# psycopg 3's own test suite (github.com/psycopg/psycopg, tests/) run three times:
# directly against a throwaway PostgreSQL 15, through Sluice in session mode and through
# Sluice in transaction mode. Prints per-target pass/fail/error/skip counts and every test
# whose result differs from the direct run.
#
# Runs by itself on a fresh Debian machine as root (or with sudo). Environment:
#   PSYCOPG_SRC         a psycopg checkout (work tree, or a bare git dir: HEAD is exported).
#                       Unset: git clone https://github.com/psycopg/psycopg at PSYCOPG_REF.
#   PSYCOPG_REF         commit/branch to clone when PSYCOPG_SRC is unset (default below).
#   PSYCOPG_VENV        virtualenv to create/reuse (default: in the temp dir, removed).
#   PSYCOPG_BINARY      psycopg-binary version from PyPI (default: the checkout's version
#                       without .devN, falling back to the newest release).
#   SLUICE_BIN          sluice binary; unset: cargo build --release -p sluice.
#   SLUICE_LOG          RUST_LOG for the two sluice processes (default: info).
#   TARGETS             subset of "direct session transaction" (default: all three).
#   PYTEST_PATHS        test paths/ids instead of the whole "tests", word-split.
#   PYTEST_EXTRA        extra pytest arguments, word-split (e.g. "-x").
#   RUN_TIMEOUT         seconds one pytest run may take (default 840).
#   TEST_TIMEOUT        per-test timeout in seconds, pytest-timeout (default 60).
#   PSYCOPG_COMPAT_OUT  keep junit XML, pytest output, sluice and server logs here.
#   COMPAT_STRICT=1     exit 1 when any test result differs from the direct run.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
PSYCOPG_REF="${PSYCOPG_REF:-c079c37c959a89a8684a3d3858cbaff7e5543e71}"
RUN_TIMEOUT="${RUN_TIMEOUT:-840}"
TEST_TIMEOUT="${TEST_TIMEOUT:-60}"
TARGETS="${TARGETS:-direct session transaction}"
PG_USER=psycopg
PG_PASS=psycopg-secret
PG_DB=psycopg_test
POOL_SIZE=10

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

log() { printf '[psycopg-compat] %s\n' "$*" >&2; }

# --- prerequisites ------------------------------------------------------------------
PGBIN=/usr/lib/postgresql/15/bin
need_apt=()
[ -x "$PGBIN/initdb" ] || need_apt+=(postgresql-15 postgresql-client-15)
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv python3-pip)
command -v setpriv >/dev/null || need_apt+=(util-linux)
if [ -z "${PSYCOPG_SRC:-}" ] || [ -d "${PSYCOPG_SRC:-}/refs" ]; then
    command -v git >/dev/null || need_apt+=(git ca-certificates)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
    log "installing ${need_apt[*]}"
    $SUDO apt-get update
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends "${need_apt[@]}"
fi
if command -v pg_lsclusters >/dev/null && pg_lsclusters -h 2>/dev/null | grep -q online; then
    $SUDO pg_ctlcluster 15 main stop 2>/dev/null || true
fi
if ! id postgres >/dev/null 2>&1; then
    $SUDO useradd --system --user-group --home-dir /var/lib/postgresql --shell /bin/bash postgres
fi

# --- temp dir and cleanup -------------------------------------------------------------
WORK="$(mktemp -d /tmp/sluice-psycopg-compat.XXXXXX)"
chmod 755 "$WORK"
PIDS=()
PGDATA_DIR=""
cleanup() {
    local rc=$?
    set +e
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null
    done
    if [ -n "$PGDATA_DIR" ] && [ -f "$PGDATA_DIR/postmaster.pid" ]; then
        as_postgres "$PGBIN/pg_ctl" -D "$PGDATA_DIR" stop -m immediate >/dev/null 2>&1
    fi
    if [ -n "${PSYCOPG_COMPAT_OUT:-}" ]; then
        mkdir -p "$PSYCOPG_COMPAT_OUT"
        cp -f "$WORK"/out/* "$PSYCOPG_COMPAT_OUT"/ 2>/dev/null
        cp -f "$WORK"/pg/postgres.log "$PSYCOPG_COMPAT_OUT"/ 2>/dev/null
        log "results kept in $PSYCOPG_COMPAT_OUT"
    fi
    rm -rf "$WORK"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM
mkdir -p "$WORK/out"

as_postgres() {
    if [ "$(id -u)" -eq 0 ]; then
        # setpriv keeps the open-files limit (runuser would reset it).
        setpriv --reuid=postgres --regid=postgres --init-groups "$@"
    else
        "$@"
    fi
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# --- the suite ------------------------------------------------------------------------
SRC="$WORK/psycopg"
mkdir -p "$SRC"
if [ -n "${PSYCOPG_SRC:-}" ]; then
    if [ -d "$PSYCOPG_SRC/tests" ] && [ -d "$PSYCOPG_SRC/psycopg" ]; then
        log "using checkout $PSYCOPG_SRC"
        (cd "$PSYCOPG_SRC" && tar --exclude=.git -cf - .) | tar -xf - -C "$SRC"
        PSYCOPG_COMMIT="$(git -C "$PSYCOPG_SRC" rev-parse HEAD 2>/dev/null || echo unknown)"
    elif git --git-dir="$PSYCOPG_SRC" rev-parse HEAD >/dev/null 2>&1; then
        log "exporting HEAD of git dir $PSYCOPG_SRC"
        git --git-dir="$PSYCOPG_SRC" archive HEAD | tar -xf - -C "$SRC"
        PSYCOPG_COMMIT="$(git --git-dir="$PSYCOPG_SRC" rev-parse HEAD)"
    else
        log "PSYCOPG_SRC=$PSYCOPG_SRC is neither a psycopg checkout nor a git dir"
        exit 2
    fi
else
    log "cloning psycopg at $PSYCOPG_REF"
    git clone --quiet https://github.com/psycopg/psycopg "$WORK/psycopg-git"
    git -C "$WORK/psycopg-git" checkout --quiet "$PSYCOPG_REF"
    git -C "$WORK/psycopg-git" archive HEAD | tar -xf - -C "$SRC"
    PSYCOPG_COMMIT="$(git -C "$WORK/psycopg-git" rev-parse HEAD)"
fi

# --- virtualenv -------------------------------------------------------------------------
VENV="${PSYCOPG_VENV:-$WORK/venv}"
SRC_VERSION="$(sed -n 's/.*"psycopg-binary == \([^;" ]*\).*/\1/p' "$SRC/psycopg/pyproject.toml" | head -1)"
BINARY_VERSION="${PSYCOPG_BINARY:-${SRC_VERSION%.dev*}}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PY="$VENV/bin/python"
log "installing the checkout's psycopg, psycopg-binary ${BINARY_VERSION:-latest} and test deps"
"$PY" -m pip install --quiet --disable-pip-version-check \
    'pytest>=6.2.5' 'pytest-timeout' 'anyio>=4.0' 'pproxy>=2.7'
# The suite tests the checkout's Python code: install it (not editable: pytest puts the
# checkout root on sys.path, where psycopg/ would shadow an editable install as a namespace
# package) from the copy; the C speed-ups come from PyPI's psycopg-binary (the release
# closest to the checkout).
"$PY" -m pip install --quiet --disable-pip-version-check --no-deps --force-reinstall "$SRC/psycopg"
"$PY" -m pip install --quiet --disable-pip-version-check 'typing-extensions>=4.6'
if ! "$PY" -m pip install --quiet --disable-pip-version-check "psycopg-binary==${BINARY_VERSION}"; then
    log "psycopg-binary==$BINARY_VERSION not available, using the newest release"
    "$PY" -m pip install --quiet --disable-pip-version-check psycopg-binary
fi
"$PY" -m pip uninstall --quiet -y pytest-randomly 2>/dev/null || true
PSYCOPG_INFO="$(cd / && "$PY" -c 'import psycopg, psycopg.pq as pq, psycopg._cmodule as c
print(f"psycopg {psycopg.version.__version__} (impl {pq.__impl__}, psycopg-binary {c.__version__}, libpq {pq.version()})")')"
log "$PSYCOPG_INFO"

# --- sluice binary ------------------------------------------------------------------------
if [ -z "${SLUICE_BIN:-}" ]; then
    log "building sluice (cargo build --release -p sluice)"
    (cd "$ROOT" && cargo build --release -p sluice)
    SLUICE_BIN="$ROOT/target/release/sluice"
fi
[ -x "$SLUICE_BIN" ] || { log "no sluice binary at $SLUICE_BIN"; exit 2; }

# --- PostgreSQL 15 --------------------------------------------------------------------------
PGROOT="$WORK/pg"
PGDATA="$PGROOT/data"
mkdir -p "$PGROOT/sock"
printf 'postgres-secret\n' >"$PGROOT/pwfile"
[ "$(id -u)" -eq 0 ] && chown -R postgres:postgres "$PGROOT"
as_postgres "$PGBIN/initdb" -D "$PGDATA" -U postgres --auth=scram-sha-256 -E UTF8 \
    --locale=C --no-sync --no-instructions --pwfile="$PGROOT/pwfile" >"$WORK/out/initdb.log" 2>&1
PGDATA_DIR="$PGDATA"
PGPORT="$(free_port)"
cat >>"$PGDATA/postgresql.conf" <<EOF
# sluice psycopg compat
listen_addresses = '127.0.0.1'
port = $PGPORT
unix_socket_directories = '$PGROOT/sock'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 300
max_prepared_transactions = 10
password_encryption = 'scram-sha-256'
shared_buffers = '64MB'
log_min_messages = warning
EOF
as_postgres "$PGBIN/pg_ctl" -D "$PGDATA" -l "$PGROOT/postgres.log" -w -t 60 start >/dev/null
PG_VERSION="$(PGPASSWORD=postgres-secret "$PGBIN/psql" -h 127.0.0.1 -p "$PGPORT" -U postgres -d postgres -Atc 'show server_version')"
log "PostgreSQL $PG_VERSION on 127.0.0.1:$PGPORT"
su_sql() { PGPASSWORD=postgres-secret "$PGBIN/psql" -h 127.0.0.1 -p "$PGPORT" -U postgres -v ON_ERROR_STOP=1 -q "$@"; }
# psycopg's CI runs the suite as a superuser; the test role is one (it creates types,
# extensions, event triggers, terminates backends ...). hstore is pre-created.
su_sql -d postgres -c "CREATE ROLE $PG_USER LOGIN SUPERUSER PASSWORD '$PG_PASS'"
su_sql -d postgres -c "CREATE DATABASE $PG_DB OWNER $PG_USER"
su_sql -d "$PG_DB" -c "CREATE EXTENSION IF NOT EXISTS hstore"

# --- sluice, twice --------------------------------------------------------------------------
declare -A DSN
DSN[direct]="host=127.0.0.1 port=$PGPORT dbname=$PG_DB user=$PG_USER password=$PG_PASS"
start_sluice() {
    local mode=$1 port admin
    port="$(free_port)"
    admin="$(free_port)"
    cat >"$WORK/sluice-$mode.toml" <<EOF
[admin]
listen = "127.0.0.1:$admin"

[postgres]
listen = "127.0.0.1:$port"
pool_mode = "$mode"
pool_size = $POOL_SIZE
min_pool_size = 2
pool_timeout = "15s"

[[postgres.databases]]
name = "$PG_DB"
upstream = "postgres://$PG_USER:$PG_PASS@127.0.0.1:$PGPORT/$PG_DB"

[[postgres.users]]
name = "$PG_USER"
password = "$PG_PASS"
EOF
    RUST_LOG="${SLUICE_LOG:-info}" "$SLUICE_BIN" run --config "$WORK/sluice-$mode.toml" \
        >"$WORK/out/sluice-$mode.log" 2>&1 &
    PIDS+=($!)
    DSN[$mode]="host=127.0.0.1 port=$port dbname=$PG_DB user=$PG_USER password=$PG_PASS"
    for _ in $(seq 100); do
        if "$PY" -c 'import sys, psycopg; psycopg.connect(sys.argv[1], connect_timeout=2).execute("select 1")' \
            "${DSN[$mode]}" 2>/dev/null; then
            log "sluice ($mode) on 127.0.0.1:$port"
            return 0
        fi
        sleep 0.2
    done
    log "sluice ($mode) did not come up:"
    tail -n 30 "$WORK/out/sluice-$mode.log" >&2
    exit 1
}
for t in $TARGETS; do
    case $t in session | transaction) start_sluice "$t" ;; direct) ;; *) log "unknown target $t"; exit 2 ;; esac
done

# --- the runs -------------------------------------------------------------------------------
# Excluded: tests/pool (the psycopg_pool package, not installed), tests/crdb (CockroachDB),
# test_typing.py (mypy runs, slow, no server involved); by the suite's own markers: slow and
# timing (seconds-long sleeps / timing-sensitive) and flakey; and -k "not leak": the
# gc-object-counting leak tests (the suite's "refcount" tests, CPU-heavy and client-side;
# that marker is added too late for -m). Tests needing modules that are not installed (gevent,
# numpy, shapely, dnspython) skip themselves. MARKERS / KEYWORDS override -m / -k.
# shellcheck disable=SC2206
PATHS=(${PYTEST_PATHS:-tests})
PYTEST_ARGS=(
    "${PATHS[@]}"
    --ignore=tests/pool --ignore=tests/crdb --ignore=tests/test_typing.py
    -m "${MARKERS:-not slow and not timing and not flakey}"
    -k "${KEYWORDS:-not leak}"
    -p no:randomly
    -o addopts=""
    --timeout="$TEST_TIMEOUT"
    -q -rfE --no-header
)
# shellcheck disable=SC2206
EXTRA=(${PYTEST_EXTRA:-})
for t in $TARGETS; do
    log "running the suite: $t"
    start=$(date +%s)
    set +e
    (cd "$SRC" && timeout -s INT -k 30 "$RUN_TIMEOUT" "$PY" -m pytest "${PYTEST_ARGS[@]}" "${EXTRA[@]}" \
        --test-dsn "${DSN[$t]}" -o cache_dir="$WORK/cache-$t" \
        --junitxml="$WORK/out/junit-$t.xml" >"$WORK/out/pytest-$t.log" 2>&1)
    rc=$?
    set -e
    log "$t: pytest exit $rc after $(($(date +%s) - start))s; $(tail -n 1 "$WORK/out/pytest-$t.log")"
    # SIGINT makes pytest stop and still write the junit XML of what ran.
    if [ $rc -eq 124 ] || [ $rc -eq 137 ] || [ $rc -eq 2 ]; then log "$t: run interrupted (timeout ${RUN_TIMEOUT}s?)"; fi
done

# --- summary --------------------------------------------------------------------------------
{
    echo "psycopg commit: $PSYCOPG_COMMIT"
    echo "$PSYCOPG_INFO"
    echo "PostgreSQL: $PG_VERSION"
    echo "sluice: $("$SLUICE_BIN" --version 2>/dev/null || echo unknown) ($SLUICE_BIN)"
} | tee "$WORK/out/versions.txt"
set +e
"$PY" - "$WORK/out" $TARGETS <<'PYEOF' | tee "$WORK/out/summary.txt"
import sys, os, xml.etree.ElementTree as ET
out, targets = sys.argv[1], sys.argv[2:]
res = {}
for t in targets:
    path = os.path.join(out, f"junit-{t}.xml")
    r = {}
    if os.path.exists(path):
        for tc in ET.parse(path).getroot().iter("testcase"):
            tid = f"{tc.get('classname')}::{tc.get('name')}"
            status, msg = "passed", ""
            for child in tc:
                if child.tag in ("failure", "error", "skipped"):
                    status = {"failure": "failed", "error": "error", "skipped": "skipped"}[child.tag]
                    msg = (child.get("message") or "").strip().splitlines()
                    msg = msg[0][:160] if msg else ""
                    if status in ("failed", "error"):
                        break
            r[tid] = (status, msg)
    res[t] = r
cols = ["passed", "failed", "error", "skipped"]
print()
print(f"| target | {' | '.join(cols)} | total |")
print("|---|" + "---:|" * (len(cols) + 1))
for t in targets:
    counts = [sum(1 for s, _ in res[t].values() if s == c) for c in cols]
    note = "" if res[t] else " (no junit: run did not finish)"
    print(f"| {t}{note} | {' | '.join(map(str, counts))} | {len(res[t])} |")
base = res.get("direct", {})
ndiff = 0
for t in targets:
    if t == "direct" or not base:
        continue
    diffs = []
    for tid in sorted(set(base) | set(res[t])):
        b = base.get(tid, ("missing", ""))[0]
        s, msg = res[t].get(tid, ("missing", ""))
        if b != s:
            diffs.append((tid, b, s, msg))
    ndiff += len(diffs)
    print(f"\n### {t}: {len(diffs)} test(s) differ from direct")
    for tid, b, s, msg in diffs:
        print(f"- {tid}: direct {b} -> {t} {s}" + (f" — {msg}" if msg else ""))
sys.exit(1 if ndiff else 0)
PYEOF
differ=$?
set -e
if [ "${COMPAT_STRICT:-0}" = 1 ] && [ $differ -ne 0 ]; then exit 1; fi
exit 0
