#!/usr/bin/env bash
# Resident memory of Sluice after one client prepared many distinct statements.
#
#   sudo tests/bench/registry_rss.sh BIN [BIN...]     # e.g. main's binary and a branch's
#
# Starts a throwaway PostgreSQL 15, then for each Sluice binary in turn (same PostgreSQL,
# same run): Sluice in transaction mode with pool_size 1, one psycopg 3 client with
# prepare_threshold=0 running N (default 100000, env N) distinct statements
# (`SELECT %s::int4 + i`; psycopg keeps its default cache of 100 and closes older ones),
# and prints VmRSS of the sluice process (from /proc/PID/status) before, right after
# the N statements with the client still connected, and 2 s after the client left,
# plus `sluice_prepared_statements` from /metrics when the binary has it.
# Needs root (PostgreSQL runs as `postgres` via setpriv), python3 with psycopg 3.
set -euo pipefail

N=${N:-100000}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
[ "$#" -ge 1 ] || { echo "usage: $0 SLUICE_BIN [SLUICE_BIN...]" >&2; exit 64; }
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }

WORK=$(mktemp -d /tmp/sluice-registry-rss.XXXXXX)
PGDATA=$WORK/pgdata
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PG_PORT=$(free_port)
as_pg() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }
SLUICE_PID=
cleanup() {
    [ -n "$SLUICE_PID" ] && kill "$SLUICE_PID" 2>/dev/null && wait "$SLUICE_PID" 2>/dev/null
    as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" stop -m immediate -w >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

chown postgres: "$WORK"
as_pg "$PG_BIN/initdb" -D "$PGDATA" -U postgres -E UTF8 --locale=C --auth-local=trust \
    --auth-host=scram-sha-256 --no-sync >"$WORK/initdb.log" 2>&1
cat >>"$PGDATA/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$WORK'
fsync = off
EOF
as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" -l "$WORK/postgres.log" -w start >/dev/null
psql -X -q -h "$WORK" -p "$PG_PORT" -U postgres -d postgres \
    -c "CREATE ROLE bench LOGIN PASSWORD 'benchpw'" -c "CREATE DATABASE bench OWNER bench"

cat >"$WORK/client.py" <<'PY'
import sys, psycopg
port, n = int(sys.argv[1]), int(sys.argv[2])
with psycopg.connect(host="127.0.0.1", port=port, dbname="bench", user="bench",
                     password="benchpw", prepare_threshold=0, autocommit=True) as c:
    for i in range(n):
        assert c.execute(f"SELECT %s::int4 + {i}", (1,)).fetchone()[0] == 1 + i
    print("done", flush=True)
    sys.stdin.readline()
PY

rss() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
metric() {
    curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" \
        | awk '/^sluice_prepared_statements\{/ {v=$NF} END {print (v == "" ? "n/a" : v)}'
}

for BIN in "$@"; do
    SL_PORT=$(free_port)
    ADMIN_PORT=$(free_port)
    cat >"$WORK/sluice.toml" <<EOF
[admin]
listen = "127.0.0.1:$ADMIN_PORT"

[postgres]
listen = "127.0.0.1:$SL_PORT"
pool_mode = "transaction"
pool_size = 1
min_pool_size = 1

[[postgres.databases]]
name = "bench"
upstream = "postgres://bench:benchpw@127.0.0.1:$PG_PORT/bench"
EOF
    RUST_LOG=warn "$BIN" run --config "$WORK/sluice.toml" >"$WORK/sluice.log" 2>&1 &
    SLUICE_PID=$!
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$SL_PORT") 2>/dev/null && break
        sleep 0.1
    done
    before=$(rss "$SLUICE_PID")
    # The client prints when its N statements are done, then waits for a line on stdin,
    # so RSS is read while it is still connected.
    coproc CLIENT { python3 -u "$WORK/client.py" "$SL_PORT" "$N"; }
    read -r _ <&"${CLIENT[0]}"
    during=$(rss "$SLUICE_PID")
    m_during=$(metric)
    echo >&"${CLIENT[1]}"
    wait "$CLIENT_PID"
    sleep 2
    after=$(rss "$SLUICE_PID")
    m_after=$(metric)
    printf '%s: N=%d VmRSS before %d KiB, after %d statements (connected) %d KiB, after the client left %d KiB; sluice_prepared_statements %s -> %s\n' \
        "$BIN" "$N" "$before" "$N" "$during" "$after" "$m_during" "$m_after"
    kill "$SLUICE_PID"
    wait "$SLUICE_PID" 2>/dev/null || true
    SLUICE_PID=
done
