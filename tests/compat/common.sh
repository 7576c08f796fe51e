# shellcheck shell=bash
# Shared parts of the driver compat scripts (psycopg.sh, node-postgres.sh): prerequisites,
# the temp dir and its cleanup, a throwaway PostgreSQL 15 cluster run as the `postgres`
# user, and sluice in session / transaction mode in front of it.
#
# Sourced, not run: `. "$(dirname "$0")/common.sh"` after `set -euo pipefail`, with
# COMPAT_NAME set (log prefix "[$COMPAT_NAME-compat]", temp dir and postgresql.conf marker).
# The caller provides:
#   free_port            prints a free TCP port on 127.0.0.1.
#   sluice_config MODE   prints the rest of a sluice config after [admin] and the [postgres]
#                        pool settings (more [postgres] keys first, then its own tables).
#   sluice_probe PORT    succeeds when one query through sluice on PORT works.
#   POOL_SIZE            sluice pool_size.
# Sets: ROOT, SUDO, PGBIN, WORK, PGROOT, PGDATA, PGPORT, PG_VERSION, PORT[target]
# (direct: the server; session / transaction: sluice), PIDS (killed on exit).

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PGBIN=/usr/lib/postgresql/15/bin
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
PIDS=()
PGDATA_DIR=""
declare -A PORT

log() { printf '[%s-compat] %s\n' "$COMPAT_NAME" "$*" >&2; }

# compat_prereqs [APT_PACKAGE...]: apt-installs PostgreSQL 15 and util-linux (setpriv) when
# missing, plus the packages given (the caller's own missing ones); stops a running Debian
# cluster and creates the postgres user when there is none.
compat_prereqs() {
    local need_apt=()
    [ -x "$PGBIN/initdb" ] || need_apt+=(postgresql-15 postgresql-client-15)
    command -v setpriv >/dev/null || need_apt+=(util-linux)
    need_apt+=("$@")
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
}

# compat_init_work OUT_VAR: creates the temp dir WORK (with out/ and pg/sock/) and installs
# the exit trap (compat_cleanup); OUT_VAR names the variable of the directory the results
# are copied to on exit (e.g. PSYCOPG_COMPAT_OUT).
compat_init_work() {
    COMPAT_OUT_VAR=$1
    WORK="$(mktemp -d "/tmp/sluice-$COMPAT_NAME-compat.XXXXXX")"
    chmod 755 "$WORK"
    trap compat_cleanup EXIT
    trap 'exit 130' INT TERM
    mkdir -p "$WORK/out"
    PGROOT="$WORK/pg"
    PGDATA="$PGROOT/data"
    mkdir -p "$PGROOT/sock"
}

# compat_cleanup: the exit trap. Stops the sluice processes and the server, copies out/ and
# the server log to $OUT_VAR when set, removes WORK and keeps the exit code.
compat_cleanup() {
    local rc=$? keep
    set +e
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null
    done
    if [ -n "$PGDATA_DIR" ] && [ -f "$PGDATA_DIR/postmaster.pid" ]; then
        as_postgres "$PGBIN/pg_ctl" -D "$PGDATA_DIR" stop -m immediate >/dev/null 2>&1
    fi
    keep="${!COMPAT_OUT_VAR:-}"
    if [ -n "$keep" ]; then
        mkdir -p "$keep"
        cp -rf "$WORK"/out/. "$keep"/ 2>/dev/null
        cp -f "$WORK"/pg/postgres.log "$keep"/ 2>/dev/null
        log "results kept in $keep"
    fi
    rm -rf "$WORK"
    exit $rc
}

# as_postgres CMD...: runs CMD as the postgres user (as is when not root).
as_postgres() {
    if [ "$(id -u)" -eq 0 ]; then
        # setpriv keeps the open-files limit (runuser would reset it).
        setpriv --reuid=postgres --regid=postgres --init-groups "$@"
    else
        "$@"
    fi
}

# compat_sluice_bin: SLUICE_BIN, built with cargo when unset; exits 2 when not executable.
compat_sluice_bin() {
    if [ -z "${SLUICE_BIN:-}" ]; then
        log "building sluice (cargo build --release -p sluice)"
        (cd "$ROOT" && cargo build --release -p sluice)
        SLUICE_BIN="$ROOT/target/release/sluice"
    fi
    [ -x "$SLUICE_BIN" ] || { log "no sluice binary at $SLUICE_BIN"; exit 2; }
}

