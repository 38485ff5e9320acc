#!/usr/bin/env python3
"""Store CPU per document on a MongoDB-wire server, for the write shapes sluice could use.

Measures the server process's own CPU (utime + stime from /proc, so run it on the server's
machine) per inserted document, with pymongo, for:
  - plain insertMany batches (no transaction), with an ObjectId _id plus a unique index on the
    key, or with _id = the key and no other index;
  - chunk transactions like sluice's (ledger read, insertMany, ledger insert, commit), one chunk
    per transaction or several chunks sharing one (group commit).

    scripts/secantus.sh start 27099
    .cache/secantus/venv/bin/python scripts/store_cost.py 27099 [DOCS] [drift]

Each case writes DOCS documents (20000) into a database of its own, dropped first. With
`drift`, only two cases run — plain insertMany of 500 and a group-commit-shaped transaction
(ledger read, one insertMany of 1000, ledger insert of 10, commit) — and each prints its
docs/s and store CPU per document in every tenth of the run: does the server's cost per
document grow as it holds more documents (and oplog)?
"""

import os
import sys
import time

from pymongo import MongoClient
from pymongo.read_concern import ReadConcern
from pymongo.write_concern import WriteConcern

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    port = sys.argv[1] if len(sys.argv) > 1 else "27099"
    docs = int(sys.argv[2]) if len(sys.argv) > 2 else 20000
    drift = len(sys.argv) > 3 and sys.argv[3] == "drift"
    pid = int(open(os.path.join(ROOT, f".cache/secantus/secantus-{port}.pid")).read())
    tick = os.sysconf("SC_CLK_TCK")

    def cpu():
        f = open(f"/proc/{pid}/stat").read().split(")")[-1].split()
        return (int(f[11]) + int(f[12])) / tick

    client = MongoClient(f"mongodb://127.0.0.1:{port}/?replicaSet=secantus")

    def run(name, chunk, per_txn, id_key, txn):
        db = client[f"cost_{name}"]
        client.drop_database(db.name)
        if id_key:
            db.create_collection("words")
        else:
            db.words.create_index("text", unique=True)
        db.ledger.insert_one({"_id": "x"})
        n, r, t0, c0 = 0, 0, time.time(), cpu()
        tenth = (0, t0, c0)
        while n < docs:
            groups = []
            for _ in range(per_txn):
                g = [{"text": f"{name}-{n + i}", "language": "en", "n": n + i} for i in range(chunk)]
                if id_key:
                    g = [{"_id": d["text"], **d} for d in g]
                groups.append(g)
                n += chunk
            if txn:
                ids = [f"{r}:{k}" for k in range(per_txn)]
                with client.start_session() as s:
                    s.start_transaction(read_concern=ReadConcern("snapshot"),
                                        write_concern=WriteConcern("majority"))
                    list(db.ledger.find({"_id": {"$in": ids}}, session=s))
                    if drift:
                        db.words.insert_many([d for g in groups for d in g], session=s)
                    else:
                        for g in groups:
                            db.words.insert_many(g, session=s)
                    db.ledger.insert_many([{"_id": i, "event": "x" * 300} for i in ids], session=s)
                    s.commit_transaction()
            else:
                for g in groups:
                    db.words.insert_many(g)
            r += 1
            if drift and n - tenth[0] >= docs // 10:
                now, c = time.time(), cpu()
                dn = n - tenth[0]
                print(f"  {name:30} docs {tenth[0]:>9}-{n:<9} {dn / (now - tenth[1]):8.0f} docs/s "
                      f"{(c - tenth[2]) / dn * 1e6:7.0f} us/doc store CPU", flush=True)
                tenth = (n, now, c)
        dt, dc = time.time() - t0, cpu() - c0
        print(f"{name:32} {docs / dt:8.0f} docs/s {dc / docs * 1e6:7.0f} us/doc store CPU")
        client.drop_database(db.name)

    cases = [
        ("plain500_objectid_unique", 500, 1, False, False),
        ("plain500_id_is_key", 500, 1, True, False),
        ("txn100_objectid_unique", 100, 1, False, True),
        ("txn100_id_is_key", 100, 1, True, True),
        ("txn10_id_is_key", 10, 1, True, True),
        ("txn10x10_id_is_key", 10, 10, True, True),
        ("txn100x5_id_is_key", 100, 5, True, True),
    ]
    if drift:
        cases = [("plain500_id_is_key", 500, 1, True, False),
                 ("txn100x10_id_is_key", 100, 10, True, True)]
    for case in cases:
        run(*case)


if __name__ == "__main__":
    main()
