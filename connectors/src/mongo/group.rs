//! Group commit on MongoDB: `create` chunks that wait for the store at the same time share one
//! transaction, each keeping its own ledger entry and event.
//!
//! A transaction costs the store a fixed price (its ledger look-up, ledger insert, commit and
//! snapshot) besides the documents, which small requests pay per handful of documents. So a
//! chunk joins a queue; whoever holds one of the `execute.write_concurrency` transaction slots
//! takes every chunk queued (up to [`GROUP_MAX_ITEMS`] items) and writes them together: one
//! ledger look-up for all, each chunk's items decided as if the chunks ran one after another
//! (the same `ItemWriter`; a key an earlier chunk of the group inserts exists for the later
//! ones), one `insertMany` per collection of every chunk's documents, one of the ledger
//! entries, one commit. The group is all or nothing and only for the plain case: a chunk
//! already in the ledger, meeting a key that exists in the store or holding an item the
//! server refuses aborts it, leaves it and runs alone, exactly as without grouping, while the
//! rest try again together; any other failure (a conflict, the commit) sends every chunk
//! alone (the ledger makes that safe even after a commit whose result was unknown). So a
//! group never changes what a chunk's items become.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use metrics::histogram;
use mongodb::bson::{doc, Bson, Document};
use mongodb::ClientSession;
use sluice_pipeline::contract::Op;
use sluice_pipeline::metrics::CHUNKS_PER_TRANSACTION;
use sluice_pipeline::request::Key;
use sluice_pipeline::store::{apply_items_with, ApplyError, ChunkCommit, WriteChunk};
use sluice_pipeline::StoreError;
use tokio::sync::{oneshot, Semaphore};

use super::ledger::{encode_event, ledger_id};
use super::{classify, writer, MongoStore};

/// Items one group transaction takes at most (unless its first chunk alone brings more).
pub const GROUP_MAX_ITEMS: usize = 1000;

/// Chunks one group transaction takes at most.
const GROUP_MAX_CHUNKS: usize = 64;

/// Item bytes (as received) one group transaction takes at most, unless its first chunk
/// alone brings more: far below what a transaction may hold on mongod.
const GROUP_MAX_BYTES: usize = 4 << 20;

/// Attempts of one group before what is left of it runs alone: each failed attempt that a
/// chunk caused sends that chunk alone and tries the rest again.
const GROUP_ATTEMPTS: usize = 3;

type Reply = oneshot::Sender<Result<ChunkCommit, StoreError>>;

/// The queue of chunks waiting for a transaction, the group transaction slots, and the
/// slots of chunks written alone.
pub(super) struct Groups {
    queue: Mutex<VecDeque<(Arc<WriteChunk>, Reply)>>,
    slots: Semaphore,
    alone: Semaphore,
    /// Chunks committed in a group transaction with at least one other chunk.
    grouped: AtomicU64,
}

impl Groups {
    /// `slots` group transactions at once, and as many chunk transactions of chunks written
    /// alone (`execute.write_concurrency` each).
    pub(super) fn new(slots: usize) -> Self {
        Groups {
            queue: Mutex::new(VecDeque::new()),
            slots: Semaphore::new(slots.max(1)),
            alone: Semaphore::new(slots.max(1)),
            grouped: AtomicU64::new(0),
        }
    }

    /// The chunks of the next group, oldest first.
    fn take(&self) -> Vec<(Arc<WriteChunk>, Reply)> {
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        let (mut items, mut bytes) = (0, 0);
        let mut group = Vec::new();
        while let Some((chunk, reply)) = queue.front() {
            if reply.is_closed() {
                // Its caller is gone (cancelled): nobody waits for it.
                queue.pop_front();
                continue;
            }
            let n = chunk.range.len();
            let b: usize = chunk.items().iter().map(|i| i.bytes).sum();
            if !group.is_empty()
                && (items + n > GROUP_MAX_ITEMS
                    || bytes + b > GROUP_MAX_BYTES
                    || group.len() >= GROUP_MAX_CHUNKS)
            {
                break;
            }
            items += n;
            bytes += b;
            group.extend(queue.pop_front());
        }
        group
    }
}

