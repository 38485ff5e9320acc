//! The HTTP listener under `/metrics`, `/healthz` and `/readyz`, made safe to expose to a
//! cluster network: a liveness probe must keep getting answers whatever other clients do.
//!
//! - Every connection must send its request headers within `http_header_timeout_ms` (hyper's
//!   header-read timeout, running from the accept), and lives at most
//!   `http_connection_timeout_ms` in all: slow (slowloris) and idle clients are cut off.
//! - One request per connection (no keep-alive), headers of at most 16 KiB, no request body
//!   read by any endpoint (other methods get 405).
//! - At most `http_max_connections` at once. A connection beyond the cap takes the slot of the
//!   oldest connection that has not sent its request yet — which is closed: a client holding a
//!   slot without asking anything — or else of the oldest connection that has been answered
//!   for more than [`ANSWER_GRACE`] (a client that does not read its response). Only when
//!   every slot holds a request being answered right now does the new connection get an
//!   immediate 503. So file descriptors stay bounded, a probe or a scrape whose request has
//!   arrived is answered, and no flood of idle, slow or non-reading clients locks out the next
//!   probe. All of it is counted in `sluice_http_connections_shed_total{reason}`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use sluice_config::ObservabilityConfig;
use sluice_pipeline::metrics::HTTP_SHED;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Largest request head read (hyper's buffer; larger heads get 431).
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// How long a response may take to be written before its connection may be evicted (ours
/// are a few KiB; a client that has not read them by then is not a probe).
const ANSWER_GRACE: Duration = Duration::from_secs(1);
/// How long a new connection waits for the connection it evicted to close.
const EVICT_WAIT: Duration = Duration::from_secs(1);
/// Pause after a failed `accept` (e.g. the process is out of file descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The listener's limits, from `[observability]`.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub header_timeout: Duration,
    pub connection_timeout: Duration,
    pub max_connections: usize,
}

impl Limits {
    pub fn from_config(c: &ObservabilityConfig) -> Self {
        Limits {
            header_timeout: Duration::from_millis(c.http_header_timeout_ms),
            connection_timeout: Duration::from_millis(c.http_connection_timeout_ms),
            max_connections: c.http_max_connections,
        }
    }
}

/// The open connections that may be evicted: those still waiting for their request, and
/// those being answered (since when), each oldest first.
#[derive(Default)]
struct Waiting {
    next_id: u64,
    queue: VecDeque<(u64, CancellationToken)>,
    answering: VecDeque<(u64, Instant, CancellationToken)>,
}

impl Waiting {
    /// A new connection: its id, and the token that closes it.
    fn add(&mut self) -> (u64, CancellationToken) {
        let id = self.next_id;
        self.next_id += 1;
        let token = CancellationToken::new();
        self.queue.push_back((id, token.clone()));
        (id, token)
    }

    /// Connection `id`'s request has arrived: it is being answered.
    fn answering(&mut self, id: u64) {
        if let Some(at) = self.queue.iter().position(|(c, _)| *c == id) {
            if let Some((_, token)) = self.queue.remove(at) {
                self.answering.push_back((id, Instant::now(), token));
            }
        }
    }

    /// Connection `id` closed.
    fn remove(&mut self, id: u64) {
        self.queue.retain(|(c, _)| *c != id);
        self.answering.retain(|(c, _, _)| *c != id);
    }

    /// Closes the oldest connection still waiting for its request, else the oldest one
    /// answered for longer than [`ANSWER_GRACE`]; false if there is none.
    fn evict_oldest(&mut self) -> bool {
        let (token, reason) = if let Some((_, t)) = self.queue.pop_front() {
            (t, "evicted")
        } else if self
            .answering
            .front()
            .is_some_and(|(_, since, _)| since.elapsed() >= ANSWER_GRACE)
        {
            match self.answering.pop_front() {
                Some((_, _, t)) => (t, "evicted_unread"),
                None => return false,
            }
        } else {
            return false;
        };
        token.cancel();
        metrics::counter!(HTTP_SHED, "reason" => reason).increment(1);
        true
    }
}

