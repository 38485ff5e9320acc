//! Result events and dead letters as JSON lines. A commit flushes (and optionally fsyncs) the
//! files and then records the checkpoint; a restart cuts the files back to the recorded lengths.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::PathBuf;

use async_trait::async_trait;
use sluice_pipeline::contract::{Counts, DeadLetter, ResultEvent};
use sluice_pipeline::metrics::STORE_ERRORS;
use sluice_pipeline::{Sink, SinkError, SourceRef, StoreErrorKind};

use super::{Checkpoint, EmbeddedIo, OpenError, Position};

/// Where lines go.
pub enum Output {
    /// A file we can cut back on restart (exactly-once).
    File {
        /// The file's path (for messages).
        path: PathBuf,
        /// Buffered writer.
        writer: BufWriter<File>,
    },
    /// A stream that cannot be cut back (stdout/stderr): after a crash, the events since the
    /// last commit are written again (at-least-once).
    Stream(Box<dyn Write + Send>),
}

impl Output {
    fn open(
        path: Option<&PathBuf>,
        fallback: fn() -> Box<dyn Write + Send>,
    ) -> Result<Self, OpenError> {
        Ok(match path {
            None => Output::Stream(fallback()),
            Some(p) => {
                let file = OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .read(true)
                    .write(true)
                    .open(p)
                    .map_err(|source| OpenError::Io {
                        path: p.display().to_string(),
                        source,
                    })?;
                Output::File {
                    path: p.clone(),
                    writer: BufWriter::with_capacity(1 << 16, file),
                }
            }
        })
    }

    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Output::File { writer, .. } => writer,
            Output::Stream(w) => w,
        }
    }

    /// Cuts a file back to `len` and positions writes there.
    fn cut(&mut self, len: u64, what: &str) -> Result<(), OpenError> {
        let Output::File { path, writer } = self else {
            return Ok(());
        };
        let io = |source| OpenError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = writer.get_mut();
        let actual = file.metadata().map_err(io)?.len();
        if actual < len {
            return Err(OpenError::Inconsistent(format!(
                "{what} {} is {actual} bytes but the state database recorded {len}: it was changed \
                 outside sluice. Restore it, or start over with a new --state database.",
                path.display()
            )));
        }
        file.set_len(len).map_err(io)?;
        file.seek(SeekFrom::Start(len)).map_err(io)?;
        Ok(())
    }

    /// The length of the file up to its last newline (0 for a stream).
    fn whole_lines(&mut self) -> Result<u64, OpenError> {
        use std::io::Read;
        let Output::File { path, writer } = self else {
            return Ok(0);
        };
        let io = |source| OpenError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = writer.get_mut();
        let len = file.metadata().map_err(io)?.len();
        // Back from the end in blocks until a newline (or the start) is found.
        let mut end = len;
        let mut buf = vec![0u8; 4096];
        while end > 0 {
            let start = end.saturating_sub(buf.len() as u64);
            let n = (end - start) as usize;
            file.seek(SeekFrom::Start(start)).map_err(io)?;
            file.read_exact(&mut buf[..n]).map_err(io)?;
            if let Some(i) = buf[..n].iter().rposition(|&b| b == b'\n') {
                return Ok(start + i as u64 + 1);
            }
            end = start;
        }
        Ok(0)
    }

    fn flush(&mut self, fsync: bool) -> std::io::Result<()> {
        match self {
            Output::File { writer, .. } => {
                writer.flush()?;
                if fsync {
                    writer.get_ref().sync_data()?;
                }
                Ok(())
            }
            Output::Stream(w) => w.flush(),
        }
    }
}

/// The embedded sink.
pub struct FileSink {
    output: Output,
    dead_letters: Output,
    checkpoint: Option<Checkpoint>,
    fsync: bool,
    /// Bytes written so far (including events of records not yet done).
    written: u64,
    dead_letter_written: u64,
    /// The position after the last record marked done.
    done: Position,
    line: Vec<u8>,
}

impl FileSink {
    /// Opens the output files (created if missing; cut back later by [`FileSink::restore`]).
    pub fn open(io: &EmbeddedIo, _output_id: &str) -> Result<Self, OpenError> {
        let dlq_path = io.dead_letters.clone().or_else(|| {
            io.output.as_ref().map(|o| {
                let mut p = o.clone().into_os_string();
                p.push(".dlq");
                PathBuf::from(p)
            })
        });
        Ok(FileSink {
            output: Output::open(io.output.as_ref(), || Box::new(std::io::stdout()))?,
            dead_letters: Output::open(dlq_path.as_ref(), || Box::new(std::io::stderr()))?,
            checkpoint: None,
            fsync: io.fsync,
            written: 0,
            dead_letter_written: 0,
            done: Position::default(),
            line: Vec::with_capacity(1024),
        })
    }

