#!/usr/bin/env python3
"""Idle-client memory probe for the Sluice benchmark harness.

Opens N authenticated client connections to a proxy (asyncpg, SCRAM), holds
them idle, and reports how much the proxy's resident memory (VmRSS of --pid)
grew, per connection. Prints one JSON object on stdout.

"Really authenticated" is checked three ways:
  * a raw startup packet shows the proxy asks for SASL / SCRAM-SHA-256;
  * a connection with a wrong password is rejected;
  * asyncpg only returns a connection after AuthenticationOk + ReadyForQuery,
    and a sample of the held connections runs `SELECT 1` at the end.

Only ever connects to 127.0.0.1.
"""

import argparse
import asyncio
import json
import random
import socket
import struct
import sys
import time


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found for pid {pid}")


def auth_request(host: str, port: int, user: str, db: str) -> str:
    """Sends a StartupMessage and describes the first authentication request."""
    params = b"user\0" + user.encode() + b"\0database\0" + db.encode() + b"\0\0"
    body = struct.pack("!I", 196608) + params
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(struct.pack("!I", len(body) + 4) + body)
        hdr = b""
        while len(hdr) < 5:
            chunk = s.recv(5 - len(hdr))
            if not chunk:
                return "closed"
            hdr += chunk
        kind, length = hdr[:1], struct.unpack("!I", hdr[1:5])[0]
        payload = b""
        while len(payload) < length - 4:
            chunk = s.recv(length - 4 - len(payload))
            if not chunk:
                break
            payload += chunk
    if kind == b"E":
        return "error: " + payload.decode(errors="replace").replace("\0", " ").strip()
    if kind != b"R":
        return f"unexpected message {kind!r}"
    code = struct.unpack("!I", payload[:4])[0]
    if code == 10:
        mechs = [m.decode() for m in payload[4:].split(b"\0") if m]
        return "SASL " + ",".join(mechs)
    return {0: "ok (no auth!)", 3: "cleartext", 5: "md5"}.get(code, f"auth code {code}")


async def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pid", type=int, required=True, help="proxy process to measure")
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--user", default="bench")
    ap.add_argument("--password", default="benchpw")
    ap.add_argument("--db", default="bench")
    ap.add_argument("--settle", type=float, default=2.0, help="seconds to wait before reading RSS")
    ap.add_argument("--label", default="")
    a = ap.parse_args()
    if a.host not in ("127.0.0.1", "localhost", "::1"):
        print("refusing to connect anywhere but loopback", file=sys.stderr)
        return 2

    import asyncpg  # imported late so --help works without it

    out = {"target": a.label, "n_requested": a.n}
    out["auth_request"] = auth_request(a.host, a.port, a.user, a.db)

    # A wrong password must be rejected.
    try:
        c = await asyncpg.connect(host=a.host, port=a.port, user=a.user, password=a.password + "-wrong",
                                  database=a.db, timeout=30, statement_cache_size=0)
        await c.close()
        out["wrong_password_rejected"] = False
    except Exception as e:  # noqa: BLE001
        out["wrong_password_rejected"] = True
        out["wrong_password_error"] = f"{type(e).__name__}: {e}"[:200]

    # Warm-up connection so one-time allocations are not charged to the idle clients.
    c = await asyncpg.connect(host=a.host, port=a.port, user=a.user, password=a.password,
                              database=a.db, timeout=30, statement_cache_size=0)
    await c.execute("SELECT 1")
    await c.close()
    await asyncio.sleep(a.settle)

    rss_before = rss_kib(a.pid)
    sem = asyncio.Semaphore(a.concurrency)
    conns = []
    errors = {}

    async def one():
        async with sem:
            try:
                conn = await asyncpg.connect(host=a.host, port=a.port, user=a.user, password=a.password,
                                             database=a.db, timeout=120, statement_cache_size=0)
                conns.append(conn)
            except Exception as e:  # noqa: BLE001
                key = f"{type(e).__name__}: {e}"[:160]
                errors[key] = errors.get(key, 0) + 1

    t0 = time.monotonic()
    await asyncio.gather(*(one() for _ in range(a.n)))
    out["connect_seconds"] = round(time.monotonic() - t0, 2)
    await asyncio.sleep(a.settle)
    rss_after = rss_kib(a.pid)
    hwm = rss_kib(a.pid, "VmHWM")

    # Prove a sample of the held connections is live and usable.
    sample = random.sample(conns, min(50, len(conns)))
    ok = 0
    for conn in sample:
        try:
            if await conn.fetchval("SELECT 1") == 1:
                ok += 1
        except Exception as e:  # noqa: BLE001
            key = f"sample query: {type(e).__name__}: {e}"[:160]
            errors[key] = errors.get(key, 0) + 1

    await asyncio.gather(*(conn.close(timeout=10) for conn in conns), return_exceptions=True)

    n_ok = len(conns)
    out.update({
        "n_ok": n_ok,
        "n_failed": a.n - n_ok,
        "errors": errors,
        "sample_queries_ok": ok,
        "sample_size": len(sample),
        "rss_before_kib": rss_before,
        "rss_after_kib": rss_after,
        "hwm_kib": hwm,
        "bytes_per_conn": round((rss_after - rss_before) * 1024 / n_ok, 1) if n_ok else None,
    })
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
