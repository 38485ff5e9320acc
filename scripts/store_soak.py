#!/usr/bin/env python3
"""Does a MongoDB-wire server's CPU per document grow over a long sluice-shaped write load?

Emulates sluice's MongoDB store writes with pymongo, without sluice: THREADS concurrent group
transactions (ledger read by `_id $in`, one insertMany of 1000 documents keyed by `_id`, an
insertMany of 10 ledger entries holding ~3 KB events, commit; retried on transient errors).
FEATURES (comma-separated) adds `ttl` — the TTL indexes sluice keeps on the ledger and the
request claims (`expires_at`) — and `claims` — an unordered insertMany of 10 claims beside
each transaction. Prints docs/s and the server's CPU per document (utime + stime from /proc,
so run it on the server's machine) in every tenth of the run.

    scripts/secantus.sh start 27099
    .cache/secantus/venv/bin/python scripts/store_soak.py 27099 700000 4 ttl

Measured 2026-12-02 (BENCHMARKS.md, "One insertMany per group, and the soak again").
"""

import datetime
import os
import sys
import threading
import time

from pymongo import MongoClient
from pymongo.errors import PyMongoError
from pymongo.read_concern import ReadConcern
from pymongo.write_concern import WriteConcern

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    port, docs, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    features = set(sys.argv[4].split(",")) if len(sys.argv) > 4 else set()
    pid = int(open(os.path.join(ROOT, f".cache/secantus/secantus-{port}.pid")).read())
    tick = os.sysconf("SC_CLK_TCK")

    def cpu():
        f = open(f"/proc/{pid}/stat").read().split(")")[-1].split()
        return (int(f[11]) + int(f[12])) / tick

    client = MongoClient(f"mongodb://127.0.0.1:{port}/?replicaSet=secantus", maxPoolSize=20)
    client.drop_database("soak")
    db = client["soak"]
    db.create_collection("words")
    db.create_collection("ledger")
    db.create_collection("requests")
    if "ttl" in features:
        db.ledger.create_index("expires_at", expireAfterSeconds=0)
        db.requests.create_index("expires_at", expireAfterSeconds=0)
    far = datetime.datetime(2030, 1, 1)
    lock = threading.Lock()
    state = {"next": 0, "round": 0, "done": 0, "retries": 0}

    def worker():
        while True:
            with lock:
                if state["next"] >= docs:
                    return
                n, r = state["next"], state["round"]
                state["next"] += 1000
                state["round"] += 1
            expires = far + datetime.timedelta(seconds=r)
            if "claims" in features:
                claims = [{"_id": f"req-{r}-{j}", "offset": r * 10 + j, "expires_at": expires,
                           "plan": [0, 100]} for j in range(10)]
                db.requests.insert_many(claims, ordered=False)
            words = [{"_id": f"w{n + i}", "text": f"w{n + i}", "language": "en", "n": n + i}
                     for i in range(1000)]
            ids = [f"1:{r}:{j}" for j in range(10)]
            while True:
                try:
                    with client.start_session() as s:
                        s.start_transaction(read_concern=ReadConcern("snapshot"),
                                            write_concern=WriteConcern("majority"))
                        list(db.ledger.find({"_id": {"$in": ids}}, {"_id": 1}, session=s))
                        db.words.insert_many(words, session=s)
                        db.ledger.insert_many([{"_id": i, "event": "x" * 3000, "expires_at": expires}
                                               for i in ids], session=s)
                        s.commit_transaction()
                    break
                except PyMongoError as e:
                    if not e.has_error_label("TransientTransactionError"):
                        raise
                    with lock:
                        state["retries"] += 1
            with lock:
                state["done"] += 1000

    workers = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    t0, c0 = time.time(), cpu()
    mark = (0, t0, c0)
    for w in workers:
        w.start()
    while any(w.is_alive() for w in workers):
        time.sleep(1)
        done = state["done"]
        if done - mark[0] >= docs // 10 or (done >= docs and done > mark[0]):
            now, c = time.time(), cpu()
            dn = done - mark[0]
            print(f"docs {mark[0]:>8}-{done:<8} {dn / (now - mark[1]):7.0f} docs/s "
                  f"{(c - mark[2]) / dn * 1e6:6.0f} us/doc store CPU "
                  f"({state['retries']} retries)", flush=True)
            mark = (done, now, c)
    print(f"all: {docs / (time.time() - t0):.0f} docs/s, {(cpu() - c0) / docs * 1e6:.0f} us/doc "
          f"store CPU, features {sorted(features) or 'none'}, {threads} threads")
    client.drop_database("soak")


if __name__ == "__main__":
    main()
