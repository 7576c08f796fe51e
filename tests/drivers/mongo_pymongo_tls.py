"""pymongo through Sluice's [mongo.tls] listener.

Usage: mongo_pymongo_tls.py URI DBNAME ok       -- insert and find (a small and a 4 MiB
                                                   document), prints ALL OK
       mongo_pymongo_tls.py URI DBNAME refused  -- the server cannot be reached (Sluice
                                                   closes the connection), prints REFUSED
The URI carries the TLS options (tls=true&tlsCAFile=...) or none (plaintext)."""
import sys

import pymongo
from pymongo.errors import ConnectionFailure

uri, name, expect = sys.argv[1], sys.argv[2], sys.argv[3]
timeout = 10000 if expect == "ok" else 3000
client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=timeout)

if expect == "refused":
    try:
        client.admin.command("ping")
        raise AssertionError("ping answered, expected the connection to be refused")
    except ConnectionFailure as e:
        print("REFUSED", type(e).__name__)
    sys.exit(0)

db = client[name]
db.c.insert_one({"_id": 1, "v": "tls"})
assert db.c.find_one({"_id": 1})["v"] == "tls"
# A reply larger than the socket buffers: TLS records must all be flushed.
big = "x" * (4 * 1024 * 1024)
db.c.insert_one({"_id": 2, "v": big})
assert db.c.find_one({"_id": 2})["v"] == big
assert db.c.count_documents({}) == 2
print("ALL OK")
