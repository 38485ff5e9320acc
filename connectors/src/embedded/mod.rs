//! The embedded default: requests as JSON lines from a file or stdin, result events (and dead
//! letters) as JSON lines to files or stdout, state in the SQLite database.
//!
//! Exactly-once across `kill -9`: the [`checkpoint`] row for (input, output) records, in one
//! SQLite write per commit, the input position after the last committed record and the output
//! and dead-letter file lengths at that moment. [`open`] cuts the outputs back to those
//! lengths and makes the source resume at that position; chunks already applied are then found
//! in the store's ledger and re-published instead of re-executed.

pub mod checkpoint;
pub mod sink;
pub mod source;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub use checkpoint::{Checkpoint, Position};
pub use sink::{FileSink, Output};
pub use source::LineSource;

/// Where the embedded pipeline reads and writes.
#[derive(Debug, Clone)]
pub struct EmbeddedIo {
    /// Input file; `None` = stdin.
    pub input: Option<PathBuf>,
    /// Output file; `None` = stdout.
    pub output: Option<PathBuf>,
    /// Dead-letter file; `None` = `<output>.dlq` beside the output file, or stderr when the
    /// output is stdout (dead letters never mix with result events).
    pub dead_letters: Option<PathBuf>,
    /// The SQLite state database.
    pub state: PathBuf,
    /// Hard cap on one input line in bytes (longer lines are cut and dead-lettered).
    pub max_line_bytes: usize,
    /// fsync outputs at each commit (durable against power loss, not only process crashes).
    pub fsync: bool,
    /// Follow the input file as it grows instead of stopping at its end.
    pub follow: bool,
}

/// Errors opening the embedded source and sink.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// File system trouble.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The state database.
    #[error("state database: {0}")]
    State(#[from] rusqlite::Error),
    /// Output and state disagree (e.g. the output was truncated by hand).
    #[error("{0}")]
    Inconsistent(String),
}

/// The identity of a path for checkpoints: canonical when the file exists.
pub fn identity(path: Option<&Path>) -> String {
    match path {
        None => "-".to_string(),
        Some(p) => std::fs::canonicalize(p)
            .unwrap_or_else(|_| p.to_path_buf())
            .display()
            .to_string(),
    }
}

/// The input's name in result events (`source.topic`): `stdin`, or the file's name.
pub fn input_name(path: Option<&Path>) -> String {
    match path {
        None => "stdin".to_string(),
        Some(p) => p
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_else(|| p.display().to_string()),
    }
}

/// Opens the source and the sink at the last committed position, cutting outputs back to
/// their committed lengths. A file input resumes where the last run committed; stdin cannot
/// be repositioned (nor told apart from another stream), so it is never resumed: each run
/// reads its whole stream and appends to the outputs (the ledger still keeps every chunk from
/// applying twice, and a request_id seen before reports `duplicate` or replays its events).
/// `state` is the store's writer connection to the state database.
pub async fn open(
    io: &EmbeddedIo,
    state: Arc<Mutex<rusqlite::Connection>>,
) -> Result<(LineSource, FileSink, Position), OpenError> {
    let output_id = identity(io.output.as_deref());
    let mut sink = FileSink::open(io, &output_id)?;
    let name = input_name(io.input.as_deref());
    let position = if io.input.is_some() {
        let checkpoint = Checkpoint::open(state, &identity(io.input.as_deref()), &output_id)?;
        let position = checkpoint.load()?;
        sink.restore(&position, Some(checkpoint))?;
        position
    } else {
        let position = sink.append_position()?;
        sink.restore(&position, None)?;
        position
    };
    let source = LineSource::open(
        io.input.as_deref(),
        &name,
        &position,
        io.max_line_bytes,
        io.follow,
    )
    .await?;
    Ok((source, sink, position))
}
