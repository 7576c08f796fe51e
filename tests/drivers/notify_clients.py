#!/usr/bin/env python3
"""LISTEN/NOTIFY through Sluice in transaction mode, over a pool smaller than the number
of clients, with the drivers' own notification APIs: psycopg 3 `conn.notifies()` and
asyncpg `add_listener`.

Checks: notifications sent by other clients arrive with the right channel, payload and
sender pid (the pid of the server the NOTIFY ran on, read in the same transaction); many
listeners on a few servers all receive every notification; a LISTEN rolled back does not
take effect; UNLISTEN stops delivery; the hub's upstream connection is killed and comes
back; a listener inside an open transaction gets its notification after the block ends.

Usage: notify_clients.py URL. Exits 0 when every check passed."""

import asyncio
import sys
import time

import asyncpg
import psycopg

URL = sys.argv[1]
LISTENERS = 20
MESSAGES = 5
WAIT = 10.0


def fail(msg):
    print(f"FAIL: {msg}", flush=True)
    sys.exit(1)


async def send(conn, channel, payload):
    """NOTIFY from `conn` in one transaction; returns the sender's backend pid."""
    async with conn.transaction():
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        await conn.execute("SELECT pg_notify($1, $2)", channel, payload)
    return pid


async def asyncpg_many_listeners(sender):
    got = [asyncio.Queue() for _ in range(LISTENERS)]
    conns = []
    for i in range(LISTENERS):
        c = await asyncpg.connect(URL, statement_cache_size=0)
        await c.add_listener("apg_chan", lambda _c, pid, ch, payload, q=got[i]: q.put_nowait((pid, ch, payload)))
        conns.append(c)
    pids = [await send(sender, "apg_chan", f"m{n}") for n in range(MESSAGES)]
    for i, q in enumerate(got):
        for n in range(MESSAGES):
            try:
                pid, ch, payload = await asyncio.wait_for(q.get(), WAIT)
            except asyncio.TimeoutError:
                fail(f"asyncpg listener {i} got {n} of {MESSAGES} notifications")
            if (pid, ch, payload) != (pids[n], "apg_chan", f"m{n}"):
                fail(f"asyncpg listener {i}: got {(pid, ch, payload)}, want {(pids[n], 'apg_chan', f'm{n}')}")
    # Clients in between keep working on the shared servers.
    for c in conns:
        if await c.fetchval("SELECT 41 + 1") != 42:
            fail("query on a listening asyncpg connection")
    for c in conns:
        await c.close()
    print(f"asyncpg: {LISTENERS} listeners x {MESSAGES} notifications ok", flush=True)


def psycopg_recv(conn, n, timeout=WAIT):
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        for note in conn.notifies(timeout=max(0.05, deadline - time.monotonic()), stop_after=n - len(out)):
            out.append(note)
    return out


def psycopg_checks():
    listener = psycopg.connect(URL, autocommit=True)
    sender = psycopg.connect(URL, autocommit=True)

    def notify(channel, payload):
        with sender.transaction():
            pid = sender.execute("SELECT pg_backend_pid()").fetchone()[0]
            sender.execute("SELECT pg_notify(%s, %s)", (channel, payload))
        return pid

    listener.execute("LISTEN psy_chan")
    pid = notify("psy_chan", "hello")
    notes = psycopg_recv(listener, 1)
    if len(notes) != 1 or (notes[0].channel, notes[0].payload, notes[0].pid) != ("psy_chan", "hello", pid):
        fail(f"psycopg: got {notes}, want psy_chan/hello from pid {pid}")

    # A LISTEN in a transaction that rolls back does not take effect.
    with listener.transaction(force_rollback=True):
        listener.execute("LISTEN psy_rolled_back")
    notify("psy_rolled_back", "nobody")
    notes = psycopg_recv(listener, 1, timeout=1.0)
    if notes:
        fail(f"psycopg: a rolled-back LISTEN received {notes}")
    # One that commits does.
    with listener.transaction():
        listener.execute("LISTEN psy_committed")
    notify("psy_committed", "yes")
    notes = psycopg_recv(listener, 1)
    if [n.payload for n in notes] != ["yes"]:
        fail(f"psycopg: committed LISTEN got {notes}")

    # Inside an open transaction the notification waits for the block's end (it never
    # lands in the middle of a response).
    with listener.transaction():
        listener.execute("SELECT 1").fetchone()
        notify("psy_chan", "during")
        if listener.execute("SELECT 2").fetchone()[0] != 2:
            fail("psycopg: query inside the transaction")
    notes = psycopg_recv(listener, 1)
    if [n.payload for n in notes] != ["during"]:
        fail(f"psycopg: notification sent during a transaction: got {notes}")

    # UNLISTEN stops delivery.
    listener.execute("UNLISTEN psy_chan")
    notify("psy_chan", "after unlisten")
    notes = psycopg_recv(listener, 1, timeout=1.0)
    if notes:
        fail(f"psycopg: got {notes} after UNLISTEN")

    # The hub's upstream connection is killed: Sluice reconnects and LISTENs again.
    listener.execute("LISTEN psy_chan")
    killed = sender.execute(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE query LIKE 'LISTEN %%' AND pid <> pg_backend_pid()"
    ).fetchone()[0]
    if killed < 1:
        fail("psycopg: no upstream listener connection found to kill")
    deadline = time.monotonic() + WAIT
    got = []
    while not got and time.monotonic() < deadline:
        notify("psy_chan", "after kill")
        got = psycopg_recv(listener, 1, timeout=0.5)
    if not got or got[0].payload != "after kill":
        fail(f"psycopg: no notification after the listener connection was killed ({got})")
    # The pool's servers never LISTEN themselves.
    chans = sender.execute("SELECT count(*) FROM pg_listening_channels()").fetchone()[0]
    if chans != 0:
        fail(f"psycopg: a pooled server listens on {chans} channels")
    listener.close()
    # The last listener left (the hub closes its connection); a new client listening on the
    # same channel gets notifications again.
    time.sleep(0.5)
    again = psycopg.connect(URL, autocommit=True)
    again.execute("LISTEN psy_chan")
    notify("psy_chan", "new listener")
    notes = psycopg_recv(again, 1)
    if [n.payload for n in notes] != ["new listener"]:
        fail(f"psycopg: a new listener after the last one left got {notes}")
    again.close()
    sender.close()
    print("psycopg: notifies, rollback, commit, in-transaction, unlisten, reconnect, relisten ok", flush=True)


async def main():
    sender = await asyncpg.connect(URL, statement_cache_size=0)
    await asyncpg_many_listeners(sender)
    await sender.close()
    await asyncio.get_running_loop().run_in_executor(None, psycopg_checks)
    print("ok", flush=True)


asyncio.run(main())
