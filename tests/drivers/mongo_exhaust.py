"""pymongo's exhaust cursors and streaming monitor through Sluice (tests/tests/mongo_exhaust.rs).

Usage: mongo_exhaust.py HOST:PORT ADMIN_PORT DB SCENARIO

pymongo talks to Sluice through a small counting relay, so the script sees what the
driver sent (OP_MSG exhaustAllowed) and got back (replies with moreToCome) on the wire:

- cursor: 100,000 documents through find(cursor_type=EXHAUST); the replies must be
  streamed (many moreToCome replies to a single exhaust getMore).
- early-close: an exhaust cursor abandoned after its first batches, by closing the client.
- transaction: an exhaust cursor inside a transaction reads the transaction's own
  uncommitted writes as a stream, and the transaction goes on and commits after it.
- monitor: a client with serverMonitoringMode=stream idles; its monitor must get a
  stream of hello replies (moreToCome) while Sluice holds no upstream connection
  (/admin/pool-stats `active` stays 0).

Prints one JSON line of what it counted, then ALL OK.
"""

import json
import socket
import struct
import sys
import threading
import time
import urllib.request

from pymongo import CursorType, MongoClient

OP_MSG = 2013
MORE_TO_COME = 1 << 1
EXHAUST_ALLOWED = 1 << 16

counts = {
    "exhaust_getmore": 0,
    "exhaust_hello": 0,
    "streamed_batches": 0,
    "streamed_hellos": 0,
}
lock = threading.Lock()


def first_key(msg):
    """The first key of an OP_MSG's kind-0 body, when the body is the first section."""
    if len(msg) < 27 or msg[20] != 0:
        return ""
    end = msg.index(b"\0", 26)
    return msg[26:end].decode("utf-8", "replace")


def note(msg, to_server):
    op, = struct.unpack_from("<i", msg, 12)
    if op != OP_MSG:
        return
    bits, = struct.unpack_from("<I", msg, 16)
    key = first_key(msg)
    with lock:
        if to_server and bits & EXHAUST_ALLOWED:
            if key == "getMore":
                counts["exhaust_getmore"] += 1
            elif key in ("hello", "isMaster", "ismaster"):
                counts["exhaust_hello"] += 1
        if not to_server and bits & MORE_TO_COME:
            if key == "cursor":
                counts["streamed_batches"] += 1
            elif key in ("isWritablePrimary", "ismaster", "helloOk"):
                counts["streamed_hellos"] += 1


def pump(src, dst, to_server):
    buf = b""
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
            buf += data
            while len(buf) >= 16:
                length, = struct.unpack_from("<i", buf, 0)
                if len(buf) < length:
                    break
                note(buf[:length], to_server)
                buf = buf[length:]
    except OSError:
        pass
    for s in (src, dst):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def start_relay(target):
    host, port = target.rsplit(":", 1)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)

    def accept():
        while True:
            client, _ = listener.accept()
            upstream = socket.create_connection((host, int(port)))
            threading.Thread(target=pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=pump, args=(upstream, client, False), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return "127.0.0.1:%d" % listener.getsockname()[1]


def pool_stats(admin_port):
    with urllib.request.urlopen("http://127.0.0.1:%s/admin/pool-stats" % admin_port) as r:
        return json.load(r)["mongo_pools"][0]


def cursor(relay, db):
    client = MongoClient("mongodb://%s/?serverMonitoringMode=poll" % relay)
    coll = client[db].docs
    coll.drop()
    pad = "x" * 100
    coll.insert_many([{"i": i, "pad": pad} for i in range(100_000)])
    seen = 0
    total = 0
    for d in coll.find({}, {"i": 1}, cursor_type=CursorType.EXHAUST, batch_size=1000):
        seen += 1
        total += d["i"]
    assert seen == 100_000, seen
    assert total == sum(range(100_000)), total
    client.close()


def early_close(relay, db):
    client = MongoClient("mongodb://%s/?serverMonitoringMode=poll&maxPoolSize=1" % relay)
    coll = client[db].docs
    coll.drop()
    coll.insert_many([{"i": i, "pad": "y" * 1000} for i in range(20_000)])
    it = coll.find(cursor_type=CursorType.EXHAUST, batch_size=100)
    for _ in range(250):
        next(it)
    client.close()


def transaction(relay, db):
    client = MongoClient("mongodb://%s/?serverMonitoringMode=poll" % relay)
    coll = client[db].docs
    coll.drop()
    coll.insert_one({"i": -1})
    with client.start_session() as s:
        with s.start_transaction():
            coll.insert_many([{"i": i} for i in range(5_000)], session=s)
            seen = sum(
                1
                for _ in coll.find(
                    {"i": {"$gte": 0}}, cursor_type=CursorType.EXHAUST, batch_size=100, session=s
                )
            )
            assert seen == 5_000, seen
            coll.insert_one({"i": 5_000}, session=s)
    total = coll.count_documents({})
    assert total == 5_002, total
    client.close()


def monitor(relay, admin_port):
    uri = "mongodb://%s/?serverMonitoringMode=stream&heartbeatFrequencyMS=500" % relay
    client = MongoClient(uri)
    client.admin.command("ping")
    time.sleep(0.5)
    most_active = 0
    until = time.time() + 4
    while time.time() < until:
        most_active = max(most_active, pool_stats(admin_port)["active"])
        time.sleep(0.2)
    counts["most_active_upstream"] = most_active
    client.close()


def main():
    target, admin_port, db, scenario = sys.argv[1:5]
    relay = start_relay(target)
    if scenario == "cursor":
        cursor(relay, db)
    elif scenario == "early-close":
        early_close(relay, db)
    elif scenario == "transaction":
        transaction(relay, db)
    elif scenario == "monitor":
        monitor(relay, admin_port)
    else:
        raise SystemExit("unknown scenario " + scenario)
    with lock:
        print(json.dumps(counts))
    print("ALL OK")


if __name__ == "__main__":
    main()
