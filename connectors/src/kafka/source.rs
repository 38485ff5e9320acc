//! The Kafka source: a consumer-group member reading the requests topic (read_committed).
//! The pipeline asks for a record only while its in-flight budget has room; when the budget
//! stays spent it pauses every assigned partition (librdkafka stops fetching them) and keeps
//! polling meanwhile, so the instance stays in its group and serves rebalances; it resumes
//! them when the budget drains. librdkafka's prefetch is bounded by `kafka.queued_max_kbytes`.
//! A gate ([`KafkaSource::gated`]) can hold every record back the same way — partitions
//! paused, polling on — while the service refuses to process (a SQLite store in a group of
//! several members).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use sluice_pipeline::contract::Counts;
use sluice_pipeline::metrics::KAFKA_CLIENT_ERRORS;
use sluice_pipeline::{RawRecord, Source, SourceError, SourceRef};

use super::position::{AtFloor, Floor};
use super::SluiceConsumer;

/// Reads records from the subscribed topic.
pub struct KafkaSource {
    consumer: Arc<SluiceConsumer>,
    /// Records that arrived while paused (fetched before the pause took effect), in order;
    /// at most what librdkafka had prefetched (`kafka.queued_max_kbytes` per partition).
    pending: VecDeque<RawRecord>,
    /// A fatal consumer error seen while paused, reported by the next `next`.
    fatal: Option<SourceError>,
    /// Timeout of each broker look-up (committed offset, partition end).
    timeout: Duration,
    /// While set, no record is handed out (see [`KafkaSource::gated`]).
    gate: Option<Arc<AtomicBool>>,
    /// Partitions whose first record came from below their committed offset, until a record
    /// reaches it ([`Floor`]); a few at most, looked up without building a key.
    floors: Vec<((String, i32), Floor)>,
}

impl KafkaSource {
    /// A source over an already subscribed consumer; `timeout` bounds broker look-ups.
    pub fn new(consumer: Arc<SluiceConsumer>, timeout: Duration) -> Self {
        KafkaSource {
            consumer,
            pending: VecDeque::new(),
            fatal: None,
            timeout,
            gate: None,
            floors: Vec::new(),
        }
    }

    /// Hands out no record while `gate` is set: the partitions stay paused and the consumer
    /// keeps polling (a live member, rebalances served); records already fetched wait.
    pub fn gated(mut self, gate: Arc<AtomicBool>) -> Self {
        self.gate = Some(gate);
        self
    }

    fn held(&self) -> bool {
        self.gate.as_ref().is_some_and(|g| g.load(Ordering::SeqCst))
    }

    /// Waits while the gate is set, polling (bounded: the partitions are paused, so only what
    /// librdkafka had prefetched arrives).
    async fn wait_gate(&mut self) -> Result<(), SourceError> {
        if !self.held() {
            return Ok(());
        }
        self.pause_all(true);
        while self.held() {
            if self.fatal.is_some() {
                break;
            }
            // The poll is abandoned after a while to look at the gate again (recv is
            // cancel-safe: no message is lost).
            if let Ok(polled) = tokio::time::timeout(Duration::from_millis(200), self.poll()).await
            {
                match polled {
                    Ok(r) => self.pending.extend(r),
                    Err(e) => self.fatal = Some(e),
                }
            }
        }
        self.pause_all(false);
        match self.fatal.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Where `record` stands against its partition's committed offset: the progress events
    /// of it already committed (and their item counts, when the position holds them), or
    /// `None` when it lies below the committed offset and must be passed over ([`Floor`]).
    /// The committed offset is read for the first record of a freshly assigned partition.
    async fn already_published(
        &mut self,
        record: &RawRecord,
    ) -> Result<Option<(usize, Option<Counts>)>, SourceError> {
        let s = &record.source;
        let fresh = self.consumer.context().take_fresh(&s.topic, s.partition);
        if !fresh && self.floors.is_empty() {
            // Every record but a partition's first, almost always: no look-up.
            return Ok(Some((0, None)));
        }
        let held = |floors: &[((String, i32), Floor)]| {
            floors
                .iter()
                .position(|((t, p), _)| *p == s.partition && *t == s.topic)
        };
        if fresh {
            if let Some(i) = held(&self.floors) {
                self.floors.swap_remove(i);
            }
            if let Some(floor) = self.floor(record).await? {
                self.floors.push(((s.topic.clone(), s.partition), floor));
            }
        }
        let Some(i) = held(&self.floors) else {
            return Ok(Some((0, None)));
        };
        Ok(match self.floors[i].1.place(s.offset) {
            AtFloor::Committed => None,
            AtFloor::At(n, counts) => {
                self.floors.swap_remove(i);
                Some((n, counts))
            }
            AtFloor::Past => {
                self.floors.swap_remove(i);
                Some((0, None))
            }
        })
    }

    /// The floor a freshly assigned partition's records are placed against: its committed
    /// offset, warned about when `record` (its first) lies below it. `None` when nothing is
    /// committed, or when the partition ends before the committed offset: then nothing is
    /// passed over.
    async fn floor(&self, record: &RawRecord) -> Result<Option<Floor>, SourceError> {
        let s = &record.source;
        let Some(floor) = self.committed(record).await? else {
            return Ok(None);
        };
        if s.offset >= floor.committed {
            return Ok(Some(floor));
        }
        metrics::counter!(KAFKA_CLIENT_ERRORS, "level" => "warning").increment(1);
        let end = self.end(record).await?;
        if end < floor.committed {
            // Nothing at or past the committed offset exists: the log lost what was committed
            // (an unclean leader election). Passing over would skip every record written
            // since, up to an offset the log may never reach again: loss. Processing them
            // instead runs again those below the truncation that had run (their events
            // published twice): Kafka lost the record of what was done, and duplicates are the
            // lesser harm. (Had the log grown back past the committed offset before this
            // look-up, the records written since the truncation would still be passed over.)
            tracing::warn!(
                topic = %s.topic,
                partition = s.partition,
                offset = s.offset,
                committed = floor.committed,
                end,
                "a partition's committed offset lies beyond its end (its log was truncated); its \
                 records are processed from where the consumer reset it, and those that had run \
                 before run again"
            );
            return Ok(None);
        }
        tracing::warn!(
            topic = %s.topic,
            partition = s.partition,
            offset = s.offset,
            committed = floor.committed,
            "a partition was handed out from below its committed offset (the consumer reset it); \
             the records below it were processed already and are passed over"
        );
        Ok(Some(floor))
    }

    /// The committed offset of `record`'s partition, with its metadata; `None` when none is
    /// committed.
    async fn committed(&self, record: &RawRecord) -> Result<Option<Floor>, SourceError> {
        let s = &record.source;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&s.topic, s.partition);
        let timeout = self.timeout;
        let committed = self
            .look_up(record, "committed offset", move |c| {
                c.committed_offsets(tpl.clone(), timeout)
            })
            .await?;
        Ok(committed
            .find_partition(&s.topic, s.partition)
            .and_then(|e| match e.offset() {
                Offset::Offset(committed) => Some(Floor {
                    committed,
                    published: super::sink::published_in(e.metadata()),
                }),
                _ => None,
            }))
    }

