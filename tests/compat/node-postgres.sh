#!/usr/bin/env bash
# node-postgres's own integration suite (github.com/brianc/node-postgres,
# packages/pg/test/integration/**/*-tests.js, what its `make test-integration` runs) run
# three times: directly against a throwaway PostgreSQL 15, through Sluice in session mode
# and through Sluice in transaction mode. Records every test's result per target, prints
# passed / failed / errors per target and every test whose result differs from the direct
# run.
#
# The suite's tree must be provided: CI machines have no GitHub access (only package
# registries), so this script never clones. In a session, the search tool's `fetch`
# (github:brianc/node-postgres) brings a bare git dir; pass that or any checkout:
#
#   tests/compat/node-postgres.sh /path/to/node-postgres          # or NODE_PG_SRC=...
#
# Runs by itself on a fresh Debian machine as root (or with sudo): installs PostgreSQL 15,
# Node.js and npm when missing, npm-installs the suite's dependencies from the npm registry
# and builds its TypeScript packages (pg-protocol, ...).
#
# Environment:
#   NODE_PG_SRC          node-postgres work tree (used in place: node_modules and dist/ are
#                        added to it, and reused next time) or a bare git dir (HEAD is
#                        exported to the temp dir). The first argument overrides it.
#   NODE_PG_COMMIT       commit to report when the work tree has no .git.
#   NODE_PG_REINSTALL=1  run npm install / tsc again in a work tree that already has them.
#   SLUICE_BIN           sluice binary; unset: cargo build --release -p sluice.
#   SLUICE_LOG           RUST_LOG for the two sluice processes (default: info).
#   TARGETS              subset of "direct session transaction" (default: all three).
#   TEST_FILES           test files (relative to packages/pg) instead of all of
#                        test/integration/**/*-tests.js, word-split.
#   FILE_TIMEOUT         seconds one test file may take (default 90).
#   TEST_TIMEOUT         the suite's own callback timeout in ms (default: the suite's 5000).
#   KEEP_GOING=1         do not stop a file at its first failing test (the suite's runner
#                        does): record it and run the file's next test, so that tests behind
#                        a failure are seen too (they may inherit its leftovers).
#   POOL_SIZE            sluice pool_size (default 10).
#   NODE_PG_COMPAT_OUT   keep per-file output, results, sluice and server logs here.
#   COMPAT_STRICT=1      exit 1 when any test result differs from the direct run.
#
# How results are collected: the suite's runner (test/suite.js) stops a file at its first
# failing test (process.exit). A preloaded reporter (node -r, written by this script; the
# suite is not modified) records every test a file queues and how it ended: passed,
# failed (assertion / rejected promise), error (the process died or the suite's 5 s
# per-test timer fired while it ran), not-run (queued after a failure). Files without any
# Suite test count as one test "(file)" decided by the exit code.
#
# TLS: as in node-postgres's CI, the server has a self-signed certificate (ssl-tests.js,
# gh-issues/2085-tests.js); so does Sluice ([postgres.tls] mode = "allow"), and Sluice
# talks to the server with its default sslmode (prefer). Not exercised, as in node-postgres's
# CI: connection-pool/tls-tests.js's client-certificate test (needs PG_CLIENT_CERT_TEST),
# direct SSL negotiation (PostgreSQL 17+), pg-native (not installed), the Cloudflare worker
# tests (vitest + wrangler, no server involved).
set -euo pipefail

TARGETS="${TARGETS:-direct session transaction}"
FILE_TIMEOUT="${FILE_TIMEOUT:-90}"
POOL_SIZE="${POOL_SIZE:-10}"
NODE_PG_SRC="${1:-${NODE_PG_SRC:-}}"
# What node-postgres's CI uses (.github/workflows/ci.yml): superuser postgres, database
# ci_db_test, two SCRAM roles for sasl-scram-tests.js (one with a password SASLprep changes).
PG_USER=postgres
PG_PASS=postgres-secret
PG_DB=ci_db_test
SCRAM_USER=scram_test
SCRAM_PASS=test4scram
SCRAM_UNICODE_USER=scram_unicode_test
SCRAM_UNICODE_PASS=$'IX-\u2168'

COMPAT_NAME=node-postgres
. "$(dirname "$0")/common.sh"

if [ -z "$NODE_PG_SRC" ]; then
    cat >&2 <<'EOF'
