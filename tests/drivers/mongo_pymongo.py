"""pymongo through Sluice: CRUD, a 1,000-document cursor read 10 at a time, aggregation,
a unique-index violation, an unknown command, a committed and an aborted transaction
(isolation checked from a second client), w:0 writes, and a change stream.

Usage: mongo_pymongo.py SLUICE_URI DBNAME ; prints ALL OK on success."""
import sys
import threading

import pymongo
from pymongo.errors import DuplicateKeyError, OperationFailure
from pymongo.write_concern import WriteConcern

uri, name = sys.argv[1], sys.argv[2]
client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=10000)
other = pymongo.MongoClient(uri, serverSelectionTimeoutMS=10000)
assert client.admin.command("hello")["msg"] == "isdbgrid"
db = client[name]

db.c.insert_one({"_id": 1, "v": "a"})
assert db.c.find_one({"_id": 1})["v"] == "a"
assert db.c.update_one({"_id": 1}, {"$set": {"v": "b"}}).modified_count == 1
assert db.c.delete_one({"_id": 1}).deleted_count == 1

db.big.insert_many([{"_id": i, "n": i} for i in range(1000)])
assert sum(1 for _ in db.big.find().batch_size(10)) == 1000
total = list(db.big.aggregate([{"$group": {"_id": None, "s": {"$sum": "$n"}}}]))[0]["s"]
assert total == 499500, total

db.u.create_index("k", unique=True)
db.u.insert_one({"k": 1})
try:
    db.u.insert_one({"k": 1})
    raise AssertionError("duplicate accepted")
except DuplicateKeyError as e:
    assert e.code == 11000

try:
    db.command("noSuchCommand")
    raise AssertionError("unknown command accepted")
except OperationFailure as e:
    assert e.code == 59, e.details

db.t.insert_one({"_id": 0})
with client.start_session() as s:
    s.start_transaction()
    db.t.insert_one({"_id": 1}, session=s)
    assert other[name].t.find_one({"_id": 1}) is None, "uncommitted write visible"
    s.commit_transaction()
    assert other[name].t.find_one({"_id": 1}) is not None
    s.start_transaction()
    db.t.insert_one({"_id": 2}, session=s)
    s.abort_transaction()
    assert other[name].t.find_one({"_id": 2}) is None

# w:0 (unacknowledged, moreToCome) writes, then a normal read sees them.
w0 = db.get_collection("w0", write_concern=WriteConcern(w=0))
for i in range(20):
    w0.insert_one({"i": i})
import time
deadline = time.time() + 10
while db.w0.count_documents({}) < 20 and time.time() < deadline:
    time.sleep(0.1)
assert db.w0.count_documents({}) == 20

# A change stream sees an insert made by another client.
got = []
with db.cs.watch(max_await_time_ms=500) as stream:
    def later():
        time.sleep(0.5)
        other[name].cs.insert_one({"x": 1})
    threading.Thread(target=later).start()
    deadline = time.time() + 20
    while not got and time.time() < deadline:
        change = stream.try_next()
        if change is not None:
            got.append(change)
assert got and got[0]["operationType"] == "insert", got
print("ALL OK")