    /// The end of `record`'s partition for this reader: its last stable offset (the high
    /// watermark unless a transaction writing to it is open).
    async fn end(&self, record: &RawRecord) -> Result<i64, SourceError> {
        let (topic, partition, timeout) = (
            record.source.topic.clone(),
            record.source.partition,
            self.timeout,
        );
        let (_, end) = self
            .look_up(record, "end offset", move |c| {
                c.fetch_watermarks(&topic, partition, timeout)
            })
            .await?;
        Ok(end)
    }

    /// Runs the blocking broker look-up `f` for `record`'s partition, retried three times:
    /// the caller decides whether records run again, and must never guess.
    async fn look_up<T: Send + 'static>(
        &self,
        record: &RawRecord,
        what: &str,
        f: impl Fn(&SluiceConsumer) -> Result<T, KafkaError> + Send + Sync + 'static,
    ) -> Result<T, SourceError> {
        let f = Arc::new(f);
        let mut attempt = 0;
        loop {
            let (c, f) = (self.consumer.clone(), f.clone());
            let result = tokio::task::spawn_blocking(move || f(&c))
                .await
                .map_err(|e| SourceError(e.to_string()))?;
            match result {
                Ok(v) => return Ok(v),
                Err(e) if attempt >= 3 => {
                    let s = &record.source;
                    return Err(SourceError(format!(
                        "reading the {what} of {}/{}: {e}",
                        s.topic, s.partition
                    )));
                }
                Err(e) => {
                    attempt += 1;
                    tracing::warn!(
                        error = %e,
                        attempt,
                        "reading a partition's {what} failed; retrying"
                    );
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
            }
        }
    }

    /// Drops held records of partitions revoked since the last call: whoever owns them now
    /// (maybe this member again) reads them from the committed offset. Revocations happen
    /// inside a poll, which `idle` may abandon midway, so this runs both after every poll and
    /// before a held record is handed out; every held record is older than every revocation
    /// not yet taken.
    fn drop_revoked(&mut self) {
        let revoked = self.consumer.context().take_revocations();
        if !revoked.is_empty() {
            self.pending.retain(|r| {
                !revoked
                    .iter()
                    .any(|(t, p)| *t == r.source.topic && *p == r.source.partition)
            });
        }
    }

    /// One poll: a record, or `None` after a (counted, logged) non-fatal error.
    async fn poll(&mut self) -> Result<Option<RawRecord>, SourceError> {
        let polled = self.consumer.recv().await.map(|m| raw(&m));
        self.drop_revoked();
        match polled {
            Ok(r) => Ok(Some(r)),
            Err(e) => {
                // Broker trouble is retried inside librdkafka; keep polling (and count it).
                metrics::counter!(sluice_pipeline::metrics::PIPELINE_ERRORS, "component" => "kafka_consumer")
                    .increment(1);
                if sluice_pipeline::logs::allow() {
                    tracing::warn!(error = %e, "consumer error");
                }
                if matches!(e, KafkaError::MessageConsumptionFatal(_)) {
                    return Err(SourceError(e.to_string()));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                Ok(None)
            }
        }
    }

    fn pause_all(&self, pause: bool) {
        // First: partitions assigned from now on are paused as they arrive.
        self.consumer.context().set_paused(pause);
        let assigned = match self.consumer.assignment() {
            Ok(tpl) => tpl,
            Err(e) => {
                tracing::warn!(error = %e, "reading the assignment failed");
                return;
            }
        };
        let result = if pause {
            self.consumer.pause(&assigned)
        } else {
            self.consumer.resume(&assigned)
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, pause, "pausing/resuming partitions failed");
        } else {
            tracing::debug!(
                partitions = assigned.count(),
                pause,
                "partitions paused/resumed"
            );
        }
    }
}

