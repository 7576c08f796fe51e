#!/usr/bin/env python3
"""psycopg 3 through Sluice, checking what a direct connection gives (issue 11):

* encodings: client_encoding LATIN1, LATIN9, EUC_JP and SJIS, set by the `options` startup
  parameter, by PGCLIENTENCODING and by SET; non-ASCII text in simple and extended queries,
  in setting values, and after the client moved to another server;
* settings however they are changed (set_config(), SET SESSION CHARACTERISTICS, a SET inside
  a multi-statement string or a function) follow the client and never leak to another one;
* ParameterStatus at login in PostgreSQL's own form (`euc-jp` is reported `EUC_JP`), and a
  startup value PostgreSQL refuses fails the login with its SQLSTATE;
* backend pid (session mode): BackendKeyData, pg_backend_pid() and a NOTIFY's sender pid
  agree; pg_terminate_backend() of that pid ends the connection with the server's error;
  cancel still works.

Usage: transparency.py URL MODE where MODE is `session` or `transaction`. In transaction
mode the proxy must have a pool of one server, so that two clients share it in turn.
Prints one line per check; exits 0 when every check passed."""

import os
import sys
import threading
import time

import psycopg

URL = sys.argv[1]
MODE = sys.argv[2]
FAILED = []


def check(what, got, want):
    if got == want:
        print(f"ok   {what}")
    else:
        print(f"FAIL {what}: got {got!r}, want {want!r}")
        FAILED.append(what)


def connect(**kwargs):
    return psycopg.connect(URL, autocommit=True, **kwargs)


def scalar(conn, sql, params=None, **kwargs):
    return conn.execute(sql, params, **kwargs).fetchone()[0]


def other_client_turn():
    """Another client uses the (shared, in transaction mode) server and checks that it sees
    none of the first client's settings."""
    with connect() as other:
        check("  no leak: work_mem", scalar(other, "show work_mem"), "4MB")
        check("  no leak: application_name", scalar(other, "show application_name"), "")
        check(
            "  no leak: default_transaction_isolation",
            scalar(other, "show default_transaction_isolation"),
            "read committed",
        )
        check("  no leak: client_encoding", scalar(other, "show client_encoding"), "UTF8")


# Text that exists in each encoding, and what the server reads it as.
SAMPLES = {
    "LATIN1": "café ÿ",
    "LATIN9": "€ café",
    "EUC_JP": "テスト 日本語",
    # 表 and ソ end in 0x5c ('\\') in SJIS: the classic trap for escaping.
    "SJIS": "表示 ソフト",
}


def encodings():
    for enc, text in SAMPLES.items():
        ways = {
            "options": lambda: connect(options=f"-c client_encoding={enc}"),
            "PGCLIENTENCODING": lambda: with_env("PGCLIENTENCODING", enc, connect),
            "SET": lambda: set_encoding(connect(), enc),
        }
        for way, open_conn in ways.items():
            with open_conn() as conn:
                label = f"{enc} by {way}"
                check(f"{label}: client_encoding", scalar(conn, "show client_encoding"), enc)
                check(f"{label}: simple query", scalar(conn, f"select '{text}'"), text)
                check(
                    f"{label}: server reads it right",
                    scalar(conn, f"select length('{text}')"),
                    len(text),
                )
                check(
                    f"{label}: extended query",
                    scalar(conn, f"select %s::text || '{text}'", [text], prepare=True),
                    text + text,
                )
                # (application_name would do, but PostgreSQL turns its non-ASCII into '?')
                conn.execute(f"set sluice_t.text = '{text}'")
                check(f"{label}: SET value", scalar(conn, "show sluice_t.text"), text)
                err = None
                try:
                    conn.execute(f"select 1/0 as \"{text}\"")
                except psycopg.errors.DivisionByZero as e:
                    err = e.sqlstate
                check(f"{label}: error passed through", err, "22012")
                if MODE == "transaction":
                    other_client_turn()
                check(f"{label}: encoding kept", scalar(conn, "show client_encoding"), enc)
                check(f"{label}: value kept", scalar(conn, "show sluice_t.text"), text)
                check(f"{label}: text after switch", scalar(conn, f"select '{text}'"), text)


def with_env(name, value, f):
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        return f()
    finally:
        if old is None:
            del os.environ[name]
        else:
            os.environ[name] = old


def set_encoding(conn, enc):
    conn.execute(f"SET client_encoding TO '{enc}'")
    return conn