[node-postgres-compat] no node-postgres tree given.
  Usage: tests/compat/node-postgres.sh /path/to/node-postgres   (or NODE_PG_SRC=...)
  A work tree or a bare git dir of github.com/brianc/node-postgres. This machine cannot
  reach GitHub; bring the tree another way (in a session: the fetch tool,
  source github:brianc/node-postgres).
EOF
    exit 2
fi

# --- prerequisites ----------------------------------------------------------------------
need_apt=()
command -v node >/dev/null || need_apt+=(nodejs)
command -v npm >/dev/null || need_apt+=(npm)
command -v timeout >/dev/null || need_apt+=(coreutils)
command -v openssl >/dev/null || need_apt+=(openssl)
if [ ! -d "$NODE_PG_SRC/packages/pg" ]; then command -v git >/dev/null || need_apt+=(git); fi
compat_prereqs "${need_apt[@]}"

# --- temp dir and cleanup ---------------------------------------------------------------
compat_init_work NODE_PG_COMPAT_OUT

free_port() {
    node -e 'const s=require("net").createServer();s.listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'
}

# --- the suite --------------------------------------------------------------------------
if [ -d "$NODE_PG_SRC/packages/pg/test/integration" ]; then
    SRC="$(cd "$NODE_PG_SRC" && pwd)"
    NODE_PG_COMMIT="${NODE_PG_COMMIT:-$(git -C "$SRC" rev-parse HEAD 2>/dev/null || echo unknown)}"
    log "using work tree $SRC"
elif git --git-dir="$NODE_PG_SRC" rev-parse HEAD >/dev/null 2>&1; then
    SRC="$WORK/node-postgres"
    mkdir -p "$SRC"
    git --git-dir="$NODE_PG_SRC" archive HEAD | tar -xf - -C "$SRC"
    NODE_PG_COMMIT="$(git --git-dir="$NODE_PG_SRC" rev-parse HEAD)"
    log "exported HEAD ($NODE_PG_COMMIT) of git dir $NODE_PG_SRC"
else
    log "NODE_PG_SRC=$NODE_PG_SRC is neither a node-postgres work tree nor a git dir"
    exit 2
fi
PKG="$SRC/packages/pg"
if [ "${NODE_PG_REINSTALL:-0}" = 1 ] || [ ! -d "$SRC/node_modules/async" ] \
    || [ ! -f "$SRC/packages/pg-protocol/dist/index.js" ]; then
    log "npm install (workspaces, from the npm registry; about a minute) and tsc --build"
    # --ignore-scripts: no install script is needed for the integration tests (they are
    # those of wrangler/workerd/esbuild, used only by the Cloudflare worker tests).
    (cd "$SRC" && timeout 900 npm install --no-audit --no-fund --ignore-scripts --loglevel=error \
        >"$WORK/out/npm-install.log" 2>&1) || { tail -n 40 "$WORK/out/npm-install.log" >&2; exit 1; }
    (cd "$SRC" && timeout 600 npx --no-install tsc --build >"$WORK/out/tsc.log" 2>&1) \
        || { tail -n 40 "$WORK/out/tsc.log" >&2; exit 1; }
fi
PG_JS_VERSION="$(node -p "require('$PKG/package.json').version")"
log "node-postgres $NODE_PG_COMMIT (pg $PG_JS_VERSION), node $(node --version)"

