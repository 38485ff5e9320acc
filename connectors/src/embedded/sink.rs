//! Result events and dead letters as JSON lines. A commit flushes (and optionally fsyncs) the
//! files and then records the checkpoint; a restart cuts the files back to the recorded lengths.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::Arc;

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

    /// Writes out what is buffered (to the page cache, for a file).
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Output::File { writer, .. } => writer.flush(),
            Output::Stream(w) => w.flush(),
        }
    }

    /// A handle on the file, to wait for the disk with (`None` for a stream).
    fn file(&self) -> std::io::Result<Option<File>> {
        match self {
            Output::File { writer, .. } => writer.get_ref().try_clone().map(Some),
            Output::Stream(_) => Ok(None),
        }
    }
}

/// The embedded sink.
pub struct FileSink {
    output: Output,
    dead_letters: Output,
    checkpoint: Option<Arc<Checkpoint>>,
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
        self.checkpoint = checkpoint.map(Arc::new);
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

    /// Flushes the outputs, then waits for the disk (with `fsync`) and records the checkpoint
    /// on the blocking pool, never on a runtime worker: the checkpoint waits for the store's
    /// writer connection, which the SQLite writer holds through each transaction (and through
    /// `busy_timeout` while another process holds the file's lock), and an fsync waits for
    /// the disk. (`block_in_place` was tried: it moved the worker's tasks to other threads
    /// at every commit, and the process's peak RSS on 1000 x 1000 went from 49 to 74-97 MiB.)
    async fn commit(&mut self) -> Result<(), SinkError> {
        let err = |e: std::io::Error| SinkError(e.to_string());
        self.output.flush().map_err(err)?;
        self.dead_letters.flush().map_err(err)?;
        if self.fsync {
            let files = [self.output.file(), self.dead_letters.file()];
            let files: Vec<File> = files
                .into_iter()
                .filter_map(Result::transpose)
                .collect::<Result<_, _>>()
                .map_err(err)?;
            blocking(move || files.iter().try_for_each(File::sync_data))
                .await?
                .map_err(err)?;
        }
        // Every event written is covered by the position: the commit stage records a partial
        // position for an unfinished request whose events it published.
        debug_assert_eq!(self.written, self.done.output_len);
        let Some(cp) = &self.checkpoint else {
            return Ok(());
        };
        // Another process holding the database lock (or a full disk) stalls the commit until
        // it clears, like an unreachable store; other errors stop the pipeline.
        let mut waited = 0u32;
        loop {
            let (cp, done) = (cp.clone(), self.done.clone());
            let stored = blocking(move || cp.store(&done)).await?;
            match stored.map_err(crate::sqlite::classify) {
                Ok(()) => return Ok(()),
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
}

/// Runs `f` on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, SinkError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| SinkError(format!("commit: {e}")))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::*;

    /// A commit waiting for the state database's writer connection (held by the SQLite writer
    /// through a transaction) leaves the runtime's other tasks running, even on one worker
    /// (with `fsync`, so that the wait for the disk goes the same way).
    #[test]
    fn a_commit_waiting_for_the_writer_connection_leaves_other_tasks_running() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.jsonl");
        std::fs::write(&input, "").unwrap();
        let io = EmbeddedIo {
            input: Some(input),
            output: Some(dir.path().join("out.jsonl")),
            dead_letters: None,
            state: dir.path().join("state.db"),
            max_line_bytes: 1 << 20,
            fsync: true,
            follow: false,
        };
        let conn = Arc::new(Mutex::new(
            rusqlite::Connection::open(dir.path().join("state.db")).unwrap(),
        ));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (_source, mut sink, _) = crate::embedded::open(&io, conn.clone()).await.unwrap();
            let ticks = Arc::new(AtomicUsize::new(0));
            let counted = ticks.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    counted.fetch_add(1, Ordering::SeqCst);
                }
            });
            // The writer holds its connection for 600 ms, as through a long transaction, and
            // says when it is about to let go.
            let (held_tx, held_rx) = std::sync::mpsc::channel();
            let (release_tx, release_rx) = std::sync::mpsc::channel();
            let holder = {
                let conn = conn.clone();
                std::thread::spawn(move || {
                    let _held = conn.lock().unwrap();
                    held_tx.send(()).unwrap();
                    std::thread::sleep(Duration::from_millis(600));
                    release_tx.send(()).unwrap();
                    // Until the test has counted: the window ends with the lock still held.
                    std::thread::sleep(Duration::from_millis(50));
                })
            };
            held_rx.recv().unwrap();
            let commit = tokio::spawn(async move { sink.commit().await });
            let before = ticks.load(Ordering::SeqCst);
            // On this thread (not a worker): the commit task waits for the connection.
            release_rx.recv().unwrap();
            let during = ticks.load(Ordering::SeqCst) - before;
            assert!(
                !commit.is_finished(),
                "the commit did not wait for the connection"
            );
            commit.await.unwrap().unwrap();
            holder.join().unwrap();
            assert!(
                during >= 10,
                "a 5 ms timer fired {during} times in 600 ms while a commit waited for the \
                 writer connection: the commit blocked the runtime's only worker"
            );
        });
    }
}