    /// Where an input that cannot resume (stdin) starts: after what the outputs already hold,
    /// a half-written last line (a crash of the previous run) cut off.
    pub fn append_position(&mut self) -> Result<Position, OpenError> {
        Ok(Position {
            output_len: self.output.whole_lines()?,
            dead_letter_len: self.dead_letters.whole_lines()?,
            ..Position::default()
        })
    }

    /// Cuts the outputs back to `position` and attaches the checkpoint (`None`: positions are
    /// not recorded, for an input that cannot resume).
    pub fn restore(
        &mut self,
        position: &Position,
        checkpoint: Option<Checkpoint>,
    ) -> Result<(), OpenError> {
        self.output.cut(position.output_len, "output")?;
        self.dead_letters
            .cut(position.dead_letter_len, "dead-letter file")?;
        self.written = position.output_len;
        self.dead_letter_written = position.dead_letter_len;
        self.done = position.clone();
        self.checkpoint = checkpoint;
        Ok(())
    }

    fn write_line(out: &mut Output, line: &[u8]) -> Result<u64, SinkError> {
        let w = out.writer();
        w.write_all(line)
            .and_then(|_| w.write_all(b"\n"))
            .map_err(|e| SinkError(e.to_string()))?;
        Ok(line.len() as u64 + 1)
    }
}

#[async_trait]
impl Sink for FileSink {
    async fn publish(&mut self, _event: &ResultEvent, json: &[u8]) -> Result<(), SinkError> {
        self.written += Self::write_line(&mut self.output, json)?;
        Ok(())
    }

    async fn dead_letter(&mut self, _raw: &[u8], letter: &DeadLetter) -> Result<(), SinkError> {
        self.line.clear();
        serde_json::to_writer(&mut self.line, letter).map_err(|e| SinkError(e.to_string()))?;
        self.dead_letter_written += Self::write_line(&mut self.dead_letters, &self.line)?;
        Ok(())
    }

    async fn record_done(&mut self, source: &SourceRef, resume_at: u64) -> Result<(), SinkError> {
        self.done = Position {
            line: source.offset + 1,
            byte: resume_at,
            output_len: self.written,
            dead_letter_len: self.dead_letter_written,
            published: 0,
            counts: None,
        };
        Ok(())
    }

    async fn record_partial(
        &mut self,
        source: &SourceRef,
        start_at: u64,
        published: usize,
        counts: &Counts,
    ) -> Result<(), SinkError> {
        self.done = Position {
            line: source.offset,
            byte: start_at,
            output_len: self.written,
            dead_letter_len: self.dead_letter_written,
            published: published as u64,
            counts: Some(counts.clone()),
        };
        Ok(())
    }

    async fn commit(&mut self) -> Result<(), SinkError> {
        let err = |e: std::io::Error| SinkError(e.to_string());
        self.output.flush(self.fsync).map_err(err)?;
        self.dead_letters.flush(self.fsync).map_err(err)?;
        // Every event written is covered by the position: the commit stage records a partial
        // position for an unfinished request whose events it published.
        debug_assert_eq!(self.written, self.done.output_len);
        if let Some(cp) = &self.checkpoint {
            // Another process holding the database lock (or a full disk) stalls the commit
            // until it clears, like an unreachable store; other errors stop the pipeline.
            let mut waited = 0u32;
            loop {
                match cp.store(&self.done).map_err(crate::sqlite::classify) {
                    Ok(()) => break,
                    Err(e) if e.kind != StoreErrorKind::Permanent => {
                        metrics::counter!(STORE_ERRORS, "kind" => e.kind.as_str(), "error_code" => e.code)
                            .increment(1);
                        if waited == 0 && sluice_pipeline::logs::allow() {
                            tracing::warn!(error = %e.message, "checkpoint waits for the state database");
                        }
                        waited += 1;
                        let ms = (10u64 << waited.min(7)).min(1_000);
                        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                    }
                    Err(e) => return Err(SinkError(format!("checkpoint: {}", e.message))),
                }
            }
        }
        Ok(())
    }
}