# The reporter, preloaded into every test process. It wraps test/suite.js's Suite (when the
# test file loads it) and appends one JSON line per event to $NODEPG_EVENTS.
cat >"$WORK/reporter.js" <<'JSEOF'
'use strict'
const Module = require('module')
const fs = require('fs')
const path = require('path')
const out = process.env.NODEPG_EVENTS
const suitePath = path.resolve(process.env.NODEPG_SUITE_JS)
const emit = (o) => { try { fs.appendFileSync(out, JSON.stringify(o) + '\n') } catch (e) {} }
const seen = new Map()
let current = null
let patched = false
let lastError = ''
let currentFinish = null
let hadFailure = false
const keepGoing = process.env.NODEPG_KEEP_GOING === '1'
const uniq = (name) => {
  const n = (seen.get(name) || 0) + 1
  seen.set(name, n)
  return n === 1 ? name : `${name} [${n}]`
}
const origLoad = Module._load
Module._load = function (request, parent, isMain) {
  const m = origLoad.apply(this, arguments)
  if (!patched && typeof m === 'function' && m.prototype && m.prototype.run && m.prototype.test) {
    let file
    try { file = Module._resolveFilename(request, parent, isMain) } catch (e) {}
    if (file === suitePath) { patched = true; patch(m) }
  }
  return m
}
function patch(Suite) {
  const origTest = Suite.prototype.test
  const origRun = Suite.prototype.run
  Suite.prototype.test = function (name, cb) {
    const id = uniq(String(name))
    emit({ ev: 'queued', name: id, skipped: !cb })
    const r = origTest.call(this, name, cb)
    // the Test object just queued is the last element; tag it with the unique id
    const q = this._queue && this._queue._tasks
    if (q && q.tail && q.tail.data) q.tail.data.__id = id
    else if (Array.isArray(q) && q.length) q[q.length - 1].__id = id
    return r
  }
  if (keepGoing) {
    // Same as the suite's run(), except that a failure or timeout is recorded and the next
    // test runs instead of process.exit().
    Suite.prototype.run = function (test, cb) {
      const id = test.__id || String(test.name)
      const queue = this._queue
      process.stdout.write('  ' + test.name + ' ')
      if (!test.action) { emit({ ev: 'skipped', name: id }); process.stdout.write('? - SKIPPED\n'); return cb() }
      let finished = false
      const finish = (ev, msg) => {
        if (finished) return
        finished = true
        clearTimeout(tid)
        current = null
        currentFinish = null
        emit(msg ? { ev, name: id, msg } : { ev, name: id })
        process.stdout.write(ev === 'pass' ? '✔\n' : `${ev.toUpperCase()} (keep going): ${msg}\n`)
        if (ev !== 'pass') hadFailure = true
        setImmediate(() => {
          cb()
          // a failed test often leaves a connection open: do not wait for FILE_TIMEOUT
          setImmediate(() => { if (hadFailure && queue.idle()) setTimeout(() => realExit(1), 3000) })
        })
      }
      const tid = setTimeout(() => finish('error', `did not complete within ${test.timeout}ms`), test.timeout)
      current = id
      currentFinish = finish
      emit({ ev: 'start', name: id })
      try {
        test.run((err) => (err ? finish('fail', short(err)) : finish('pass')))
      } catch (e) {
        finish('fail', short(e))
      }
    }
    return
  }
  Suite.prototype.run = function (test, cb) {
    const id = test.__id || String(test.name)
    if (!test.action) { emit({ ev: 'skipped', name: id }); return origRun.call(this, test, cb) }
    current = id
    emit({ ev: 'start', name: id })
    const origTestRun = test.run
    test.run = function (done) {
      return origTestRun.call(this, (err) => {
        current = null
        if (err) emit({ ev: 'fail', name: id, msg: short(err) })
        else emit({ ev: 'pass', name: id })
        done(err)
      })
    }
    return origRun.call(this, test, cb)
  }
}
const short = (e) => String((e && e.stack) || e).split('\n').slice(0, 3).join(' | ')
const realExit = process.exit.bind(process)
if (keepGoing) {
  // test-helper.js's uncaughtException handler exits the process: end the running test
  // instead (its leftovers may still disturb the next one).
  process.exit = function (code) {
    if (currentFinish) return currentFinish('error', `process.exit(${code}) during the test${lastError ? ': ' + lastError : ''}`)
    return realExit(code)
  }
}
process.on('uncaughtExceptionMonitor', (e) => { lastError = short(e) })
const origLog = console.log
console.log = function (...args) {
  const s = args.map(String).join(' ')
  if (/did not complete with/.test(s)) lastError = s.trim().split('\n')[0]
  return origLog.apply(this, args)
}
process.on('exit', (code) => {
  if (current) emit({ ev: 'error', name: current, msg: `process exited ${code} during the test${lastError ? ': ' + lastError : ''}` })
  emit({ ev: 'exit', code })
})
JSEOF

# --- PostgreSQL 15 ----------------------------------------------------------------------
# A self-signed certificate, used by the server and by Sluice.
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost \
    -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
    -keyout "$PGROOT/server.key" -out "$PGROOT/server.crt" >"$WORK/out/openssl.log" 2>&1