def settings():
    ways = [
        (
            "set_config()",
            "select set_config('work_mem', '9MB', false)",
            "show work_mem",
            "9MB",
        ),
        (
            "SET SESSION CHARACTERISTICS",
            "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            "show default_transaction_isolation",
            "serializable",
        ),
        (
            "SET in a multi-statement string",
            "SET work_mem = '7MB'; SELECT 1",
            "show work_mem",
            "7MB",
        ),
        (
            "SET inside a function",
            "select sluice_t_set_app()",
            "show application_name",
            "from a function",
        ),
        (
            "set_config() in a committed transaction",
            "BEGIN; select set_config('work_mem', '6MB', false); COMMIT",
            "show work_mem",
            "6MB",
        ),
    ]
    with connect() as setup:
        setup.execute(
            "create or replace function sluice_t_set_app() returns void language plpgsql as "
            "$$ begin set application_name = 'from a function'; end $$"
        )
    for label, change, show, want in ways:
        with connect() as conn:
            conn.execute(change)
            check(f"{label}: in force", scalar(conn, show), want)
            if MODE == "transaction":
                other_client_turn()
            check(f"{label}: follows the client", scalar(conn, show), want)
            if label == "SET SESSION CHARACTERISTICS":
                with conn.transaction():
                    check(
                        f"{label}: new transactions use it",
                        scalar(conn, "show transaction_isolation"),
                        "serializable",
                    )
            conn.execute("RESET ALL")
            if MODE == "transaction":
                other_client_turn()
    with connect() as conn:
        conn.execute("BEGIN")
        conn.execute("select set_config('work_mem', '5MB', false)")
        conn.execute("ROLLBACK")
        if MODE == "transaction":
            other_client_turn()
        check("set_config() rolled back: forgotten", scalar(conn, "show work_mem"), "4MB")


def backend_pid():
    with connect() as conn, connect() as killer:
        pid = conn.info.backend_pid
        check("BackendKeyData pid is pg_backend_pid()", scalar(conn, "select pg_backend_pid()"), pid)
        conn.execute("LISTEN sluice_t")
        conn.execute("NOTIFY sluice_t, 'hi'")
        notes = list(conn.notifies(timeout=5, stop_after=1))
        check("NOTIFY sender pid", [n.pid for n in notes], [pid])
        check(
            "pg_stat_activity shows the pid",
            scalar(killer, "select count(*) from pg_stat_activity where pid = %s", [pid]),
            1,
        )
        # Cancel still routes through Sluice.
        t = threading.Timer(0.5, conn.cancel)
        t.start()
        err = None
        started = time.monotonic()
        try:
            conn.execute("select pg_sleep(20)")
        except psycopg.errors.QueryCanceled as e:
            err = e.sqlstate
        check("cancel", (err, time.monotonic() - started < 10), ("57014", True))
        check("terminate", scalar(killer, "select pg_terminate_backend(%s)", [pid]), True)
        raised = None
        try:
            conn.execute("select 1")
        except psycopg.OperationalError as e:
            raised = type(e).__name__
        check("the query after pg_terminate_backend raises", raised is not None, True)
        check("and the connection is closed", conn.closed or conn.broken, True)
    terminate_own_backend()


def reported_parameters():
    """ParameterStatus at login says what PostgreSQL says, not what the client sent."""
    for _ in range(2):  # the second login is answered from Sluice's cache
        with psycopg.connect(
            URL,
            autocommit=True,
            client_encoding="euc-jp",
            options="-c DateStyle=iso -c TimeZone=europe/rome -c IntervalStyle=SQL_standard",
        ) as conn:
            got = [
                conn.info.parameter_status(k)
                for k in ("client_encoding", "DateStyle", "TimeZone", "IntervalStyle")
            ]
            check(
                "reported startup parameters",
                got,
                ["EUC_JP", "ISO, MDY", "Europe/Rome", "sql_standard"],
            )
            check("driver's time zone", str(conn.info.timezone), "Europe/Rome")
    err = None
    try:
        psycopg.connect(URL, options="-c TimeZone=nowhere/bogus").close()
    except psycopg.OperationalError as e:
        err = 'FATAL:  invalid value for parameter "TimeZone": "nowhere/bogus"' in str(e)
    check("a startup value PostgreSQL refuses fails the login with its error", err, True)


def terminate_own_backend():
    """pg_terminate_backend(pg_backend_pid()): the server's error reaches the client, whose
    connection then ends."""
    with connect() as conn:
        raised = None
        try:
            conn.execute("select pg_terminate_backend(pg_backend_pid())")
            conn.execute("select 1")
        except psycopg.OperationalError as e:
            raised = type(e).__name__
        check("terminating one's own backend raises", raised is not None, True)
        check("and the connection is closed", conn.closed or conn.broken, True)


def main():
    reported_parameters()
    encodings()
    settings()
    if MODE == "session":
        backend_pid()
    else:
        terminate_own_backend()
        with connect() as conn:
            check("a new client works afterwards", scalar(conn, "select 1"), 1)
    if FAILED:
        print(f"{len(FAILED)} checks failed: {FAILED}")
        sys.exit(1)
    print("all checks passed")


if __name__ == "__main__":
    main()
