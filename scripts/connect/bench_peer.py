"""Helper of scripts/bench-peer.sh; runs on SecantusDB's venv python (it needs pymongo).

  gen DIR DOCS ITEMS PARTS   input of both sides: DIR/peer.tsv (key TAB value, one record per
                             document), DIR/requests.jsonl (create requests of ITEMS items) and
                             DIR/peer-checkpoints.json (which keys land in which partition)
  watch SIDE ...             poll one trial until it is done; write its samples and summary
  verify SIDE ...            check one trial's documents (and, for sluice, ledger and events)
  report RESULTS.jsonl       per-trial table, medians and the ratios sluice/peer

Nothing here counts documents while a trial is timed: on SecantusDB a count scans the whole
collection (seconds at 200k documents). The peer's progress is read with point look-ups of
_id (see `watch`), sluice's from its result events.
"""
import json
import os
import statistics
import sys
import time

from pymongo import MongoClient

TICK = os.sysconf("SC_CLK_TCK")


def murmur2(data: bytes) -> int:
    """Kafka's Utils.murmur2: the default partitioner's hash of a record key."""
    m, mask = 0x5BD1E995, 0xFFFFFFFF
    h = (0x9747B28C ^ len(data)) & mask
    n4 = len(data) // 4
    for i in range(n4):
        k = (int.from_bytes(data[4 * i:4 * i + 4], "little") * m) & mask
        k = ((k ^ (k >> 24)) * m) & mask
        h = ((h * m) & mask) ^ k
    tail = data[4 * n4:]
    if len(tail) == 3:
        h ^= tail[2] << 16
    if len(tail) >= 2:
        h ^= tail[1] << 8
    if tail:
        h = ((h ^ tail[0]) * m) & mask
    h = ((h ^ (h >> 13)) * m) & mask
    return h ^ (h >> 15)


def compact(obj) -> str:
    return json.dumps(obj, separators=(",", ":"))