chmod 600 "$PGROOT/server.key"
compat_start_cluster "$PG_USER" "$PG_PASS" <<EOF
# sasl-scram-tests.js leaves an unauthenticated connection open; the file ends when the
# server (or Sluice, client_login_timeout) closes it: 10 s instead of 60 s.
authentication_timeout = '10s'
ssl = on
ssl_cert_file = '$PGROOT/server.crt'
ssl_key_file = '$PGROOT/server.key'
EOF
su_sql -d postgres -c "CREATE DATABASE $PG_DB"
su_sql -d postgres -c "CREATE ROLE $SCRAM_USER LOGIN PASSWORD '$SCRAM_PASS'"
su_sql -d postgres -c "CREATE ROLE $SCRAM_UNICODE_USER LOGIN PASSWORD U&'IX-\\2168'"
verifier() { su_sql -d postgres -Atc "SELECT rolpassword FROM pg_authid WHERE rolname = '$1'"; }

# --- sluice, twice ----------------------------------------------------------------------
compat_sluice_bin

sluice_probe() { # port: one query, 0 when it works
    PGPASSWORD="$PG_PASS" PGCONNECT_TIMEOUT=2 "$PGBIN/psql" -X -h 127.0.0.1 -p "$1" -U "$PG_USER" \
        -d "$PG_DB" -Atc 'select 1' >/dev/null 2>&1
}
# Users log in with the SCRAM verifiers PostgreSQL stored (so SASLprep of the unicode
# password is PostgreSQL's); every pool connects upstream as $PG_USER.
sluice_config() {
    cat <<EOF
client_login_timeout = "10s"

[postgres.tls]
mode = "allow"
cert_file = "$PGROOT/server.crt"
key_file = "$PGROOT/server.key"

[[postgres.databases]]
name = "$PG_DB"
upstream = "postgres://$PG_USER:$PG_PASS@127.0.0.1:$PGPORT/$PG_DB"

# 130-tests.js runs psql ... template1 (pg_terminate_backend) through the same host/port.
[[postgres.databases]]
name = "template1"
upstream = "postgres://$PG_USER:$PG_PASS@127.0.0.1:$PGPORT/template1"

[[postgres.users]]
name = "$PG_USER"
password = "$(verifier "$PG_USER")"

[[postgres.users]]
name = "$SCRAM_USER"
password = "$(verifier "$SCRAM_USER")"

[[postgres.users]]
name = "$SCRAM_UNICODE_USER"
password = "$(verifier "$SCRAM_UNICODE_USER")"
EOF
}
compat_start_targets

# --- the runs ---------------------------------------------------------------------------
if [ -n "${TEST_FILES:-}" ]; then
    # shellcheck disable=SC2206
    FILES=(${TEST_FILES})
else
    mapfile -t FILES < <(cd "$PKG" && find test/integration -name '*-tests.js' | LC_ALL=C sort)
fi
log "${#FILES[@]} test files"
for t in $TARGETS; do
    log "running the suite: $t (127.0.0.1:${PORT[$t]})"
    start=$(date +%s)
    mkdir -p "$WORK/out/$t"
    : >"$WORK/out/events-$t.jsonl"
    for f in "${FILES[@]}"; do
        ev="$WORK/out/$t/$(echo "$f" | tr / _).jsonl"
        : >"$ev"
        fstart=$(date +%s)
        set +e
        (cd "$PKG" && env PGHOST=127.0.0.1 PGPORT="${PORT[$t]}" PGUSER="$PG_USER" \
            PGPASSWORD="$PG_PASS" PGDATABASE="$PG_DB" \
            SCRAM_TEST_PGUSER="$SCRAM_USER" SCRAM_TEST_PGPASSWORD="$SCRAM_PASS" \
            SCRAM_TEST_PGUSER_UNICODE="$SCRAM_UNICODE_USER" \
            SCRAM_TEST_PGPASSWORD_UNICODE="$SCRAM_UNICODE_PASS" \
            ${TEST_TIMEOUT:+TEST_TIMEOUT="$TEST_TIMEOUT"} \
            NODEPG_KEEP_GOING="${KEEP_GOING:-0}" NODEPG_EVENTS="$ev" NODEPG_SUITE_JS="$PKG/test/suite.js" \
            timeout -k 5 "$FILE_TIMEOUT" node -r "$WORK/reporter.js" "$f" \
            >"$WORK/out/$t/$(echo "$f" | tr / _).log" 2>&1 </dev/null)
        rc=$?
        set -e
        secs=$(($(date +%s) - fstart))
        OUT="$WORK/out/events-$t.jsonl" node -e '
            const fs = require("fs"); const [f, rc, ev, secs] = process.argv.slice(1)
            const events = []
            for (const l of fs.readFileSync(ev, "utf8").split("\n")) { try { if (l) events.push(JSON.parse(l)) } catch (e) {} }
            fs.appendFileSync(process.env.OUT, JSON.stringify({ file: f, rc: +rc, secs: +secs, events }) + "\n")' "$f" "$rc" "$ev" "$secs"
        [ "$rc" -eq 0 ] || log "  $t $f: exit $rc after ${secs}s"
    done
    log "$t: done after $(($(date +%s) - start))s"
