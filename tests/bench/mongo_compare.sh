#!/usr/bin/env bash
# MongoDB throughput, direct vs through Sluice, in one run: interleaved rounds (D S D S ...)
# of CLIENTS concurrent clients, each its own driver client with one connection, doing
# find-by-_id + insert against the Rust SecantusDB build (../shared/MONGO-TESTING.md), and
# the medians of each target's round trips per second with the ratio Sluice/direct. Also
# reported: the server's own open connection count halfway through each round
# (serverStatus.connections.current over a separate probe connection; through Sluice it
# must stay near max_pool_size), Sluice's sluice_pool_open_connections after the round,
# and the CPU of the server, of Sluice and of the load generator per round trip (to see
# which one saturates the 2 cores).
#
#   tests/bench/mongo_compare.sh [ROUNDS] [SECONDS] [CLIENTS]      # default 3 10 100
#
# Environment (all optional):
#   SLUICE_BIN=path      default $CARGO_TARGET_DIR/release/sluice (built if missing)
#   LOAD_BIN=path        default $CARGO_TARGET_DIR/release/mongo-load (built if missing)
#   SECANTUS_BIN=path    default /opt/secantus-rs/bin/secantusd-rs
#   MAX_POOL=N           Sluice's max_pool_size (default 20; min_pool_size is the same)
#   WARMUP=s             seconds of load before each measured window (default 2)
#   OUT=dir              where the raw lines go (default a temp dir, printed)
# Only 127.0.0.1 is used; everything started is stopped on exit.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
R=${1:-3} T=${2:-10} C=${3:-100}
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
SLUICE_BIN=${SLUICE_BIN:-$TARGET_DIR/release/sluice}
LOAD_BIN=${LOAD_BIN:-$TARGET_DIR/release/mongo-load}
SECANTUS_BIN=${SECANTUS_BIN:-/opt/secantus-rs/bin/secantusd-rs}
MAX_POOL=${MAX_POOL:-20} WARMUP=${WARMUP:-2}
[ -x "$SECANTUS_BIN" ] || { echo "no $SECANTUS_BIN: install the Rust SecantusDB build (see shared/MONGO-TESTING.md)" >&2; exit 1; }
for b in "$SLUICE_BIN:sluice" "$LOAD_BIN:sluice-mongo-load"; do
  [ -x "${b%%:*}" ] || (cd "$REPO" && cargo build --release -p "${b#*:}")
done
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
W=$(mktemp -d /tmp/mongo-bench.XXXX); OUT=${OUT:-$W}; mkdir -p "$OUT"
SEC_PID="" SL_PID=""
cleanup() { set +e; [ -n "$SL_PID" ] && kill "$SL_PID"; [ -n "$SEC_PID" ] && kill "$SEC_PID"; wait 2>/dev/null; [ "$OUT" = "$W" ] || rm -rf "$W"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "nothing listens on $1" >&2; return 1; }
ticks() { local s; s=$(<"/proc/$1/stat"); s=${s##*) }; read -ra f <<<"$s"; echo $((f[11]+f[12])); }
SP=$(free_port) LP=$(free_port) AP=$(free_port) PP=$(free_port)
mkdir -p "$W/data"
"$SECANTUS_BIN" --host 127.0.0.1 --port "$SP" --storage-path "$W/data" --cache-size 256M >"$OUT/secantus.log" 2>&1 & SEC_PID=$!
wait_port "$SP"
cat >"$W/sluice.toml" <<C
[admin]
listen = "127.0.0.1:$AP"
[postgres]
listen = "127.0.0.1:$PP"
[mongo]
listen = "127.0.0.1:$LP"
upstream = "mongodb://127.0.0.1:$SP/"
max_pool_size = $MAX_POOL
min_pool_size = $MAX_POOL
C
RUST_LOG=warn "$SLUICE_BIN" run --config "$W/sluice.toml" >"$OUT/sluice.log" 2>&1 & SL_PID=$!
wait_port "$LP"
DIRECT="mongodb://127.0.0.1:$SP/?directConnection=true"
VIA="mongodb://127.0.0.1:$LP/?directConnection=true"
"$LOAD_BIN" --seed --uri "$DIRECT"
echo "machine: $(nproc) cores, $(uname -r); load before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "sluice $(cd "$REPO" && git rev-parse --short HEAD) ($SLUICE_BIN), max_pool_size $MAX_POOL; $R rounds x ${T}s, $C clients"
metric() { curl -s "http://127.0.0.1:$AP/metrics" | sed -n "s/^$1{[^}]*pool=\"mongo\"[^}]*} \(.*\)$/\1/p" | head -1; }
for t in direct sluice; do # warm-up, not counted
  uri=$DIRECT; [ $t = sluice ] && uri=$VIA
  "$LOAD_BIN" --uri "$uri" --clients "$C" --seconds 2 --warmup 1 >/dev/null
done
for ((r = 1; r <= R; r++)); do
  for t in direct sluice; do
    uri=$DIRECT; [ $t = sluice ] && uri=$VIA
    s0=$(ticks $SEC_PID) l0=$(ticks $SL_PID)
    TIMEFORMAT='%U %S'
    { time "$LOAD_BIN" --uri "$uri" --status-uri "$DIRECT" --clients "$C" --seconds "$T" --warmup "$WARMUP" >"$W/line" ; } 2>"$W/time"
    s1=$(ticks $SEC_PID) l1=$(ticks $SL_PID)
    pool=-; [ $t = sluice ] && pool=$(metric sluice_pool_open_connections)
    python3 - "$r" "$t" "$W/line" "$W/time" "$((s1 - s0))" "$((l1 - l0))" "$pool" "$(getconf CLK_TCK)" "$T" "$WARMUP" <<'P' | tee -a "$OUT/rounds.txt"
import json, sys
r, t, line, tm, sec, sl, pool, hz, secs, warm = sys.argv[1:]
d = json.load(open(line)); u, s = map(float, open(tm).read().split()[-2:])
# CPU per round trip over the whole run (warm-up included): ticks / (ops/s x wall seconds).
trips = d["ops_per_s"] * (int(secs) + int(warm))
us = lambda ticks: round(float(ticks) / int(hz) * 1e6 / trips, 1) if trips else 0
print(f"round {r} {t} ops_per_s {d['ops_per_s']:.0f} p50_ms {d['p50_ms']:.2f} p99_ms {d['p99_ms']:.2f}"
      f" errors {d['errors']} server_conns {d['server_connections']} sluice_pool_open {pool}"
      f" cpu_us_per_op server {us(sec)} sluice {us(sl) if t == 'sluice' else '-'} load {round((u + s) * 1e6 / trips, 1) if trips else 0}")
P
  done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$OUT/rounds.txt" <<'P'
import collections, statistics as st, sys
ops, conns = collections.defaultdict(list), collections.defaultdict(list)
for l in open(sys.argv[1]):
    p = l.split(); ops[p[2]].append(float(p[4])); conns[p[2]].append(p[12])
d, s = st.median(ops["direct"]), st.median(ops["sluice"])
print(f"median ops/s: direct {d:.0f}, sluice {s:.0f}; sluice/direct {s / d:.2f}")
print(f"server connections halfway (incl. the probe's own): direct {conns['direct']}, sluice {conns['sluice']}")
P