def gen(d, docs, items, parts):
    docs, items, parts = int(docs), int(items), int(parts)
    text = [f"word{i:07d}" for i in range(docs)]
    keys_of = [[] for _ in range(parts)]
    with open(f"{d}/peer.tsv", "w") as f:
        for i, t in enumerate(text):
            key = compact({"_id": t})
            f.write(f"{key}\t{compact({'text': t, 'language': 'en', 'n': i})}\n")
            keys_of[(murmur2(key.encode()) & 0x7FFFFFFF) % parts].append(t)
    with open(f"{d}/requests.jsonl", "w") as f:
        for r in range(0, docs, items):
            f.write(compact({"request_id": f"w1-{r // items:06d}", "collection": "words",
                             "op": "create",
                             "items": [{"text": text[i], "language": "en", "n": i}
                                       for i in range(r, min(r + items, docs))]}) + "\n")
    # ~50 checkpoints per partition (the last key included): [documents of the partition
    # written once this key is there, key].
    cps = []
    for keys in keys_of:
        step = max(1, len(keys) // 50)
        idx = list(range(step - 1, len(keys), step))
        if keys and idx[-1] != len(keys) - 1:
            idx.append(len(keys) - 1)
        cps.append([[i + 1, keys[i]] for i in idx])
    with open(f"{d}/peer-checkpoints.json", "w") as f:
        json.dump({"partitions": [len(k) for k in keys_of], "checkpoints": cps}, f)
    print(" ".join(str(len(k)) for k in keys_of))


def cpu_s(pid, children=False):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    t = int(f[11]) + int(f[12]) + ((int(f[13]) + int(f[14])) if children else 0)
    return t / TICK


def status_mib(pid, field):
    """A memory line of /proc/PID/status (VmHWM: peak, VmRSS: now) in MiB; None when the
    process has none (it is exiting)."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return None


def hwm_mib(pid):
    return status_mib(pid, "VmHWM") or 0.0


class PeerProgress:
    """The sink writes each partition in order, so the documents of a partition that are in
    MongoDB are a prefix of what was produced to it: a partition is at checkpoint k once the
    k-th checkpoint's _id is found (one indexed look-up each; ~6 per poll)."""

    def __init__(self, coll, path):
        self.coll = coll
        self.cps = json.load(open(path))["checkpoints"]
        self.at = [0] * len(self.cps)

    def poll(self):
        for p, cps in enumerate(self.cps):
            while self.at[p] < len(cps) and self.coll.find_one({"_id": cps[self.at[p]][1]}, {"_id": 1}):
                self.at[p] += 1
        docs = sum(cps[a - 1][0] for cps, a in zip(self.cps, self.at) if a)
        return docs, all(a == len(c) for c, a in zip(self.cps, self.at))


class SluiceProgress:
    """Reads the events that `sluice tail` (read_committed) appends: ok items of progress
    events, done once every request has its terminal event."""

    def __init__(self, path, requests):
        self.f, self.buf, self.requests = open(path, "rb"), b"", requests
        self.docs = self.terminal = 0

    def poll(self):
        self.buf += self.f.read()
        *lines, self.buf = self.buf.split(b"\n")
        for line in lines:
            ev = json.loads(line)
            if ev.get("event") == "progress":
                self.docs += sum(1 for it in ev["items"] if it["status"] == "ok")
            else:
                self.terminal += 1
        return self.docs, self.terminal >= self.requests


def tenths(samples, docs):
    """docs/s, store CPU µs/doc and the process's mean RSS over the first and the last tenth
    of the documents, counted from the first sample that saw a document (start-up excluded)."""
    live = [s for s in samples if s[1] > 0]
    if len(live) < 3:
        return {}
    a = live[0]
    b = next(s for s in live if s[1] >= docs / 10)
    c = next(s for s in live if s[1] >= docs * 9 / 10)
    z = live[-1]
    out = {}
    for name, (s0, s1) in (("first", (a, b)), ("last", (c, z))):
        dd, dt = s1[1] - s0[1], s1[0] - s0[0]
        if dd > 0 and dt > 0:
            out[f"{name}_tenth_docs_s"] = dd / dt
            out[f"{name}_tenth_store_us_doc"] = (s1[3] - s0[3]) / dd * 1e6
            rss = [s[4] for s in live if s0[0] <= s[0] <= s1[0] and s[4] is not None]
            if rss:
                out[f"{name}_tenth_rss_mib"] = sum(rss) / len(rss)
    return out


def watch(side, uri, db, own, store, t0, store0, docs, requests, events, cps, timeout, out):
    own, store, t0, store0 = int(own), int(store), float(t0), float(store0)
    docs, requests, timeout = int(docs), int(requests), float(timeout)
    client = MongoClient(uri, serverSelectionTimeoutMS=5000)
    progress = (PeerProgress(client[db]["words"], cps) if side == "peer"
                else SluiceProgress(events, requests))
    samples, java = [], side == "peer"
    while True:
        n, done = progress.poll()
        now = time.time() - t0
        try:
            samples.append((now, n, cpu_s(own, java), cpu_s(store) - store0,
                            status_mib(own, "VmRSS")))
        except FileNotFoundError:
            sys.exit(f"watch: the {side} process or the store exited before the trial was done")
        if done:
            break
        if now > timeout:
            sys.exit(f"watch: {side} not done after {timeout:.0f}s ({n} of {docs} documents)")
        time.sleep(0.25)
    with open(f"{out}.samples.tsv", "w") as f:
        f.write("t_s\tdocs\town_cpu_s\tstore_cpu_s\town_rss_mib\n")
        f.writelines("\t".join("-" if v is None else f"{v:.3f}" for v in s) + "\n" for s in samples)
    t, _, own_cpu, store_cpu, _ = samples[-1]
    # The first sample that saw a document: what came before is start-up (JVM, group join).
    first = next(s for s in samples if s[1] > 0)
    summary = {"side": side, "elapsed_s": t, "docs_s": docs / t, "first_doc_s": first[0],
               "docs_s_after_first": (docs - first[1]) / (t - first[0]) if t > first[0] else None,
               "own_cpu_s": own_cpu, "own_cpu_after_first_s": own_cpu - first[2],
               "own_rss_mib": hwm_mib(own), "store_cpu_s": store_cpu,
               "store_us_doc": store_cpu / docs * 1e6, **tenths(samples, docs)}
    json.dump(summary, open(f"{out}.summary.json", "w"))


def verify(side, uri, db, docs, requests, events):
    docs, requests = int(docs), int(requests)
    client = MongoClient(uri, serverSelectionTimeoutMS=5000)
    coll, errors = client[db]["words"], []
    # The server's statement counters, before this check adds its own: what the trial asked
    # of the store (the peer side's also include the watcher's look-ups of its checkpoints).
    out = {"store_ops": client.admin.command("serverStatus").get("opcounters", {})}
    t = time.time()
    n = coll.count_documents({})
    out.update(documents=n, count_s=round(time.time() - t, 1))
    if n != docs:
        errors.append(f"{n} documents, expected {docs}")
    last = f"word{docs - 1:07d}"
    # Both sides key documents by _id = text (the peer through ProvidedInKeyStrategy, sluice's
    # MongoDB store always): no duplicate can exist.
    sample = coll.find_one({"_id": last}) or {}
    if sample.get("text") != last or sample.get("n") != docs - 1 or sample.get("language") != "en":
        errors.append(f"unexpected last document {sample}")
    if sample.get("_id") != sample.get("text"):
        errors.append("_id is not the text")
    out["unique_by"] = "_id"
    if side != "peer":
        out["ledger_entries"] = client[db]["sluice_ledger"].count_documents({})
        out["ledger_id_example"] = repr((client[db]["sluice_ledger"].find_one() or {}).get("_id"))[:80]
        kinds, ok = {}, 0
        for line in open(events, "rb"):
            ev = json.loads(line)
            kinds[ev["event"]] = kinds.get(ev["event"], 0) + 1
            if ev["event"] == "completed":
                ok += ev["counts"]["ok"]
        out.update(events=kinds, completed_ok_items=ok)
        if kinds.get("completed") != requests or ok != docs or len(kinds) != 2:
            errors.append(f"events {kinds}, {ok} ok items; expected {requests} completed, {docs} ok")
        if out["ledger_entries"] < requests:
            errors.append(f"{out['ledger_entries']} ledger entries < {requests} requests")
    print(json.dumps(out))
    if errors:
        sys.exit("verify: " + "; ".join(errors))


def report(path):
    rows = [json.loads(line) for line in open(path)]
    cols = [("docs/s", "docs_s", "{:,.0f}"), ("docs/s from 1st doc", "docs_s_after_first", "{:,.0f}"),
            ("own CPU s", "own_cpu_s", "{:.1f}"), ("own CPU s from 1st doc", "own_cpu_after_first_s", "{:.1f}"),
            ("peak RSS MiB", "own_rss_mib", "{:.0f}"),
            ("store CPU s", "store_cpu_s", "{:.1f}"), ("store µs/doc", "store_us_doc", "{:.0f}"),
            ("1st tenth docs/s", "first_tenth_docs_s", "{:,.0f}"),
            ("last tenth docs/s", "last_tenth_docs_s", "{:,.0f}"),
            ("store µs/doc 1st/last tenth", "store_us_doc", None),
            ("RSS MiB 1st/last tenth", "rss_mib", None)]

    def cell(r, key, fmt):
        if fmt is None:  # a first/last tenth pair
            a, b = r.get(f"first_tenth_{key}"), r.get(f"last_tenth_{key}")
            return f"{a:.0f} / {b:.0f}" if a and b else "-"
        return fmt.format(r[key]) if r.get(key) is not None else "-"

    print("| trial | side | " + " | ".join(c[0] for c in cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    for r in rows:
        print(f"| {r['trial']} | {r['side']} | " + " | ".join(cell(r, k, f) for _, k, f in cols) + " |")
    single = [c for c in cols if c[2] is not None]
    blank = " |" * (len(cols) - len(single) + 1)  # closes the last cell, then empty pair cells
    med = {}
    sides = [side for side in ("peer", "sluice") if any(r["side"] == side for r in rows)]
    for side in sides:
        mine = [r for r in rows if r["side"] == side]
        med[side] = {k: statistics.median(r[k] for r in mine if r.get(k) is not None)
                     for _, k, _ in single if any(r.get(k) is not None for r in mine)}
        print(f"| median | {side} | " + " | ".join(cell(med[side], k, f) for _, k, f in single) + blank)
    if len(sides) == 2:  # SIDES=sluice (the soak) has no peer to compare with
        ratio = {k: med["sluice"][k] / med["peer"][k] for k in med["sluice"] if med["peer"].get(k)}
        print("| ratio | sluice/peer | " + " | ".join(f"{ratio[k]:.2f}×" if k in ratio else "-"
                                                    for _, k, _ in single) + blank)


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {"gen": gen, "watch": watch, "verify": verify, "report": report}[cmd](*args)