done

# --- results and summary ----------------------------------------------------------------
{
    echo "node-postgres commit: $NODE_PG_COMMIT (pg $PG_JS_VERSION)"
    echo "node: $(node --version), npm: $(npm --version)"
    echo "PostgreSQL: $PG_VERSION"
    echo "sluice: $("$SLUICE_BIN" --version 2>/dev/null || echo unknown) ($SLUICE_BIN), pool_size $POOL_SIZE"
} | tee "$WORK/out/versions.txt"
set +e
OUTDIR="$WORK/out" node - $TARGETS <<'JSEOF' | tee "$WORK/out/summary.txt"
const fs = require('fs')
const path = require('path')
const out = process.env.OUTDIR
const targets = process.argv.slice(2).filter((a) => a !== '-')
const res = {}
for (const t of targets) {
  const r = new Map()
  const p = path.join(out, `events-${t}.jsonl`)
  const lines = fs.existsSync(p) ? fs.readFileSync(p, 'utf8').split('\n').filter(Boolean) : []
  for (const line of lines) {
    const { file, rc, events } = JSON.parse(line)
    const st = new Map()
    for (const e of events) {
      const key = `${file} :: ${e.name}`
      if (e.ev === 'queued') st.set(key, e.skipped ? ['skipped', ''] : ['not-run', ''])
      else if (e.ev === 'skipped') st.set(key, ['skipped', ''])
      else if (e.ev === 'start') st.set(key, ['error', 'started, never finished'])
      else if (e.ev === 'pass') st.set(key, ['passed', ''])
      else if (e.ev === 'fail') st.set(key, ['failed', e.msg || ''])
      else if (e.ev === 'error') st.set(key, ['error', e.msg || ''])
    }
    const why = rc === 124 || rc === 137 ? 'file timed out' : `exit ${rc}`
    if (st.size === 0) {
      // a file without Suite tests: its exit code decides
      st.set(`${file} :: (file)`, rc === 0 ? ['passed', ''] : ['error', why])
    } else {
      for (const [k, v] of st) if (v[0] === 'error' && v[1] === 'started, never finished') v[1] = why
      const anyBad = [...st.values()].some((v) => v[0] === 'failed' || v[0] === 'error')
      if (rc !== 0 && !anyBad) st.set(`${file} :: (file)`, ['error', `${why} after its tests`])
    }
    for (const [k, v] of st) r.set(k, v)
  }
  res[t] = r
}
const rows = []
for (const t of targets) for (const [k, [s, m]] of res[t]) rows.push(`${t}\t${s}\t${k}\t${m}`)
fs.writeFileSync(path.join(out, 'results.tsv'), 'target\tstatus\ttest\tmessage\n' + rows.join('\n') + '\n')
const cols = ['passed', 'failed', 'error', 'not-run', 'skipped']
console.log()
console.log(`| target | ${cols.join(' | ')} | total |`)
console.log('|---|' + '---:|'.repeat(cols.length + 1))
for (const t of targets) {
  const vals = [...res[t].values()]
  const counts = cols.map((c) => vals.filter(([s]) => s === c).length)
  console.log(`| ${t} | ${counts.join(' | ')} | ${vals.length} |`)
}
console.log('\n(error: the test process died or timed out during the test; not-run: queued after a failure in the same file)')
const base = res.direct
let ndiff = 0
for (const t of targets) {
  if (t === 'direct' || !base) continue
  const keys = [...new Set([...base.keys(), ...res[t].keys()])].sort()
  const diffs = []
  for (const k of keys) {
    const b = (base.get(k) || ['missing'])[0]
    const [s, m] = res[t].get(k) || ['not-run', '']
    if (b !== s) diffs.push(`- ${k}: direct ${b} -> ${t} ${s}${m ? ' — ' + m.slice(0, 300) : ''}`)
  }
  ndiff += diffs.length
  console.log(`\n### ${t}: ${diffs.length} test(s) differ from direct`)
  for (const d of diffs) console.log(d)
}
process.exit(ndiff ? 1 : 0)
JSEOF
compat_exit $?