/// One collection's inserts in a group transaction: the documents, the chunk (its index in the
/// group) each came from, and their keys, which exist for the chunks after (as they would if
/// the chunks were written one by one).
#[derive(Default)]
struct Batch {
    docs: Vec<Document>,
    owners: Vec<usize>,
    keys: HashSet<Key>,
}

/// Whether `chunk` may share a transaction: a plain `create` (not atomic) of a claim with a
/// generation (string ledger keys), smaller than a group.
pub(super) fn groupable(chunk: &WriteChunk) -> bool {
    chunk.request.op == Op::Create
        && !chunk.request.options.atomic
        && chunk.generation != 0
        && chunk.range.len() < GROUP_MAX_ITEMS / 2
}

impl MongoStore {
    /// How many chunks were committed sharing a transaction with other chunks, since start.
    pub fn grouped_chunks(&self) -> u64 {
        self.groups.grouped.load(Ordering::Relaxed)
    }

    /// Writes `chunk` alone, in one of the `execute.write_concurrency` slots for that.
    pub(super) async fn write_alone(&self, chunk: &WriteChunk) -> Result<ChunkCommit, StoreError> {
        let _slot = self
            .groups
            .alone
            .acquire()
            .await
            .map_err(|e| StoreError::permanent("closed", e.to_string()))?;
        let written = self.write(chunk).await;
        if matches!(&written, Ok(c) if !c.replayed) {
            histogram!(CHUNKS_PER_TRANSACTION).record(1.0);
        }
        written
    }

    /// Writes `chunk` in a group transaction with the chunks waiting beside it.
    pub(super) async fn write_grouped(
        &self,
        chunk: Arc<WriteChunk>,
    ) -> Result<ChunkCommit, StoreError> {
        let (reply, mut answer) = oneshot::channel();
        self.groups
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back((chunk.clone(), reply));
        let got = loop {
            tokio::select! {
                biased;
                got = &mut answer => break got,
                permit = self.groups.slots.acquire() => {
                    let _permit = permit.map_err(|e| StoreError::permanent("closed", e.to_string()))?;
                    let group = self.groups.take();
                    if group.is_empty() {
                        // Another writer took this chunk: its answer comes.
                        drop(_permit);
                        break (&mut answer).await;
                    }
                    self.commit_group(group).await;
                }
            }
        };
        match got {
            Ok(result) => result,
            // The writer of its group was cancelled: write it alone (the ledger says whether
            // that group committed it).
            Err(_) => self.write_alone(&chunk).await,
        }
    }

    /// Writes `group` in one transaction and answers each chunk. A chunk that cannot be
    /// grouped (in the ledger already, an existing key, a refused item) leaves the group and
    /// runs alone, and the rest try again, [`GROUP_ATTEMPTS`] times at most; any other
    /// failure sends every chunk alone.
    async fn commit_group(&self, mut group: Vec<(Arc<WriteChunk>, Reply)>) {
        let mut alone = Vec::new();
        let mut attempts = 0;
        while group.len() > 1 && attempts < GROUP_ATTEMPTS {
            attempts += 1;
            let chunks: Vec<&WriteChunk> = group.iter().map(|(c, _)| c.as_ref()).collect();
            match self.try_group(&chunks).await {
                Ok(commits) => {
                    histogram!(CHUNKS_PER_TRANSACTION).record(group.len() as f64);
                    self.groups
                        .grouped
                        .fetch_add(group.len() as u64, Ordering::Relaxed);
                    for ((_, reply), commit) in group.drain(..).zip(commits) {
                        let _ = reply.send(Ok(commit));
                    }
                }
                Err((leave, e)) => {
                    tracing::debug!(chunks = group.len(), leaving = leave.len(), error = %e, "group transaction not committed");
                    if leave.is_empty() {
                        alone.append(&mut group);
                    }
                    for i in leave.into_iter().rev() {
                        alone.push(group.remove(i));
                    }
                }
            }
        }
        alone.append(&mut group);
        let alone = alone.into_iter().map(|(chunk, reply)| async move {
            let _ = reply.send(self.write_alone(&chunk).await);
        });
        futures::future::join_all(alone).await;
    }

