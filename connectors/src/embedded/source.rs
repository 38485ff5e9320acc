//! Requests as JSON lines from a file or stdin, read with a hard per-line cap so that one
//! huge line cannot exhaust memory. Blank lines are separators, not records.

use std::path::Path;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use sluice_pipeline::contract::Counts;
use sluice_pipeline::{RawRecord, Source, SourceError, SourceRef};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncSeekExt, BufReader};

use super::{OpenError, Position};

/// A JSON-lines source.
pub struct LineSource {
    reader: Box<dyn AsyncBufRead + Unpin + Send>,
    topic: String,
    line: i64,
    byte: u64,
    cap: usize,
    buf: Vec<u8>,
    /// Lines left in the input (files only): exported as `sluice_consumer_lag_records`.
    remaining: Option<u64>,
    /// Set when following a growing file (`tail -f`): the file and when lag was last counted.
    follow: Option<(std::path::PathBuf, Instant)>,
    /// The line the run resumes at and its progress events already in the output (a partial
    /// position): handed to the record read at that line as `skip_progress`.
    skip: Option<(i64, usize, Option<Counts>)>,
}

/// How often a followed file is polled at its end, and its lag recounted while reading.
const FOLLOW_POLL: std::time::Duration = std::time::Duration::from_millis(100);
const RECOUNT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

impl LineSource {
    /// Opens `path` (or stdin) at `position`. `topic` names the input in result events.
    pub async fn open(
        path: Option<&Path>,
        topic: &str,
        position: &Position,
        cap: usize,
        follow: bool,
    ) -> Result<Self, OpenError> {
        let io_err = |source| OpenError::Io {
            path: topic.to_string(),
            source,
        };
        let mut source = match path {
            Some(p) => {
                let mut file = tokio::fs::File::open(p).await.map_err(io_err)?;
                file.seek(std::io::SeekFrom::Start(position.byte))
                    .await
                    .map_err(io_err)?;
                LineSource::new(
                    Box::new(BufReader::with_capacity(1 << 16, file)),
                    topic,
                    cap,
                )
            }
            None => LineSource::new(
                Box::new(BufReader::with_capacity(1 << 16, tokio::io::stdin())),
                topic,
                cap,
            ),
        };
        source.line = position.line;
        source.byte = position.byte;
        if position.published > 0 {
            source.skip = Some((
                position.line,
                position.published as usize,
                position.counts.clone(),
            ));
        }
        if let Some(p) = path {
            let (owned, from) = (p.to_path_buf(), position.byte);
            let count = tokio::task::spawn_blocking(move || count_lines(&owned, from))
                .await
                .map_err(|e| OpenError::Io {
                    path: topic.to_string(),
                    source: std::io::Error::other(e),
                })?
                .map_err(io_err)?;
            source.remaining = Some(count);
            source.report_lag();
            if follow {
                source = source.follow(p);
            }
        }
        Ok(source)
    }

    /// A source over any buffered reader, starting at line 0.
    pub fn new(reader: Box<dyn AsyncBufRead + Unpin + Send>, topic: &str, cap: usize) -> Self {
        LineSource {
            reader,
            topic: topic.to_string(),
            line: 0,
            byte: 0,
            cap,
            buf: Vec::new(),
            remaining: None,
            follow: None,
            skip: None,
        }
    }

    /// Keeps reading at the end of the file, waiting for more lines (a producer appending to
    /// the file), until shutdown. A last line without its newline is waited for, not read.
    pub fn follow(mut self, path: &Path) -> Self {
        self.follow = Some((path.to_path_buf(), Instant::now()));
        self
    }

    /// Reads one line into `self.buf` (without its newline, at most `cap` bytes kept).
    /// Returns `(bytes consumed, truncated)`, or `None` at end of input.
    async fn read_line(&mut self) -> std::io::Result<Option<(u64, bool)>> {
        self.buf.clear();
        let (mut consumed, mut truncated) = (0u64, false);
        loop {
            let available = self.reader.fill_buf().await?;
            if available.is_empty() {
                if self.follow.is_some() {
                    if consumed == 0 && self.remaining != Some(0) {
                        self.remaining = Some(0);
                        self.report_lag();
                    }
                    tokio::time::sleep(FOLLOW_POLL).await;
                    continue;
                }
                return Ok(if consumed == 0 {
                    None
                } else {
                    Some((consumed, truncated))
                });
            }
            let (chunk, done) = match memchr_newline(available) {
                Some(i) => (&available[..i], Some(i + 1)),
                None => (available, None),
            };
            let room = self.cap.saturating_sub(self.buf.len());
            if chunk.len() > room {
                truncated = true;
            }
            self.buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
            let used = done.unwrap_or(available.len());
            self.reader.consume(used);
            consumed += used as u64;
            if done.is_some() {
                return Ok(Some((consumed, truncated)));
            }
        }
    }
}