# compat_start_cluster SUPERUSER PASSWORD <<EOF (extra postgresql.conf lines) EOF:
# initdb (SCRAM, UTF8, C locale) in $PGDATA, listening on 127.0.0.1:$PGPORT (a free port),
# started; sets PG_VERSION and PORT[direct]. Files the server reads (certificates) must be
# in $PGROOT before the call (it is chowned to postgres).
compat_start_cluster() {
    COMPAT_SU=$1
    COMPAT_SU_PASS=$2
    printf '%s\n' "$COMPAT_SU_PASS" >"$PGROOT/pwfile"
    [ "$(id -u)" -eq 0 ] && chown -R postgres:postgres "$PGROOT"
    as_postgres "$PGBIN/initdb" -D "$PGDATA" -U "$COMPAT_SU" --auth=scram-sha-256 -E UTF8 \
        --locale=C --no-sync --no-instructions --pwfile="$PGROOT/pwfile" >"$WORK/out/initdb.log" 2>&1
    PGDATA_DIR="$PGDATA"
    PGPORT="$(free_port)"
    {
        cat <<EOF
# sluice $COMPAT_NAME compat
listen_addresses = '127.0.0.1'
port = $PGPORT
unix_socket_directories = '$PGROOT/sock'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 300
password_encryption = 'scram-sha-256'
shared_buffers = '64MB'
log_min_messages = warning
EOF
        cat
    } >>"$PGDATA/postgresql.conf"
    as_postgres "$PGBIN/pg_ctl" -D "$PGDATA" -l "$PGROOT/postgres.log" -w -t 60 start >/dev/null
    PORT[direct]=$PGPORT
    PG_VERSION="$(su_sql -d postgres -Atc 'show server_version')"
    log "PostgreSQL $PG_VERSION on 127.0.0.1:$PGPORT"
}

# su_sql PSQL_ARGS...: psql on the cluster as its superuser, stopping at the first error.
su_sql() {
    PGPASSWORD="$COMPAT_SU_PASS" "$PGBIN/psql" -X -h 127.0.0.1 -p "$PGPORT" -U "$COMPAT_SU" \
        -v ON_ERROR_STOP=1 -q "$@"
}

# compat_start_sluice MODE: writes $WORK/sluice-MODE.toml (free listen and admin ports,
# pool_mode MODE, then `sluice_config MODE`), starts sluice (log: out/sluice-MODE.log) and
# waits up to 20 s for `sluice_probe PORT`; sets PORT[MODE]; exits 1 when it does not come up.
compat_start_sluice() {
    local mode=$1 port admin
    port="$(free_port)"
    admin="$(free_port)"
    {
        cat <<EOF
[admin]
listen = "127.0.0.1:$admin"

[postgres]
listen = "127.0.0.1:$port"
pool_mode = "$mode"
pool_size = $POOL_SIZE
min_pool_size = 2
pool_timeout = "15s"
EOF
        sluice_config "$mode"
    } >"$WORK/sluice-$mode.toml"
    RUST_LOG="${SLUICE_LOG:-info}" "$SLUICE_BIN" run --config "$WORK/sluice-$mode.toml" \
        >"$WORK/out/sluice-$mode.log" 2>&1 &
    PIDS+=($!)
    PORT[$mode]=$port
    for _ in $(seq 100); do
        if sluice_probe "$port"; then
            log "sluice ($mode) on 127.0.0.1:$port"
            return 0
        fi
        sleep 0.2
    done
    log "sluice ($mode) did not come up:"
    tail -n 30 "$WORK/out/sluice-$mode.log" >&2
    exit 1
}

# compat_start_targets: checks every word of $TARGETS (direct, session, transaction; exits 2
# on another) and starts sluice for session and transaction.
compat_start_targets() {
    local t
    for t in $TARGETS; do
        case $t in
            session | transaction) compat_start_sluice "$t" ;;
            direct) ;;
            *) log "unknown target $t"; exit 2 ;;
        esac
    done
}

# compat_exit DIFFER: the scripts' exit: 1 when COMPAT_STRICT=1 and DIFFER (the summary's
# exit code: results differ from the direct run) is not 0, else 0.
compat_exit() {
    if [ "${COMPAT_STRICT:-0}" = 1 ] && [ "$1" -ne 0 ]; then exit 1; fi
    exit 0
}