fn raw(m: &BorrowedMessage<'_>) -> RawRecord {
    RawRecord {
        source: SourceRef {
            topic: m.topic().to_string(),
            partition: m.partition(),
            offset: m.offset(),
        },
        key: m
            .key()
            .and_then(|k| std::str::from_utf8(k).ok())
            .map(str::to_owned),
        payload: Bytes::copy_from_slice(m.payload().unwrap_or_default()),
        truncated: false,
        resume_at: (m.offset() + 1) as u64,
        start_at: m.offset() as u64,
        skip_progress: 0,
        skip_counts: None,
        received: Instant::now(),
        permit: None,
    }
}

#[async_trait]
impl Source for KafkaSource {
    async fn next(&mut self) -> Result<Option<RawRecord>, SourceError> {
        if let Some(e) = self.fatal.take() {
            return Err(e);
        }
        let record = loop {
            self.wait_gate().await?;
            self.drop_revoked();
            let mut r = if let Some(r) = self.pending.pop_front() {
                r
            } else {
                let Some(r) = self.poll().await? else {
                    continue;
                };
                if self.held() {
                    // The gate closed while this poll waited: the record waits too.
                    self.pending.push_back(r);
                    continue;
                }
                r
            };
            // Below its partition's committed offset: processed already, passed over.
            if let Some((skip, counts)) = self.already_published(&r).await? {
                (r.skip_progress, r.skip_counts) = (skip, counts);
                break r;
            }
        };
        let s = &record.source;
        self.consumer
            .context()
            .record_read(&s.topic, s.partition, record.resume_at as i64);
        Ok(Some(record))
    }

    fn pause(&mut self) {
        self.pause_all(true);
    }

    fn resume(&mut self) {
        self.pause_all(false);
    }

    async fn idle(&mut self) {
        if self.fatal.is_some() {
            return std::future::pending().await;
        }
        // Keep polling: the group sees a live member and rebalances are served.
        match self.poll().await {
            Ok(r) => self.pending.extend(r),
            Err(e) => self.fatal = Some(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rdkafka::config::ClientConfig;

    use super::*;
    use crate::kafka::SluiceContext;

    fn record(partition: i32, offset: i64) -> RawRecord {
        RawRecord {
            source: SourceRef {
                topic: "requests".into(),
                partition,
                offset,
            },
            key: None,
            payload: Bytes::from_static(b"{}"),
            truncated: false,
            resume_at: (offset + 1) as u64,
            start_at: offset as u64,
            skip_progress: 0,
            skip_counts: None,
            received: Instant::now(),
            permit: None,
        }
    }

    /// A source whose consumer never reaches a broker: `next` can only hand out held records.
    fn source(held: Vec<RawRecord>) -> KafkaSource {
        let consumer: SluiceConsumer = ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:1")
            .set("group.id", "unit")
            .create_with_context(SluiceContext::new(Duration::from_secs(1)))
            .unwrap();
        let mut s = KafkaSource::new(Arc::new(consumer), Duration::from_secs(1));
        s.pending.extend(held);
        s
    }

    #[tokio::test]
    async fn held_records_of_a_partition_revoked_in_an_abandoned_poll_are_never_handed_out() {
        // Records 0/5, 1/7, 0/6 were fetched while paused; then a poll (abandoned when the
        // budget freed, before it returned) served the revocation of partition 0.
        let mut s = source(vec![record(0, 5), record(1, 7), record(0, 6)]);
        s.consumer.context().note_revocation("requests", 0);
        let next = s.next().await.unwrap().unwrap();
        assert_eq!((next.source.partition, next.source.offset), (1, 7));
        assert!(
            s.pending.is_empty(),
            "partition 0's held records are dropped"
        );
        // The partition is assigned again later: its new records are not dropped.
        s.pending.push_back(record(0, 5));
        let next = s.next().await.unwrap().unwrap();
        assert_eq!((next.source.partition, next.source.offset), (0, 5));
    }
}
