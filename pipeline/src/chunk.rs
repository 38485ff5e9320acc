//! Stage 2, per request: cut a request into chunks that fit one transaction
//! (`chunk.max_items` items and `chunk.max_bytes` bytes). An `atomic` request is one chunk
//! (validate already rejected atomic requests too large for one). The plan is stored with the
//! request's claim (dedupe, next): a re-read record reuses the stored plan, whatever the
//! chunk config is by then.

use std::ops::Range;

use sluice_config::ChunkConfig;

use crate::request::Request;
use crate::stage::{Outbox, Stage, StageError};
use crate::work::Work;

/// The chunk stage.
pub struct Chunk {
    config: ChunkConfig,
}

impl Chunk {
    /// A chunk stage with these limits.
    pub fn new(config: ChunkConfig) -> Self {
        Chunk { config }
    }

    /// The item ranges of `request`'s chunks, in order.
    pub fn plan(&self, request: &Request) -> Vec<Range<usize>> {
        let n = request.items.len();
        if request.options.atomic {
            #[allow(clippy::single_range_in_vec_init)] // one chunk holding every item, on purpose
            return vec![0..n];
        }
        let mut chunks = Vec::with_capacity(n / self.config.max_items + 1);
        let (mut start, mut bytes) = (0, 0usize);
        for (i, item) in request.items.iter().enumerate() {
            let full =
                i - start >= self.config.max_items || bytes + item.bytes > self.config.max_bytes;
            if i > start && full {
                chunks.push(start..i);
                start = i;
                bytes = 0;
            }
            bytes += item.bytes;
        }
        chunks.push(start..n);
        chunks
    }
}

impl Stage for Chunk {
    type In = Work;
    type Out = Work;
    const NAME: &'static str = "chunk";

    async fn process(&mut self, input: Work, out: &Outbox<Work>) -> Result<(), StageError> {
        match input {
            Work::Execute { meta, request, .. } => {
                let chunks = self.plan(&request);
                out.send(Work::Execute {
                    meta,
                    request,
                    chunks,
                })
                .await
            }
            other => out.send(other).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::Options;
    use crate::request::{Item, ItemBody};
    use crate::stage::{channel, run_stage};

    fn request(sizes: &[usize], atomic: bool) -> Request {
        let items = sizes
            .iter()
            .enumerate()
            .map(|(index, &bytes)| Item {
                index,
                key: None,
                body: ItemBody::Key,
                bytes,
                decided: None,
            })
            .collect();
        let options = Options {
            atomic,
            ..Options::default()
        };
        crate::testkit::key_request(items, options)
    }

    fn chunker(max_items: usize, max_bytes: usize) -> Chunk {
        Chunk::new(ChunkConfig {
            max_items,
            max_bytes,
            atomic_max_items: 1000,
        })
    }

    #[test]
    fn cuts_by_item_count_and_by_bytes() {
        assert_eq!(
            chunker(2, 1000).plan(&request(&[1; 5], false)),
            vec![0..2, 2..4, 4..5]
        );
        assert_eq!(
            chunker(10, 100).plan(&request(&[60, 30, 20, 100, 1], false)),
            vec![0..2, 2..3, 3..4, 4..5]
        );
        // An item as large as the byte limit still gets a chunk of its own.
        assert_eq!(
            chunker(10, 100).plan(&request(&[100, 100], false)),
            vec![0..1, 1..2]
        );
    }

    #[test]
    fn atomic_requests_are_one_chunk() {
        assert_eq!(chunker(2, 10).plan(&request(&[5; 7], true)).len(), 1);
    }

    #[tokio::test]
    async fn stage_fills_in_the_plan_and_passes_other_work_through() {
        let (tx, rx) = channel("chunk", 4);
        let (otx, mut orx) = channel("execute", 4);
        let h = tokio::spawn(run_stage(chunker(3, 1000), rx, otx));
        let meta = || crate::record::Meta {
            source: crate::SourceRef {
                topic: "t".into(),
                partition: 0,
                offset: 0,
            },
            key: None,
            resume_at: 0,
            start_at: 0,
            skip_progress: 0,
            skip_counts: None,
            received: std::time::Instant::now(),
            permit: None,
            generation: None,
        };
        tx.send(Work::Execute {
            meta: meta(),
            request: request(&[1; 7], false),
            chunks: vec![],
        })
        .await
        .unwrap();
        drop(tx);
        match orx.recv().await {
            Some(Work::Execute { chunks, .. }) => assert_eq!(chunks, vec![0..3, 3..6, 6..7]),
            other => panic!("{other:?}"),
        }
        assert!(orx.recv().await.is_none());
        h.await.unwrap().unwrap();
    }
}
