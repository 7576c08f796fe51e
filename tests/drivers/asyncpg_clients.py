#!/usr/bin/env python3
"""asyncpg through Sluice in transaction mode: N concurrent clients with asyncpg's default
statement cache (every query is a named server-side statement), explicit prepare(),
executemany, transactions, startup parameters (server_settings), and a pool.

Usage: asyncpg_clients.py URL [CLIENTS] [ROUNDS]. Exits 0 when every check passed."""

import asyncio
import sys

import asyncpg

URL = sys.argv[1]
CLIENTS = int(sys.argv[2]) if len(sys.argv) > 2 else 20
ROUNDS = int(sys.argv[3]) if len(sys.argv) > 3 else 40


async def setup():
    conn = await asyncpg.connect(URL)
    await conn.execute(
        "DROP TABLE IF EXISTS apg_items, apg_log; "
        "CREATE TABLE apg_items (id int PRIMARY KEY, name text, score float8, "
        "tags text[], at timestamptz); "
        "INSERT INTO apg_items SELECT g, 'item ' || g, g * 0.5, ARRAY['t' || g, 'x'], "
        "'2024-01-01'::timestamptz + g * interval '1 hour' FROM generate_series(1, 100) g; "
        "CREATE TABLE apg_log (client int, n int, note text)"
    )
    await conn.close()


async def client(k):
    # Startup parameters: must hold on whichever server the client lands on.
    conn = await asyncpg.connect(
        URL,
        server_settings={"application_name": f"apg-{k}", "work_mem": f"{k + 1}MB"},
    )
    try:
        lookup = await conn.prepare("SELECT id, name, score, tags FROM apg_items WHERE id = $1")
        for i in range(ROUNDS):
            # fetchval/fetchrow go through asyncpg's statement cache (named statements).
            assert await conn.fetchval("SELECT $1::int + $2::int", i, k) == i + k
            assert await conn.fetchval("SELECT $1::text || '-' || $2::text", f"c{k}", str(i)) == f"c{k}-{i}"
            id_ = (k * 7 + i) % 100 + 1
            row = await lookup.fetchrow(id_)
            assert row["id"] == id_ and row["name"] == f"item {id_}", row
            assert row["score"] == id_ * 0.5 and row["tags"] == [f"t{id_}", "x"], row
            settings = await conn.fetchrow(
                "SELECT current_setting('application_name') AS a, current_setting('work_mem') AS w"
            )
            assert (settings["a"], settings["w"]) == (f"apg-{k}", f"{k + 1}MB"), (k, dict(settings))
            if i % 8 == 0:
                async with conn.transaction():
                    await conn.executemany(
                        "INSERT INTO apg_log VALUES ($1, $2, $3)",
                        [(k, i, "a"), (k, i, "b"), (k, i, None)],
                    )
                    n = await conn.fetchval("SELECT count(*) FROM apg_log WHERE client = $1", k)
                    assert n == 3 * (i // 8 + 1), (k, i, n)
                    row = await lookup.fetchrow(1)
                    assert row["name"] == "item 1"
            if i % 8 == 4:
                try:
                    async with conn.transaction():
                        await conn.execute("INSERT INTO apg_log VALUES ($1, -1, 'rolled back')", k)
                        await conn.fetchval("SELECT 1 / $1::int", 0)
                    raise AssertionError("division by zero did not fail")
                except asyncpg.exceptions.DivisionByZeroError:
                    pass
            if i % 10 == 0:
                # A Parse error: reported, and the connection stays usable.
                try:
                    await conn.fetchval("SELEC 1")
                    raise AssertionError("bad SQL did not fail")
                except asyncpg.exceptions.PostgresSyntaxError:
                    pass
        n = await conn.fetchval("SELECT count(*) FROM apg_log WHERE client = $1 AND n >= 0", k)
        assert n == 3 * ((ROUNDS + 7) // 8), (k, n)
    finally:
        await conn.close()


async def pool_users():
    # A pool resets connections on release (asyncpg's reset query: advisory unlock, CLOSE ALL,
    # UNLISTEN *, RESET ALL).
    pool = await asyncpg.create_pool(URL, min_size=2, max_size=6)
    try:
        async def use(k):
            for i in range(ROUNDS // 2):
                async with pool.acquire() as conn:
                    assert await conn.fetchval("SELECT $1::int * 3", i + k) == (i + k) * 3
                    async with conn.transaction():
                        v = await conn.fetchval("SELECT name FROM apg_items WHERE id = $1", k + 1)
                        assert v == f"item {k + 1}", v
        await asyncio.gather(*(use(k) for k in range(8)))
    finally:
        await pool.close()


async def main():
    await setup()
    await asyncio.gather(*(client(k) for k in range(CLIENTS)))
    await pool_users()
    print(f"asyncpg {asyncpg.__version__}: {CLIENTS} clients x {ROUNDS} rounds ok")


if __name__ == "__main__":
    asyncio.run(asyncio.wait_for(main(), 240))
