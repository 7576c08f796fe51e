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

PSYCOPG_REF="${PSYCOPG_REF:-c079c37c959a89a8684a3d3858cbaff7e5543e71}"
RUN_TIMEOUT="${RUN_TIMEOUT:-840}"
TEST_TIMEOUT="${TEST_TIMEOUT:-60}"
TARGETS="${TARGETS:-direct session transaction}"
PG_USER=psycopg
PG_PASS=psycopg-secret
PG_DB=psycopg_test
POOL_SIZE=10

COMPAT_NAME=psycopg
. "$(dirname "$0")/common.sh"

# --- prerequisites ------------------------------------------------------------------
need_apt=()
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv python3-pip)
if [ -z "${PSYCOPG_SRC:-}" ] || [ -d "${PSYCOPG_SRC:-}/refs" ]; then
    command -v git >/dev/null || need_apt+=(git ca-certificates)
fi
compat_prereqs "${need_apt[@]}"

# --- temp dir and cleanup -------------------------------------------------------------
compat_init_work PSYCOPG_COMPAT_OUT

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
compat_sluice_bin

# --- PostgreSQL 15 --------------------------------------------------------------------------
compat_start_cluster postgres postgres-secret <<EOF
max_prepared_transactions = 10
EOF
# psycopg's CI runs the suite as a superuser; the test role is one (it creates types,
# extensions, event triggers, terminates backends ...). hstore is pre-created.
su_sql -d postgres -c "CREATE ROLE $PG_USER LOGIN SUPERUSER PASSWORD '$PG_PASS'"
su_sql -d postgres -c "CREATE DATABASE $PG_DB OWNER $PG_USER"
su_sql -d "$PG_DB" -c "CREATE EXTENSION IF NOT EXISTS hstore"

# --- sluice, twice --------------------------------------------------------------------------
# Users log in to sluice with the same password as upstream.
sluice_config() {
    cat <<EOF

[[postgres.databases]]
name = "$PG_DB"
upstream = "postgres://$PG_USER:$PG_PASS@127.0.0.1:$PGPORT/$PG_DB"

[[postgres.users]]
name = "$PG_USER"
password = "$PG_PASS"
EOF
}
sluice_probe() {
    "$PY" -c 'import sys, psycopg; psycopg.connect(sys.argv[1], connect_timeout=2).execute("select 1")' \
        "host=127.0.0.1 port=$1 dbname=$PG_DB user=$PG_USER password=$PG_PASS" 2>/dev/null
}
compat_start_targets
declare -A DSN
for t in $TARGETS; do
    DSN[$t]="host=127.0.0.1 port=${PORT[$t]} dbname=$PG_DB user=$PG_USER password=$PG_PASS"
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
compat_exit $?
