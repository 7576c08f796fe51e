#!/usr/bin/env bash
# Instructions Sluice executes per transaction, counted by callgrind (repeatable, unlike
# timings on a shared machine). Runs the proxy under callgrind twice, with N1 and N2
# pgbench -S transactions, and prints (Ir(N2) - Ir(N1)) / (N2 - N1): login and start-up
# cost cancel out.
#
#   tests/bench/callgrind_per_txn.sh BIN CONFIG PORT [USER PASSWORD DB]
#
# CONFIG must make BIN listen on 127.0.0.1:PORT in front of an initialised pgbench
# database (pgbench -i); PGPASSWORD-style credentials default to app/secret/app.
set -euo pipefail
BIN=$1 CONFIG=$2 PORT=$3 USER_=${4:-app} PASS=${5:-secret} DB=${6:-app}
CLIENTS=4 N1=1000 N2=3000

count() {
    local out; out=$(mktemp)
    RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$out" "$BIN" --config "$CONFIG" \
        >/dev/null 2>&1 &
    local vg=$!
    for _ in $(seq 100); do pg_isready -q -h 127.0.0.1 -p "$PORT" && break; sleep 0.2; done
    PGPASSWORD=$PASS pgbench -h 127.0.0.1 -p "$PORT" -U "$USER_" -n -S -c $CLIENTS -j $CLIENTS -t "$1" "$DB" >/dev/null
    kill -INT "$vg"; wait "$vg" || true
    callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}'
    rm -f "$out"
}
a=$(count $N1)
b=$(count $N2)
echo "instructions per transaction: $(( (b - a) / ((N2 - N1) * CLIENTS) ))"