fn lock(waiting: &Mutex<Waiting>) -> std::sync::MutexGuard<'_, Waiting> {
    waiting
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A slot for a new connection: a free one, or the slot of the oldest connection still
/// waiting for its request, once it has closed. `None` when every slot is answering.
async fn slot(slots: &Arc<Semaphore>, waiting: &Mutex<Waiting>) -> Option<OwnedSemaphorePermit> {
    if let Ok(permit) = slots.clone().try_acquire_owned() {
        return Some(permit);
    }
    if !lock(waiting).evict_oldest() {
        return None;
    }
    // Only this loop acquires, so the evicted connection's slot comes to it; the wait is for
    // the evicted task to run and drop its socket.
    tokio::time::timeout(EVICT_WAIT, slots.clone().acquire_owned())
        .await
        .ok()?
        .ok()
}

/// Serves `app` on `listener` until the process exits.
pub async fn serve(listener: TcpListener, app: Router, limits: Limits) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let waiting = Arc::new(Mutex::new(Waiting::default()));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                metrics::counter!(HTTP_SHED, "reason" => "accept_failed").increment(1);
                tracing::debug!(error = %e, "accepting a connection failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Some(permit) = slot(&slots, &waiting).await else {
            metrics::counter!(HTTP_SHED, "reason" => "refused").increment(1);
            tokio::spawn(refuse(stream));
            continue;
        };
        let (id, token) = lock(&waiting).add();
        let (app, waiting) = (app.clone(), waiting.clone());
        tokio::spawn(async move {
            let seen = waiting.clone();
            let service = service_fn(move |request| {
                lock(&seen).answering(id);
                app.clone().oneshot(request)
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .keep_alive(false)
                .max_buf_size(MAX_HEAD_BYTES)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                result = conn => {
                    if result.is_err_and(|e| e.is_timeout()) {
                        metrics::counter!(HTTP_SHED, "reason" => "header_timeout").increment(1);
                    }
                }
                _ = tokio::time::sleep(limits.connection_timeout) => {
                    metrics::counter!(HTTP_SHED, "reason" => "timed_out").increment(1);
                }
                _ = token.cancelled() => {}
            }
            lock(&waiting).remove(id);
            drop(permit);
        });
    }
}

/// Answers 503 and closes, without reading the request (bounded: the client may not read).
async fn refuse(mut stream: TcpStream) {
    const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\n\
        content-length: 0\r\nretry-after: 1\r\n\r\n";
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(BUSY)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_listener_evicts_the_oldest_connection_still_waiting_for_its_request() {
        let slots = Arc::new(Semaphore::new(2));
        let waiting = Mutex::new(Waiting::default());
        let probe_slot = slot(&slots, &waiting).await.unwrap();
        let (probe, probe_token) = lock(&waiting).add();
        let idle_slot = slot(&slots, &waiting).await.unwrap();
        let (_, idle_token) = lock(&waiting).add();
        lock(&waiting).answering(probe); // its request arrived
                                         // The idle connection's task ends when its token fires, giving back its slot.
        tokio::spawn(async move {
            idle_token.cancelled().await;
            drop(idle_slot);
        });
        let third_slot = slot(&slots, &waiting)
            .await
            .expect("the idle connection makes room");
        assert!(
            !probe_token.is_cancelled(),
            "a connection being answered stays"
        );
        let (third, third_token) = lock(&waiting).add();
        lock(&waiting).answering(third);
        assert!(
            slot(&slots, &waiting).await.is_none(),
            "every slot answering: refused"
        );
        // A response not read for ANSWER_GRACE: that connection may be evicted.
        tokio::time::sleep(ANSWER_GRACE).await;
        tokio::spawn(async move {
            probe_token.cancelled().await;
            drop(probe_slot);
        });
        assert!(
            slot(&slots, &waiting).await.is_some(),
            "the oldest unread answer makes room"
        );
        assert!(!third_token.is_cancelled());
        drop(third_slot);
    }
}
