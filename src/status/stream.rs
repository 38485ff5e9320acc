//! `GET /v1/requests/{id}/stream`: a request's events as Server-Sent Events — those the store
//! holds, then each new one as the store gets it (read every `status.poll_interval_ms`),
//! ending after the terminal event. Each event's `id` is `generation:position`; a client that
//! reconnects with `Last-Event-ID` gets what follows it, without gaps or repeats, from any
//! instance (the store answers, not this process's memory).
//!
//! Bounds: at most `status.max_streams` at once (then 503); a task per stream feeds a channel
//! of [`BUFFER`] events, and a client that leaves an event untaken for
//! `status.send_timeout_ms` is dropped — never buffered for, never slowing the pipeline, which
//! these reads do not touch. The listener's connection timeout ends long streams too; the
//! client resumes with `Last-Event-ID` (browsers' `EventSource` does so by itself).

use std::convert::Infallible;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use sluice_pipeline::metrics::{STATUS_STREAMS, STATUS_STREAMS_DROPPED};
use sluice_pipeline::status;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::SendTimeoutError;

use super::{count, error, refused, resume_after, store_error, Api};

/// Events waiting for one stream's client, at most.
const BUFFER: usize = 8;

/// Keeps `sluice_status_streams_open` right however a stream ends.
struct Open;

impl Open {
    fn new() -> Self {
        metrics::gauge!(STATUS_STREAMS).increment(1.0);
        Open
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        metrics::gauge!(STATUS_STREAMS).decrement(1.0);
    }
}

pub(super) async fn stream(
    State(api): State<Api>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = refused("stream", &id) {
        return r;
    }
    let Ok(permit) = api.streams.clone().try_acquire_owned() else {
        return error(
            "stream",
            StatusCode::SERVICE_UNAVAILABLE,
            "too many progress streams open (status.max_streams); retry later",
        );
    };
    let resume = resume_after(&headers);
    let claim = match api.reader.claim(&id).await {
        Ok(Some(c)) => c,
        Ok(None) => return error("stream", StatusCode::NOT_FOUND, status::UNKNOWN_NOTE),
        Err(e) => return store_error("stream", &e),
    };
    let generation = claim.claimed_at_ms;
    let mut next = match resume {
        Some((g, pos)) if g == generation => pos + 1,
        _ => 0,
    };
    count("stream", StatusCode::OK);
    let (tx, mut rx) = mpsc::channel::<Event>(BUFFER);
    tokio::spawn(async move {
        let _open = Open::new();
        let _permit = permit;
        loop {
            let list = match status::events(api.reader.as_ref(), &id, next, BUFFER).await {
                // Gone (forgotten) or claimed anew (a new generation): this stream is over.
                Ok((None, _)) => return,
                Ok((Some(c), _)) if c.claimed_at_ms != generation => return,
                // Resumed after the terminal event: nothing more will come.
                Ok((Some(c), list)) if list.is_empty() && c.finished() && next > c.chunks() => {
                    return
                }
                Ok((Some(_), list)) => list,
                Err(e) => {
                    tracing::debug!(error = %e, "progress stream: store read failed; retrying");
                    Vec::new()
                }
            };
            let full = list.len() == BUFFER;
            for e in list {
                let event = Event::default().id(&e.id).data(&e.text);
                match tx.send_timeout(event, api.send_timeout).await {
                    Ok(()) => {}
                    Err(SendTimeoutError::Timeout(_)) => {
                        metrics::counter!(STATUS_STREAMS_DROPPED, "reason" => "slow_reader")
                            .increment(1);
                        tracing::info!(request_id = %id, "progress stream dropped: its client stopped reading");
                        return;
                    }
                    Err(SendTimeoutError::Closed(_)) => return,
                }
                next = e.position + 1;
                if e.terminal {
                    return;
                }
            }
            if full {
                continue; // more may be there already
            }
            tokio::select! {
                () = tokio::time::sleep(api.poll) => {}
                () = tx.closed() => return,
            }
        }
    });
    let events =
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx).map(|e| e.map(Ok::<_, Infallible>)));
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}