    /// One transaction over `chunks`; on failure, the chunks (indexes, ascending) that must
    /// leave the group, or none when the failure is not theirs.
    async fn try_group(
        &self,
        chunks: &[&WriteChunk],
    ) -> Result<Vec<ChunkCommit>, (Vec<usize>, StoreError)> {
        let mut session = self.transaction().await.map_err(|e| (Vec::new(), e))?;
        let result = self.group_transaction(&mut session, chunks).await;
        if result.is_err() {
            let _ = session.abort_transaction().await;
        }
        result
    }

    async fn group_transaction(
        &self,
        session: &mut ClientSession,
        chunks: &[&WriteChunk],
    ) -> Result<Vec<ChunkCommit>, (Vec<usize>, StoreError)> {
        let whole = |e: StoreError| (Vec::new(), e);
        let ids: Vec<Bson> = chunks.iter().map(|c| ledger_id(c, None)).collect();
        let mut cursor = self
            .ledger()
            .find(doc! {"_id": {"$in": ids.clone()}})
            .projection(doc! {"_id": 1})
            .session(&mut *session)
            .await
            .map_err(|e| whole(classify(&e)))?;
        let mut seen = Vec::new();
        while let Some(d) = cursor.next(&mut *session).await {
            let d = d.map_err(|e| whole(classify(&e)))?;
            seen.extend(ids.iter().position(|id| Some(id) == d.get("_id")));
        }
        if !seen.is_empty() {
            seen.sort_unstable();
            return Err((
                seen,
                StoreError::transient("grouped_replay", "chunks in the ledger replay alone"),
            ));
        }
        let mut entries = Vec::with_capacity(chunks.len());
        let mut commits = Vec::with_capacity(chunks.len());
        // Every chunk's inserts, per collection: one `insertMany` each for the whole group.
        let mut inserts: BTreeMap<String, Batch> = BTreeMap::new();
        let none = BTreeMap::new();
        for (i, (chunk, id)) in chunks.iter().zip(ids).enumerate() {
            let mut w = writer::MongoWriter::new(&self.db, &mut *session, &self.keys, chunk, true)
                .await
                .map_err(whole)?;
            w.defer_inserts();
            if let Some(batch) = inserts.get(&chunk.target.collection) {
                w.also_existing(&batch.keys);
            }
            let applied = apply_items_with(chunk, &mut w, false, &none)
                .await
                .map_err(|e| match e {
                    ApplyError::Item(_, e) => (vec![i], e),
                    ApplyError::Chunk(e) => whole(e),
                })?;
            if applied.rollback {
                return Err((
                    vec![i],
                    StoreError::transient("grouped_rollback", "goes alone"),
                ));
            }
            if let Some(mine) = w.take_inserts() {
                let batch = inserts.entry(mine.collection).or_default();
                batch.owners.extend(std::iter::repeat_n(i, mine.docs.len()));
                batch.docs.extend(mine.docs);
                batch.keys.extend(mine.keys);
            }
            let json = encode_event(&applied.event).map_err(whole)?;
            entries.push(doc! {
                "_id": id,
                "event": json.clone(),
            });
            commits.push(ChunkCommit {
                event: applied.event,
                replayed: false,
                json: Some(json),
            });
        }
        for (collection, batch) in inserts {
            let written = self
                .db
                .collection::<Document>(&collection)
                .insert_many(batch.docs)
                .session(&mut *session)
                .await;
            if let Err(e) = written {
                // The chunk whose document met a key that exists in the store, or was refused,
                // leaves the group and runs alone, which decides its items exactly as without
                // the group. (`true`: what matters is the document the server names, not
                // whether its chunk had read its keys.)
                let failed = writer::insert_failed(&e, true);
                return Err(match failed.doc.and_then(|d| batch.owners.get(d)) {
                    Some(&i) => (vec![i], failed.error),
                    None => whole(failed.error),
                });
            }
        }
        self.ledger()
            .insert_many(entries)
            .session(&mut *session)
            .await
            .map_err(|e| whole(classify(&e)))?;
        Self::commit(session).await.map_err(whole)?;
        Ok(commits)
    }
}
