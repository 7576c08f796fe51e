#!/usr/bin/env bash
# Interleaved rounds: direct PostgreSQL, PgBouncer and one or more Sluice builds or settings,
# ROUNDS rounds of `pgbench -T SECONDS -c CLIENTS` each (D P S1 S2 ... D P S1 S2 ...), and the
# median TPS and proxy CPU per transaction of each, with ratios to PgBouncer. For A/B tests
# of a change on a noisy machine (compare.sh is the full matrix, one run per cell).
#
#   sudo tests/bench/rounds.sh ROUNDS SECONDS CLIENTS "name=BIN:worker_threads ..." [pgbench args]
#   sudo tests/bench/rounds.sh 5 8 50 "main=/tmp/sluice-main:0 new=target/release/sluice:0" -S
#
# Optional: IDLE=N also measures N idle clients per proxy; PERF="names" / STRACE="names" record
# `perf` / `strace -c` of that variant in round 1 (to $OUTDIR, default /tmp).
# Uses fixed ports 25432-25433 and 25440+.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
R=$1 T=$2 C=$3 VARIANTS=$4; shift 4; EXTRA=("$@")
PG_BIN=/usr/lib/postgresql/15/bin
as_pg() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }
ulimit -n 20000
W=$(mktemp -d /tmp/ab.XXXX); chmod 755 $W; chown postgres: $W
PGP=25432 PGBP=25433
cleanup() { set +e; pkill -f "$W/sl-"; pkill -f "$W/pgb.ini"; as_pg $PG_BIN/pg_ctl -D $W/pg stop -m immediate >/dev/null 2>&1; rm -rf $W; }
trap cleanup EXIT
as_pg $PG_BIN/initdb -D $W/pg -U postgres --auth-local=trust --auth-host=scram-sha-256 --no-sync >/dev/null
cat >>$W/pg/postgresql.conf <<C
listen_addresses='127.0.0.1'
port=$PGP
unix_socket_directories='$W'
max_connections=600
shared_buffers=256MB
fsync=off
synchronous_commit=off
autovacuum=off
C
as_pg $PG_BIN/pg_ctl -D $W/pg -l $W/pg.log -w start >/dev/null
psql -X -q -h $W -p $PGP -U postgres -c "CREATE ROLE bench LOGIN PASSWORD 'benchpw'" -c "CREATE DATABASE bench OWNER bench"
export PGPASSWORD=benchpw
pgbench -i -s 10 -q -h 127.0.0.1 -p $PGP -U bench bench >/dev/null 2>&1
SECRET=$(psql -X -h $W -p $PGP -U postgres -Atc "select rolpassword from pg_authid where rolname='bench'")
printf '"bench" "%s"\n' "$SECRET" > $W/users.txt
cat > $W/pgb.ini <<C
[databases]
bench = host=127.0.0.1 port=$PGP dbname=bench
[pgbouncer]
listen_addr=127.0.0.1
listen_port=$PGBP
unix_socket_dir=
auth_type=scram-sha-256
auth_file=$W/users.txt
pool_mode=transaction
default_pool_size=20
min_pool_size=20
max_client_conn=20000
logfile=$W/pgb.log
C
chown postgres: $W/*.ini $W/users.txt
setpriv --reuid=postgres --regid=postgres --init-groups pgbouncer $W/pgb.ini >/dev/null 2>&1 & PGB=$!
declare -A PORT PID
PORT[direct]=$PGP; PORT[pgbouncer]=$PGBP; PID[pgbouncer]=$PGB
names="direct pgbouncer"
p=25440
for v in $VARIANTS; do
  name=${v%%=*}; rest=${v#*=}; bin=${rest%%:*}; wt=${rest#*:}
  cat > $W/sl-$name.toml <<C
[general]
worker_threads = $wt
[admin]
enabled = false
[postgres]
listen = "127.0.0.1:$p"
pool_mode = "transaction"
max_client_conn = 20000
pool_size = 20
min_pool_size = 20
auth_type = "scram-sha-256"
[[postgres.databases]]
name = "bench"
upstream = "postgres://bench:benchpw@127.0.0.1:$PGP/bench"
C
  wrap_var="WRAP_$name"; RUST_LOG=warn ${!wrap_var:-} $bin run --config $W/sl-$name.toml > $W/sl-$name.log 2>&1 & PID[$name]=$!
  PORT[$name]=$p; names="$names $name"; p=$((p+1))
done
sleep ${START_WAIT:-2}
ticks() { local s; s=$(<"/proc/$1/stat"); s=${s##*) }; read -ra f <<<"$s"; echo $((f[11]+f[12])); }
for n in $names; do pgbench -h 127.0.0.1 -p ${PORT[$n]} -U bench -n -S -c 40 -j 2 -T 2 bench >/dev/null 2>&1 || echo "warmup $n failed"; done
for n in $names; do [ -n "${PID[$n]:-}" ] && echo "$n threads: $(ls /proc/${PID[$n]}/task | wc -l)"; done
for ((r=1;r<=R;r++)); do
  for n in $names; do
    pid=${PID[$n]:-}; b=0; [ -n "$pid" ] && b=$(ticks $pid)
    if [[ " ${PERF:-} " == *" $n "* ]] && [ $r = 1 ]; then perf record -F 2000 -g -p $pid -o ${OUTDIR:-/tmp}/perf-$n.data -- sleep $((T-2)) >/dev/null 2>&1 & fi
    if [[ " ${STRACE:-} " == *" $n "* ]] && [ $r = 1 ]; then timeout $((T-2)) strace -c -f -p $pid -o ${OUTDIR:-/tmp}/strace-$n.txt >/dev/null 2>&1 & fi
    out=$(pgbench -h 127.0.0.1 -p ${PORT[$n]} -U bench -n -c $C -j $(( C<2?1:2 )) -T $T "${EXTRA[@]}" bench 2>&1)
    tps=$(echo "$out" | sed -n 's/^tps = \([0-9.]*\).*/\1/p'); tx=$(echo "$out" | sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p')
    us=-; [ -n "$pid" ] && us=$(python3 -c "print(round(($(ticks $pid)-$b)/100*1e6/$tx,1))")
    echo "round $r $n tps $tps cpu_us_per_tx $us tx $tx"
  done
done | tee $W/res.txt
if [ -n "${IDLE:-}" ]; then for n in $names; do [ $n = direct ] && continue; python3 $HERE/idle_clients.py --port ${PORT[$n]} --pid ${PID[$n]} --n $IDLE --label $n 2>/dev/null | python3 -c "import json,sys; d=json.load(sys.stdin); print('idle', d['target'], d['n_ok'], d['bytes_per_conn'])"; done; fi
python3 - $W/res.txt <<'P'
import sys,statistics as st,collections
d=collections.defaultdict(lambda:([],[]))
for l in open(sys.argv[1]):
    p=l.split(); n=p[2]; d[n][0].append(float(p[4]));
    if p[6]!='-': d[n][1].append(float(p[6]))
pb=st.median(d['pgbouncer'][0]); pbc=st.median(d['pgbouncer'][1])
for n,(t,c) in d.items():
    mc=st.median(c) if c else None
    print(f"{n:12s} tps {st.median(t):9.0f}  /pgb {st.median(t)/pb:5.2f}  cpu/tx {mc if mc else '-'}  /pgb {round(mc/pbc,2) if mc else '-'}")
P
