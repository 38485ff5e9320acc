//! Stage 3, stateful per request: cut a request into chunks that fit one transaction
//! (`chunk.max_items` items and `chunk.max_bytes` bytes). An `atomic` request is one chunk
//! (validate already rejected atomic requests too large for one).

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
