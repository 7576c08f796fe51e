#!/usr/bin/env python3
"""psycopg 3 through Sluice in transaction mode: N concurrent async clients with
prepare_threshold=0 (every query prepared server side, a small prepared_max so psycopg
sends DEALLOCATE), clients with default settings, transactions and pipeline mode.

Usage: psycopg_clients.py URL [CLIENTS] [ROUNDS]. Exits 0 when every check passed."""

import asyncio
import sys

import psycopg

URL = sys.argv[1]
CLIENTS = int(sys.argv[2]) if len(sys.argv) > 2 else 20
ROUNDS = int(sys.argv[3]) if len(sys.argv) > 3 else 40


async def setup():
    async with await psycopg.AsyncConnection.connect(URL, autocommit=True) as conn:
        await conn.execute("DROP TABLE IF EXISTS pg3_items, pg3_log")
        await conn.execute(
            "CREATE TABLE pg3_items (id int PRIMARY KEY, name text, score float8, flag bool)"
        )
        await conn.execute(
            "INSERT INTO pg3_items SELECT g, 'item ' || g, g * 0.5, g % 2 = 0 "
            "FROM generate_series(1, 100) g"
        )
        await conn.execute("CREATE TABLE pg3_log (client int, n int, note text)")


async def client(k, prepared):
    kwargs = {"autocommit": True}
    if prepared:
        kwargs["prepare_threshold"] = 0
    conn = await psycopg.AsyncConnection.connect(URL, **kwargs)
    if prepared:
        conn.prepared_max = 4  # more distinct queries than this: psycopg DEALLOCATEs
    try:
        for i in range(ROUNDS):
            cur = await conn.execute("SELECT %s::int + %s::int", (i, k))
            assert (await cur.fetchone())[0] == i + k
            id_ = (k * 5 + i) % 100 + 1
            cur = await conn.execute(
                "SELECT id, name, score, flag FROM pg3_items WHERE id = %s", (id_,)
            )
            assert await cur.fetchone() == (id_, f"item {id_}", id_ * 0.5, id_ % 2 == 0)
            # Distinct texts, so the prepared cache overflows.
            cur = await conn.execute(f"SELECT %s::text || '{i % 7}'", (f"c{k}",))
            assert (await cur.fetchone())[0] == f"c{k}{i % 7}"
            if i % 6 == 0:
                async with conn.transaction():
                    await conn.execute("INSERT INTO pg3_log VALUES (%s, %s, %s)", (k, i, "x"))
                    cur = await conn.execute(
                        "SELECT count(*) FROM pg3_log WHERE client = %s AND n >= 0", (k,)
                    )
                    assert (await cur.fetchone())[0] == i // 6 + 1
            if i % 6 == 3:
                try:
                    async with conn.transaction():
                        await conn.execute("INSERT INTO pg3_log VALUES (%s, -1, 'no')", (k,))
                        await conn.execute("SELECT 1 / %s::int", (0,))
                    raise AssertionError("division by zero did not fail")
                except psycopg.errors.DivisionByZero:
                    pass
            if i % 10 == 5:
                try:
                    await conn.execute("SELEC %s", (1,))
                    raise AssertionError("bad SQL did not fail")
                except psycopg.errors.SyntaxError:
                    pass
            if i % 10 == 7:
                # Pipeline mode: several prepared queries in flight.
                async with conn.pipeline():
                    curs = [
                        await conn.execute("SELECT name FROM pg3_items WHERE id = %s", (j + 1,))
                        for j in range(5)
                    ]
                    async with conn.transaction():
                        await conn.execute("INSERT INTO pg3_log VALUES (%s, -2, 'pipe')", (k,))
                for j, c in enumerate(curs):
                    assert (await c.fetchone())[0] == f"item {j + 1}"
        cur = await conn.execute("SELECT count(*) FROM pg3_log WHERE client = %s AND n >= 0", (k,))
        assert (await cur.fetchone())[0] == (ROUNDS + 5) // 6
        cur = await conn.execute("SELECT count(*) FROM pg3_log WHERE client = %s AND n = -1", (k,))
        assert (await cur.fetchone())[0] == 0
    finally:
        await conn.close()


async def main():
    await setup()
    await asyncio.gather(*(client(k, prepared=k % 2 == 0) for k in range(CLIENTS)))
    print(f"psycopg {psycopg.__version__}: {CLIENTS} clients x {ROUNDS} rounds ok")


if __name__ == "__main__":
    asyncio.run(asyncio.wait_for(main(), 240))
