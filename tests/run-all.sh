#!/usr/bin/env bash
# The one test command (README "Test it"; .ci/run calls exactly this): installs what a fresh
# Debian 12 machine lacks (PostgreSQL 15, the Python and Node drivers, SecantusDB and
# pymongo, promtool), then runs the format check, lint and the whole test suite (the
# end-to-end tests start their own PostgreSQL clusters). Safe to run again: every install
# step is skipped when its tools are already there.
set -euo pipefail
cd "$(dirname "$0")/.."

# Many concurrent client connections in the end-to-end tests need file descriptors.
ulimit -n "$(ulimit -Hn)" || true
echo "open files limit: $(ulimit -n)"

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

PGBIN=/usr/lib/postgresql/15/bin
if [ ! -x "$PGBIN/initdb" ] || [ ! -x "$PGBIN/pg_ctl" ] || ! command -v psql >/dev/null \
    || ! command -v pgbench >/dev/null; then
    echo "installing PostgreSQL 15"
    $SUDO apt-get update
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends \
        postgresql-15 postgresql-client-15
fi
# The package's own cluster is not needed; the tests make their own.
if command -v pg_lsclusters >/dev/null && pg_lsclusters -h 2>/dev/null | grep -q online; then
    $SUDO pg_ctlcluster 15 main stop 2>/dev/null || true
fi
# initdb refuses to run as root: the tests drop to the postgres OS user.
if ! id postgres >/dev/null 2>&1; then
    $SUDO useradd --system --user-group --home-dir /var/lib/postgresql --shell /bin/bash postgres
fi
command -v setpriv >/dev/null || { echo "setpriv (util-linux) is missing" >&2; exit 1; }
# The global allocator (jemalloc) is compiled from C source.
if ! command -v make >/dev/null || ! command -v cc >/dev/null; then
    $SUDO apt-get update
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends make gcc libc6-dev
fi

# Driver tests (tests/tests/drivers.rs): asyncpg and psycopg 3, node-postgres (node 20).
if ! python3 -c "import asyncpg, psycopg" 2>/dev/null; then
    if ! python3 -m pip --version >/dev/null 2>&1; then
        $SUDO apt-get update
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends python3-pip
    fi
    # Debian's own python3 is "externally managed" (PEP 668): fall back to --break-system-packages.
    python3 -m pip install --quiet asyncpg "psycopg[binary]" \
        || python3 -m pip install --quiet --break-system-packages asyncpg "psycopg[binary]"
fi
npm ci --prefix tests/drivers/node --no-audit --no-fund

# MongoDB side (tests/tests/mongo.rs): SecantusDB, a MongoDB-wire server for tests
# (shared/MONGO-TESTING.md; a test tool, never linked or shipped), and pymongo in the same
# venv for the driver test, with pymongo's snappy and zstd codecs (python-snappy,
# backports.zstd) for the wire-compression tests (tests/tests/mongo_compression.rs).
# SLUICE_TEST_MONGODB_URI points the suite at a real mongod.
if [ ! -x /opt/secantus/bin/secantusd-py ] \
    || ! /opt/secantus/bin/python -c "import pymongo, snappy, backports.zstd" 2>/dev/null; then
    if ! python3 -c "import venv, ensurepip" 2>/dev/null; then
        $SUDO apt-get update
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends python3-venv
    fi
    $SUDO python3 -m venv /opt/secantus
    $SUDO /opt/secantus/bin/pip install --quiet 'SecantusDB==0.7.0b3' 'pymongo>=4.9,<5' \
        'python-snappy>=0.7,<1' 'backports.zstd>=1,<2'
fi

# promtool (Debian's prometheus package) checks deploy/prometheus/alerts.yml here and runs
# the alert unit tests of tests/tests/deploy.rs. The package's own server is not wanted:
# keep the install from starting it (policy-rc.d), and stop it if it runs anyway.
if ! command -v promtool >/dev/null; then
    echo "installing prometheus (for promtool)"
    $SUDO apt-get update
    POLICY_RC=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
        $SUDO chmod 755 /usr/sbin/policy-rc.d
        POLICY_RC=1
    fi
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends prometheus
    if [ -n "$POLICY_RC" ]; then $SUDO rm -f /usr/sbin/policy-rc.d; fi
fi
if command -v systemctl >/dev/null && systemctl is-active --quiet prometheus 2>/dev/null; then
    $SUDO systemctl stop prometheus || true
elif [ -x /etc/init.d/prometheus ] && $SUDO service prometheus status >/dev/null 2>&1; then
    $SUDO service prometheus stop || true
fi
promtool check rules deploy/prometheus/alerts.yml

cargo --version
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo test --workspace
