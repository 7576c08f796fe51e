#!/usr/bin/env bash
# Sluice benchmark harness: pgbench against direct PostgreSQL, PgBouncer and
# Sluice (interleaved), plus an idle-client memory probe. See README.md.
#
#   tests/bench/compare.sh            # full run (~15 min)
#   tests/bench/compare.sh --quick    # smoke run (~3 min)
#
# Environment overrides (all optional):
#   SLUICE_BIN=path        use this sluice binary instead of building one
#   BENCH_OUT=dir          output directory (default tests/bench/out/<full|quick>)
#   BENCH_DURATION=s       pgbench -T per run
#   BENCH_CLIENTS="1 50"   client counts
#   BENCH_SCRIPTS="select tpcb"
#   BENCH_MODES="simple extended prepared"   (-S runs)
#   BENCH_TPCB_MODES="simple prepared"       (TPC-B-like runs; default full: simple prepared)
#   BENCH_IDLE_CONNS=N     idle connections per proxy (0 = skip the idle test)
#   BENCH_LOGIN_CLIENTS=N  clients of the new-login run, pgbench -S -C (0 = skip; default 10)
#   SLUICE_METRICS_URL     Sluice /metrics URL (default: the harness gives Sluice's
#                          admin listener a free port; optional step, "n/a" if absent)
#   PG_BIN                 default /usr/lib/postgresql/15/bin
# Only 127.0.0.1 is ever contacted.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
REPORT="$HERE/report.py"
IDLE="$HERE/idle_clients.py"

MODE=full
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) MODE=quick ;;
        --full) MODE=full ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done

if [ "$MODE" = quick ]; then
    DURATION=${BENCH_DURATION:-3}
    CLIENTS=${BENCH_CLIENTS:-"1 50 500"}
    SCRIPTS=${BENCH_SCRIPTS:-"select"}
    MODES=${BENCH_MODES:-"simple prepared"}
    TPCB_MODES=${BENCH_TPCB_MODES:-"$MODES"}
    IDLE_CONNS=${BENCH_IDLE_CONNS:-5000}
    LOGIN_CLIENTS=${BENCH_LOGIN_CLIENTS:-10}
else
    DURATION=${BENCH_DURATION:-10}
    CLIENTS=${BENCH_CLIENTS:-"1 50 500 2000"}
    SCRIPTS=${BENCH_SCRIPTS:-"select tpcb"}
    MODES=${BENCH_MODES:-"simple extended prepared"}
    # -M extended is a protocol-path variant; measured on -S only to fit ~15 min.
    TPCB_MODES=${BENCH_TPCB_MODES:-"simple prepared"}
    IDLE_CONNS=${BENCH_IDLE_CONNS:-10000}
    LOGIN_CLIENTS=${BENCH_LOGIN_CLIENTS:-10}
fi
OUT=${BENCH_OUT:-"$HERE/out/$MODE"}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
SCALE=10
POOL=20
export PGPASSWORD=benchpw PGCONNECT_TIMEOUT=30
CLK_TCK=$(getconf CLK_TCK)
START_TS=$(date +%s)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

log() { printf '[%s +%4ss] %s\n' "$(date +%H:%M:%S)" "$(( $(date +%s) - START_TS ))" "$*"; }
die() { log "ERROR: $*"; exit 1; }
as_pg() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }

# ---------------------------------------------------------------- prerequisites
[ "$(id -u)" = 0 ] || die "run as root (PostgreSQL and PgBouncer are started as the postgres user via setpriv)"
id postgres >/dev/null 2>&1 || die "no postgres OS user"
[ -x "$PG_BIN/initdb" ] || die "PostgreSQL 15 binaries not found in $PG_BIN"
command -v pgbench >/dev/null || die "pgbench not found"
command -v psql >/dev/null || die "psql not found"
if ! command -v pgbouncer >/dev/null; then
    log "installing pgbouncer (apt)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y pgbouncer >/dev/null \
        || { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y pgbouncer >/dev/null; } \
        || die "could not install pgbouncer"
fi
# The package may start a system service; we run our own instance instead.
if pgrep -x pgbouncer -u postgres >/dev/null 2>&1 && [ -f /etc/pgbouncer/pgbouncer.ini ]; then
    (service pgbouncer stop || systemctl stop pgbouncer) >/dev/null 2>&1 || true
