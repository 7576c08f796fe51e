"""pymongo with wire compression through Sluice: the compressor the server agreed to,
then inserts, a 2,000-document cursor read 100 at a time, a large compressible document,
an aggregation, a w:0 (moreToCome) write and an error reply, all through one client.

Usage: mongo_pymongo_compression.py URI DBNAME EXPECTED ; EXPECTED is the compressor the
handshake must agree on, or "none". Prints ALL OK on success."""
import sys
import time

import pymongo
from pymongo.errors import OperationFailure
from pymongo.write_concern import WriteConcern

uri, name, expected = sys.argv[1], sys.argv[2], sys.argv[3]
client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=10000, maxPoolSize=1)
db = client[name]
db.command("ping")

# The pooled connection's negotiated compressor: pymongo keeps the compression context it
# chose from the server's hello reply on the connection (private API, read only here).
pool = next(iter(client._get_topology()._servers.values())).pool  # noqa: SLF001
ctx = pool.conns[0].compression_context if pool.conns else None
agreed = {1: "snappy", 2: "zlib", 3: "zstd"}.get(getattr(ctx, "compressor_id", None), "none")
assert agreed == expected, f"agreed {agreed}, expected {expected}"

db.c.insert_many([{"_id": i, "s": "abc" * 50} for i in range(2000)])
assert sum(1 for _ in db.c.find().batch_size(100)) == 2000
big = "sluice compresses " * 100_000
db.big.insert_one({"_id": 1, "text": big})
assert db.big.find_one({"_id": 1})["text"] == big
total = list(db.c.aggregate([{"$group": {"_id": None, "n": {"$sum": 1}}}]))[0]["n"]
assert total == 2000, total

w0 = db.get_collection("w0", write_concern=WriteConcern(w=0))
w0.insert_one({"i": 1})
deadline = time.time() + 10
while db.w0.count_documents({}) < 1:
    assert time.time() < deadline, "w:0 write never arrived"
    time.sleep(0.05)

try:
    db.command("noSuchCommand")
    raise AssertionError("unknown command accepted")
except OperationFailure as e:
    assert e.code == 59, e.details

print("ALL OK")