/// Lines from byte `from` to the end of the file (a last line without newline counts).
fn count_lines(path: &Path, from: u64) -> std::io::Result<u64> {
    use std::io::{Read, Seek};
    let mut f = std::fs::File::open(path)?;
    f.seek(std::io::SeekFrom::Start(from))?;
    let (mut n, mut last, mut buf) = (0u64, b'\n', vec![0u8; 1 << 16]);
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            return Ok(n + u64::from(last != b'\n'));
        }
        n += buf[..k].iter().filter(|&&b| b == b'\n').count() as u64;
        last = buf[k - 1];
    }
}

impl LineSource {
    /// Lines left: this process is the whole "group" of its one "partition".
    fn report_lag(&self) {
        use sluice_pipeline::metrics::{CONSUMER_LAG, GROUP_LAG, GROUP_MEMBERS};
        if let Some(n) = self.remaining {
            metrics::gauge!(CONSUMER_LAG, "partition" => "0").set(n as f64);
            metrics::gauge!(GROUP_LAG, "partition" => "0").set(n as f64);
            metrics::gauge!(GROUP_MEMBERS).set(1.0);
        }
    }
}

fn memchr_newline(b: &[u8]) -> Option<usize> {
    b.iter().position(|&c| c == b'\n')
}

#[async_trait]
impl Source for LineSource {
    async fn next(&mut self) -> Result<Option<RawRecord>, SourceError> {
        loop {
            let start = self.byte;
            let Some((consumed, truncated)) = self
                .read_line()
                .await
                .map_err(|e| SourceError(format!("{}: {e}", self.topic)))?
            else {
                return Ok(None);
            };
            let line = self.line;
            self.line += 1;
            self.byte += consumed;
            if let Some(n) = self.remaining.as_mut() {
                *n = n.saturating_sub(1);
                self.report_lag();
            }
            if let Some((path, counted)) = &self.follow {
                if counted.elapsed() >= RECOUNT_EVERY {
                    let (path, from) = (path.clone(), self.byte);
                    let n = tokio::task::spawn_blocking(move || count_lines(&path, from)).await;
                    if let Ok(Ok(n)) = n {
                        self.remaining = Some(n);
                        self.report_lag();
                    }
                    if let Some((_, counted)) = self.follow.as_mut() {
                        *counted = Instant::now();
                    }
                }
            }
            let mut payload = &self.buf[..];
            if payload.last() == Some(&b'\r') {
                payload = &payload[..payload.len() - 1];
            }
            if payload.iter().all(u8::is_ascii_whitespace) && !truncated {
                continue;
            }
            let (skip_progress, skip_counts) = match self.skip.take() {
                Some((at, published, counts)) if at == line => (published, counts),
                _ => (0, None),
            };
            return Ok(Some(RawRecord {
                source: SourceRef {
                    topic: self.topic.clone(),
                    partition: 0,
                    offset: line,
                },
                key: None,
                payload: Bytes::copy_from_slice(payload),
                truncated,
                resume_at: self.byte,
                start_at: start,
                skip_progress,
                skip_counts,
                received: Instant::now(),
                permit: None,
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines(input: &'static [u8], cap: usize) -> Vec<(i64, String, bool, u64)> {
        let mut s = LineSource::new(Box::new(BufReader::with_capacity(4, input)), "t", cap);
        let mut out = Vec::new();
        while let Some(r) = s.next().await.unwrap() {
            out.push((
                r.source.offset,
                String::from_utf8(r.payload.to_vec()).unwrap(),
                r.truncated,
                r.resume_at,
            ));
        }
        out
    }

    #[tokio::test]
    async fn splits_lines_skips_blanks_and_tracks_positions() {
        let got = lines(b"{\"a\":1}\r\n\n  \n{\"b\":2}", 100).await;
        assert_eq!(
            got,
            vec![
                (0, "{\"a\":1}".into(), false, 9),
                (3, "{\"b\":2}".into(), false, 20)
            ]
        );
    }

    #[tokio::test]
    async fn cuts_long_lines_at_the_cap() {
        let got = lines(b"0123456789\nabc\n", 4).await;
        assert_eq!(
            got,
            vec![(0, "0123".into(), true, 11), (1, "abc".into(), false, 15)]
        );
    }
}