fi
(update-rc.d pgbouncer disable || systemctl disable pgbouncer) >/dev/null 2>&1 || true
PY=${PYTHON:-python3}
if ! "$PY" -c 'import asyncpg, matplotlib' 2>/dev/null; then
    log "installing asyncpg + matplotlib (pip)"
    "$PY" -m pip install --quiet asyncpg matplotlib >/dev/null 2>&1 \
        || "$PY" -m pip install --quiet --break-system-packages asyncpg matplotlib >/dev/null 2>&1 \
        || log "WARNING: pip install failed; idle test / plot may be skipped"
fi

# 2000 pgbench clients + 10,000 idle connections need file descriptors.
HARD_NOFILE=$(ulimit -Hn)
ulimit -n "$HARD_NOFILE" || true
[ "$(ulimit -n)" = unlimited ] || [ "$(ulimit -n)" -ge 12000 ] \
    || log "WARNING: open-files limit is $(ulimit -n); 2000-client / 10k-idle runs may fail"

# ---------------------------------------------------------------- sluice binary
if [ -n "${SLUICE_BIN:-}" ]; then
    [ -x "$SLUICE_BIN" ] || die "SLUICE_BIN=$SLUICE_BIN is not executable"
else
    log "building sluice (cargo build --release -p sluice; no-op when up to date)"
    (cd "$REPO" && cargo build --release -p sluice) >"${TMPDIR:-/tmp}/sluice-bench-build.log" 2>&1 \
        || { tail -30 "${TMPDIR:-/tmp}/sluice-bench-build.log"; die "cargo build failed"; }
    SLUICE_BIN="$REPO/target/release/sluice"
fi

# What was benchmarked: source tree state now (the binary may be older when SLUICE_BIN is given).
SLUICE_GIT="$(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || true)$(cd "$REPO" && [ -n "$(git status --porcelain -- crates 2>/dev/null)" ] && echo "+dirty" || true)"
SLUICE_BIN_TIME=$(date -u -r "$SLUICE_BIN" +%Y-%m-%dT%H:%MZ 2>/dev/null || echo '?')

# ---------------------------------------------------------------- workspace & cleanup
WORK=$(mktemp -d /tmp/sluice-bench.XXXXXX)
chmod 755 "$WORK"
PGDATA="$WORK/pgdata"
SLUICE_PID="" PGB_PID="" PG_STARTED=""
cleanup() {
    local rc=$?
    set +e   # best effort: a process that is already gone must not stop the cleanup
    trap - EXIT INT TERM
    [ -n "$SLUICE_PID" ] && kill "$SLUICE_PID" 2>/dev/null
    [ -n "$PGB_PID" ] && kill "$PGB_PID" 2>/dev/null
    sleep 0.5
    [ -n "$SLUICE_PID" ] && kill -9 "$SLUICE_PID" 2>/dev/null
    [ -n "$PGB_PID" ] && kill -9 "$PGB_PID" 2>/dev/null
    if [ -n "$PG_STARTED" ]; then
        as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" stop -m immediate -w -t 30 >/dev/null 2>&1
    fi
    # pgbench / idle-client children still running (only on Ctrl-C)
    local jobs_left
    jobs_left=$(jobs -p)
    [ -n "$jobs_left" ] && kill $jobs_left 2>/dev/null
    if [ -n "${KEEP_WORK:-}" ]; then echo "work dir kept: $WORK"; else rm -rf "$WORK"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# A free port *below* the ephemeral range: a port from that range can be taken
# as the source port of some outgoing connection (e.g. a proxy's server
# connections) between picking it and binding it.
free_port() {
    "$PY" - <<'PORTEOF'
import random, socket
lo, hi = (int(x) for x in open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
cands = [p for p in range(20000, 32000) if not lo <= p <= hi] or list(range(10000, 20000))
random.shuffle(cands)
for p in cands:
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
    except OSError:
        continue
    finally:
        s.close()
    print(p)
    break
PORTEOF
}
wait_port() { # port seconds
    local i
    for ((i = 0; i < $2 * 10; i++)); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}
PG_PORT=$(free_port); PGB_PORT=$(free_port); SL_PORT=$(free_port)
while [ "$PGB_PORT" = "$PG_PORT" ]; do PGB_PORT=$(free_port); done
while [ "$SL_PORT" = "$PG_PORT" ] || [ "$SL_PORT" = "$PGB_PORT" ]; do SL_PORT=$(free_port); done
ADMIN_PORT=$(free_port)
while [ "$ADMIN_PORT" = "$PG_PORT" ] || [ "$ADMIN_PORT" = "$PGB_PORT" ] || [ "$ADMIN_PORT" = "$SL_PORT" ]; do ADMIN_PORT=$(free_port); done

mkdir -p "$OUT"
rm -rf "$OUT/raw"
rm -f "$OUT"/results.jsonl "$OUT"/idle.jsonl "$OUT"/results.md "$OUT"/results.csv "$OUT"/tps_*.png \
    "$OUT"/meta.json "$OUT"/console.log "$OUT"/*.log "$OUT"/postgres-errors.txt
mkdir -p "$OUT/raw"
RESULTS="$OUT/results.jsonl"
IDLE_RESULTS="$OUT/idle.jsonl"
: >"$RESULTS"; : >"$IDLE_RESULTS"
exec > >(tee "$OUT/console.log") 2>&1

log "mode=$MODE duration=${DURATION}s clients=[$CLIENTS] scripts=[$SCRIPTS] modes=[$MODES] tpcb modes=[$TPCB_MODES] idle=$IDLE_CONNS"
log "work dir $WORK, output $OUT; ports: postgres $PG_PORT, pgbouncer $PGB_PORT, sluice $SL_PORT (admin $ADMIN_PORT)"

# ---------------------------------------------------------------- PostgreSQL
log "initdb + start PostgreSQL 15"
chown postgres: "$WORK"
as_pg "$PG_BIN/initdb" -D "$PGDATA" -U postgres -E UTF8 --locale=C \
    --auth-local=trust --auth-host=scram-sha-256 --no-sync >"$WORK/initdb.log" 2>&1 \
    || { cat "$WORK/initdb.log"; die "initdb failed"; }
cat >>"$PGDATA/postgresql.conf" <<EOF
# --- sluice benchmark settings (throwaway instance) ---
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$WORK'
max_connections = 2200
shared_buffers = 256MB
fsync = off
synchronous_commit = off
full_page_writes = off
max_wal_size = 8GB
checkpoint_timeout = 30min
autovacuum = off
password_encryption = 'scram-sha-256'
log_min_messages = warning
EOF
as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" -l "$WORK/postgres.log" -w -t 60 start >/dev/null \
    || { tail -20 "$WORK/postgres.log"; die "PostgreSQL did not start"; }
PG_STARTED=1
PSQL_ADMIN=(psql -X -q -v ON_ERROR_STOP=1 -h "$WORK" -p "$PG_PORT" -U postgres)
"${PSQL_ADMIN[@]}" -d postgres -c "CREATE ROLE bench LOGIN PASSWORD 'benchpw'" \
    -c "CREATE DATABASE bench OWNER bench"
log "pgbench -i -s $SCALE"
pgbench -i -s "$SCALE" -q -h 127.0.0.1 -p "$PG_PORT" -U bench bench >"$WORK/pgbench-init.log" 2>&1 \
    || { cat "$WORK/pgbench-init.log"; die "pgbench -i failed"; }
"${PSQL_ADMIN[@]}" -d bench -c "VACUUM ANALYZE" -c "CHECKPOINT"
SCRAM_SECRET=$("${PSQL_ADMIN[@]}" -d postgres -Atc "SELECT rolpassword FROM pg_authid WHERE rolname = 'bench'")
case "$SCRAM_SECRET" in SCRAM-SHA-256\$*) ;; *) die "bench role has no SCRAM verifier" ;; esac

# ---------------------------------------------------------------- PgBouncer
log "start PgBouncer"
printf '"bench" "%s"\n' "$SCRAM_SECRET" >"$WORK/userlist.txt"
cat >"$WORK/pgbouncer.ini" <<EOF
[databases]
bench = host=127.0.0.1 port=$PG_PORT dbname=bench

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PGB_PORT
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $WORK/userlist.txt
pool_mode = transaction
default_pool_size = $POOL
min_pool_size = $POOL
reserve_pool_size = 0
max_client_conn = 20000
max_db_connections = 0
listen_backlog = 4096
logfile = $WORK/pgbouncer.log
pidfile = $WORK/pgbouncer.pid
log_connections = 0
log_disconnections = 0
ignore_startup_parameters = extra_float_digits
EOF
chown postgres: "$WORK/userlist.txt" "$WORK/pgbouncer.ini"
chmod 600 "$WORK/userlist.txt"
start_pgbouncer() {
    # setpriv execs pgbouncer, so $! is pgbouncer's pid (needed for /proc CPU/RSS).
    setpriv --reuid=postgres --regid=postgres --init-groups pgbouncer "$WORK/pgbouncer.ini" \
        >>"$WORK/pgbouncer.stdout" 2>&1 &
    PGB_PID=$!
    wait_port "$PGB_PORT" 20 || { cat "$WORK/pgbouncer.log" "$WORK/pgbouncer.stdout" 2>/dev/null; die "PgBouncer did not start"; }
}
start_pgbouncer

# ---------------------------------------------------------------- Sluice
log "start Sluice ($SLUICE_BIN)"
write_sluice_config() { # with_admin(0|1)
    cat >"$WORK/sluice.toml" <<EOF
[general]
shutdown_timeout = "5s"

[postgres]
listen = "127.0.0.1:$SL_PORT"
pool_mode = "transaction"
max_client_conn = 20000
pool_size = $POOL
min_pool_size = $POOL
pool_timeout = "60s"
auth_type = "scram-sha-256"

[[postgres.databases]]
name = "bench"
upstream = "postgres://bench:benchpw@127.0.0.1:$PG_PORT/bench"
EOF
    if [ "$1" = 1 ]; then
        # Admin/metrics listener on a free port (the default 127.0.0.1:9930 may be taken).
        printf '\n[admin]\nlisten = "127.0.0.1:%s"\n' "$ADMIN_PORT" >>"$WORK/sluice.toml"
    fi
}
start_sluice() {
    RUST_LOG=${RUST_LOG:-warn} "$SLUICE_BIN" run --config "$WORK/sluice.toml" >>"$WORK/sluice.log" 2>&1 &
    SLUICE_PID=$!
    local i
    for ((i = 0; i < 300; i++)); do
        (exec 3<>"/dev/tcp/127.0.0.1/$SL_PORT") 2>/dev/null && return 0
        alive "$SLUICE_PID" || break
        sleep 0.1
    done
    return 1
}
alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }
write_sluice_config 1
if ! start_sluice; then
    # An older Sluice without the [admin] section rejects the unknown key: retry without it.
    if grep -qi "admin" "$WORK/sluice.log" && ! alive "$SLUICE_PID"; then
        log "Sluice rejected the [admin] section; retrying without it (metrics will be n/a)"
        write_sluice_config 0
        start_sluice || { cat "$WORK/sluice.log"; die "Sluice did not start"; }
    else
        cat "$WORK/sluice.log"; die "Sluice did not start"
    fi
fi
METRICS_URL=${SLUICE_METRICS_URL:-http://127.0.0.1:$ADMIN_PORT/metrics}
stop_proxy() { # pid
    local i
    kill "$1" 2>/dev/null || return 0
    for ((i = 0; i < 100; i++)); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

port_of() { case "$1" in direct) echo "$PG_PORT" ;; pgbouncer) echo "$PGB_PORT" ;; sluice) echo "$SL_PORT" ;; esac; }
pid_of() { case "$1" in pgbouncer) echo "$PGB_PID" ;; sluice) echo "$SLUICE_PID" ;; *) echo "" ;; esac; }

for t in direct pgbouncer sluice; do
    psql -X -q -h 127.0.0.1 -p "$(port_of $t)" -U bench -d bench -Atc "SELECT 1" >/dev/null 2>"$WORK/check-$t.err" \
        || { cat "$WORK/check-$t.err"; die "cannot run SELECT 1 through $t"; }
done
log "all three targets answer SELECT 1 (SCRAM as bench)"

# ---------------------------------------------------------------- helpers
cpu_ticks() { # pid -> utime+stime (clock ticks), whole process (all threads)
    local stat rest f
    stat=$(<"/proc/$1/stat") || { echo -1; return; }
    rest=${stat##*) }
    read -ra f <<<"$rest"
    echo $(( f[11] + f[12] ))
}
hwm_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

METRICS_SEEN=0
metrics_snapshot() { # file
    "$PY" "$REPORT" metrics "$METRICS_URL" >"$1" 2>/dev/null || echo n/a >"$1"
    if ! grep -q '^n/a' "$1"; then METRICS_SEEN=1; fi
}

prepare_tpcb() { # reset TPC-B state so every target starts from the same table sizes
    "${PSQL_ADMIN[@]}" -d bench -c "TRUNCATE pgbench_history" -c "VACUUM pgbench_branches" \
        -c "VACUUM pgbench_tellers" -c "VACUUM pgbench_accounts" >/dev/null 2>&1 || true
}

# Samples the proxy's CPU counter once all clients are connected, so that the
# CPU/txn figure is steady state (the 2000-client SCRAM login storm is excluded).
# writes "ticks epoch" to FILE.   steady_sample PORT CLIENTS PID FILE PGBENCH_PID
steady_sample() {
    local i n
    for ((i = 0; i < 6000; i++)); do
        n=$(ss -Htn state established "( sport = :$1 )" 2>/dev/null | wc -l)
        if [ "$n" -ge "$2" ]; then
            echo "$( [ -n "$3" ] && cpu_ticks "$3" || echo -1) $(date +%s.%N)" >"$4"
            return 0
        fi
        kill -0 "$5" 2>/dev/null || return 0
        sleep 0.05
    done
}

# pgbench -T counts from before the connections are made, and logging in 2000
# SCRAM clients takes seconds, so large runs get extra time: measured connect
# time of the previous run at that size (x1.2 + 2 s), else a per-client guess.
declare -A CONNECT_S=()
slack_for() { # target clients
    local key="$1-$2"
    if [ -n "${CONNECT_S[$key]:-}" ]; then
        "$PY" -c "import math,sys; print(math.ceil(float(sys.argv[1]) * 1.2 + 2))" "${CONNECT_S[$key]}"
    elif [ "$2" -ge 100 ]; then
        echo $(( 2 + $2 * 8 / 1000 ))
    else
        echo 0
    fi
}

# run_one TARGET SCRIPT MODE CLIENTS
run_one() {
    local target=$1 script=$2 mode=$3 clients=$4
    local tag="${script}-${mode}-c${clients}-${target}"
    local port pid j rate before after hwm rc=0 slack
    if [ "$target" = pgbouncer ] && [ "$mode" = prepared ]; then
        "$PY" "$REPORT" record --results "$RESULTS" --target "$target" --script "$script" --mode "$mode" \
            --clients "$clients" --status skipped --note "PgBouncer 1.18 cannot pool -M prepared in transaction mode"
        return
    fi
    pid=$(pid_of "$target")
    if [ -n "$pid" ] && ! alive "$pid"; then
        "$PY" "$REPORT" record --results "$RESULTS" --target "$target" --script "$script" --mode "$mode" \
            --clients "$clients" --rc 99 --status failed --note "$target process is not running"
        echo "    $target: process died earlier, run skipped"
        return
    fi
    port=$(port_of "$target")
    j=$(( clients < 2 ? 1 : 2 ))
    # pgbench 15 prepares each statement with a blocking PQprepare the first time a client
    # runs it. With several clients per thread, a thread blocked on one client's prepare
    # (waiting for a pooled server) stalls the clients of that thread that hold servers
    # inside a transaction: any transaction pooler deadlocks against pgbench then. Multi-
    # statement scripts with -M prepared therefore get one thread per client, and are only
    # run up to 50 clients.
    if [ "$mode" = prepared ] && [ "$script" != select ]; then
        if [ "$clients" -gt 50 ]; then
            "$PY" "$REPORT" record --results "$RESULTS" --target "$target" --script "$script" --mode "$mode" \
                --clients "$clients" --status skipped --note "pgbench -M prepared needs -j = -c with a transaction pooler; not run above 50 clients"
            return
        fi
        j=$clients
    fi
    rate=$([ "$clients" -le 1 ] && echo 1.0 || echo 0.1)
    slack=$(slack_for "$target" "$clients")
    local args=(-h 127.0.0.1 -p "$port" -U bench -n -c "$clients" -j "$j" -T $(( DURATION + slack )) -M "$mode"
                --log --log-prefix="$WORK/txlog-$tag" --sampling-rate="$rate")
    [ "$script" = select ] && args+=(-S)
    # New logins: every transaction opens its own connection (SCRAM login included).
    [ "$script" = connect ] && args+=(-S -C)
    [ "$script" = tpcb ] && prepare_tpcb
    local mb="" ma=""
    if [ "$target" = sluice ]; then mb="$WORK/metrics-before-$tag"; metrics_snapshot "$mb"; fi
    if [ -n "$pid" ]; then
        echo 5 >"/proc/$pid/clear_refs" 2>/dev/null || true   # reset VmHWM to current RSS
        before=$(cpu_ticks "$pid")
    fi
    rm -f "$WORK/steady-$tag"
    timeout --kill-after=10 $(( DURATION + slack + 300 )) pgbench "${args[@]}" bench >"$OUT/raw/$tag.txt" 2>&1 &
    local bench_pid=$!
    local sampler_pid=""
    # The login runs count CPU from the start: the logins are what they measure.
    if [ "$script" != connect ]; then
        steady_sample "$port" "$clients" "$pid" "$WORK/steady-$tag" "$bench_pid" &
        sampler_pid=$!
    fi
    wait "$bench_pid" || rc=$?
    if [ -n "$sampler_pid" ]; then
        kill "$sampler_pid" 2>/dev/null || true
        wait "$sampler_pid" 2>/dev/null || true
    fi
    local cpu=-1 steady_ticks
    hwm=0
    if [ -n "$pid" ]; then
        if alive "$pid"; then
            after=$(cpu_ticks "$pid"); hwm=$(hwm_kib "$pid")
            steady_ticks=$(awk '{print $1}' "$WORK/steady-$tag" 2>/dev/null || true)
            if [ -n "$steady_ticks" ] && [ "$steady_ticks" -ge 0 ]; then before=$steady_ticks; fi
            cpu=$(( after - before ))
        else
            echo "$target process died during the run" >>"$OUT/raw/$tag.txt"
        fi
    fi
    if [ "$target" = sluice ]; then ma="$WORK/metrics-after-$tag"; metrics_snapshot "$ma"; fi
    local ct
    ct=$(sed -n 's/^initial connection time = \([0-9.]*\) ms.*/\1/p' "$OUT/raw/$tag.txt")
    if [ -n "$ct" ]; then
        CONNECT_S["$target-$clients"]=$("$PY" -c "import sys; print(float(sys.argv[1]) / 1000)" "$ct")
    fi
    "$PY" "$REPORT" record --results "$RESULTS" --target "$target" --script "$script" --mode "$mode" \
        --clients "$clients" --duration "$(( DURATION + slack ))" --rc "$rc" --raw "$OUT/raw/$tag.txt" \
        --logs "$WORK/txlog-$tag*" --cpu-ticks "$cpu" --clk-tck "$CLK_TCK" --hwm-kib "$hwm" \
        ${mb:+--metrics-before "$mb"} ${ma:+--metrics-after "$ma"}
    rm -f "$WORK"/txlog-"$tag"*
}

# ---------------------------------------------------------------- warm-up
log "warm-up (fills both proxies' pools, warms caches)"
for t in direct pgbouncer sluice; do
    pgbench -h 127.0.0.1 -p "$(port_of $t)" -U bench -n -S -c 40 -j 2 -T 2 bench >"$WORK/warmup-$t.log" 2>&1 \
        || { tail -5 "$WORK/warmup-$t.log"; log "WARNING: warm-up against $t failed"; }
done

# ---------------------------------------------------------------- benchmark matrix
TOTAL=0
modes_for() { if [ "$1" = tpcb ]; then echo "$TPCB_MODES"; else echo "$MODES"; fi; }
for s in $SCRIPTS; do for m in $(modes_for "$s"); do for c in $CLIENTS; do TOTAL=$((TOTAL + 1)); done; done; done
N=0
for script in $SCRIPTS; do
    for mode in $(modes_for "$script"); do
        for clients in $CLIENTS; do
            N=$((N + 1))
            log "[$N/$TOTAL] pgbench $([ "$script" = select ] && echo -S || echo tpcb-like) -M $mode -c $clients"
            # Interleaved: direct, PgBouncer, Sluice back to back for each configuration.
            for target in direct pgbouncer sluice; do
                run_one "$target" "$script" "$mode" "$clients"
            done
        done
    done
done

# ---------------------------------------------------------------- idle clients
if [ "$LOGIN_CLIENTS" -gt 0 ]; then
    log "new logins: pgbench -S -C -c $LOGIN_CLIENTS (a SCRAM login per transaction)"
    for target in direct pgbouncer sluice; do
        run_one "$target" connect simple "$LOGIN_CLIENTS"
    done
fi

if [ "$IDLE_CONNS" -gt 0 ]; then
    # Fresh proxy processes, so allocator caches left over from the 2000-client
    # runs do not hide the per-connection cost.
    log "restarting both proxies for the idle-client test"
    stop_proxy "$PGB_PID"; start_pgbouncer
    stop_proxy "$SLUICE_PID"; start_sluice || { cat "$WORK/sluice.log"; die "Sluice did not restart"; }
    for target in pgbouncer sluice; do
        pid=$(pid_of "$target")
        if ! alive "$pid"; then log "idle test: $target is not running, skipped"; continue; fi
        log "idle clients: $IDLE_CONNS authenticated connections to $target"
        timeout 600 "$PY" "$IDLE" --port "$(port_of "$target")" --pid "$pid" --n "$IDLE_CONNS" \
            --label "$target" >"$WORK/idle-$target.json" 2>"$WORK/idle-$target.err" \
            && cat "$WORK/idle-$target.json" >>"$IDLE_RESULTS" \
            || { tail -5 "$WORK/idle-$target.err"; log "WARNING: idle test against $target failed"; }
        if [ -s "$WORK/idle-$target.json" ]; then
            "$PY" -c 'import json,sys; d=json.load(open(sys.argv[1])); print("    %(target)s: %(n_ok)s held (%(n_failed)s failed) in %(connect_seconds)ss, auth request: %(auth_request)s, wrong password rejected: %(wrong_password_rejected)s, %(bytes_per_conn)s bytes/conn" % d)' "$WORK/idle-$target.json" || true
        fi
        sleep 2
    done
fi

# ---------------------------------------------------------------- report
alive "$SLUICE_PID" || log "WARNING: Sluice is no longer running (see sluice.log)"
alive "$PGB_PID" || log "WARNING: PgBouncer is no longer running"
cp "$WORK/sluice.log" "$OUT/sluice.log" 2>/dev/null || true
cp "$WORK/pgbouncer.log" "$OUT/pgbouncer.log" 2>/dev/null || true
grep -E 'ERROR|FATAL|PANIC' "$WORK/postgres.log" | sed -E 's/^.*(ERROR|FATAL|PANIC): +/\1: /' \
    | sort | uniq -c | sort -rn | head -20 >"$OUT/postgres-errors.txt" || true

if [ "$METRICS_SEEN" = 1 ]; then METRICS_NOTE="see the 'S wait' column"; else METRICS_NOTE="n/a ($METRICS_URL not reachable)"; fi
"$PY" - "$OUT/meta.json" <<EOF
import json, sys, platform, os
json.dump({
    "mode": "$MODE", "date": "$(date -u +%Y-%m-%dT%H:%MZ)", "host": platform.node(), "cpus": os.cpu_count(),
    "duration": $DURATION, "clients": "$CLIENTS",
    "pg_version": "$("$PG_BIN/postgres" --version | awk '{print $3}')",
    "pgbouncer_version": "$(pgbouncer --version | awk 'NR==1 {print $2}')",
    "sluice_version": "$("$SLUICE_BIN" --version 2>/dev/null | awk '{print $2}')",
    "sluice_git": "tree $SLUICE_GIT at start, binary $SLUICE_BIN built $SLUICE_BIN_TIME",
    "metrics": "$METRICS_NOTE",
    "loadavg_start": "$LOAD_START", "loadavg_end": "$(cut -d' ' -f1-3 /proc/loadavg)",
    "wall_seconds": $(( $(date +%s) - START_TS )),
}, open(sys.argv[1], "w"), indent=1)
EOF
log "writing report"
echo
"$PY" "$REPORT" report --results "$RESULTS" --idle "$IDLE_RESULTS" --meta "$OUT/meta.json" --out "$OUT"
echo
log "done: $OUT/results.md, results.csv, tps_select_simple.png (raw pgbench output in $OUT/raw/)"
