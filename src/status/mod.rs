//! The status API on the observability listener (`[status]`, off by default): what became of
//! a request, read from the store (`sluice_pipeline::status`) so any instance answers for any
//! request, across restarts.
//!
//! - `GET /v1/requests/{id}`: the status as JSON (`schema/request-status.schema.json`); 404
//!   (state `unknown`) when the store holds no claim.
//! - `GET /v1/requests/{id}/events`: its events so far as JSON lines, exactly the bytes the
//!   results topic carries.
//! - `GET /v1/requests/{id}/stream`: the same as Server-Sent Events, then each new one, ending
//!   after the terminal event ([`stream`]).
//! - `GET /v1/requests?state=in_progress&limit=…&after=…`: unfinished requests, oldest first.
//! - `GET /`: the status page ([`page`]), which asks for the token and reads the above.
//!
//! Every `/v1` request needs `Authorization: Bearer <status.token>` (compared in constant
//! time; 401 without it). A request_id is checked like the contract's before any store read
//! (400). The listener's limits apply (`crate::listener`); streams are capped separately.
//! `sluice status` ([`cli`]) prints the same answers, reading the store directly.

pub mod cli;
mod page;
mod stream;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use sluice_config::Config;
use sluice_connectors::mongo::MongoStatus;
use sluice_connectors::sqlite::SqliteStatus;
use sluice_pipeline::metrics::STATUS_REQUESTS;
use sluice_pipeline::status::{
    self, valid_request_id, Cursor, RequestStatus, State as Phase, StatusReader,
};
use sluice_pipeline::StoreError;
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

/// What the handlers share.
#[derive(Clone)]
struct Api {
    reader: Arc<dyn StatusReader>,
    token: Arc<[u8]>,
    streams: Arc<Semaphore>,
    poll: Duration,
    send_timeout: Duration,
    max_page: usize,
    default_deadline_ms: Option<u64>,
}

/// The store's status reads, for the store `config` selects (MongoDB with `[mongo]`, else the
/// SQLite state file). `service`: also create the in-flight index.
pub async fn open_reader(config: &Config, service: bool) -> anyhow::Result<Arc<dyn StatusReader>> {
    Ok(match &config.mongo {
        Some(m) => {
            let r = MongoStatus::connect(m).await.with_context(|| {
                format!(
                    "connecting to MongoDB at {}",
                    sluice_config::mask_uri(&m.uri)
                )
            })?;
            if service {
                r.ensure_index()
                    .await
                    .context("creating the in-flight index")?;
            }
            Arc::new(r)
        }
        None => {
            let path = &config.embedded.state;
            let busy = Duration::from_millis(config.embedded.busy_timeout_ms);
            if service {
                SqliteStatus::ensure_index(path, busy).context("creating the in-flight index")?;
            }
            Arc::new(
                SqliteStatus::open(path, busy)
                    .with_context(|| format!("opening {} for status reads", path.display()))?,
            )
        }
    })
}

/// The status routes, when `[status]` is enabled.
pub async fn router(config: &Config) -> anyhow::Result<Option<Router>> {
    let s = &config.status;
    if !s.enabled {
        return Ok(None);
    }
    let token = s.token.clone().context("status.token is required")?;
    let api = Api {
        reader: open_reader(config, true).await?,
        token: token.into_bytes().into(),
        streams: Arc::new(Semaphore::new(s.max_streams)),
        poll: Duration::from_millis(s.poll_interval_ms),
        send_timeout: Duration::from_millis(s.send_timeout_ms),
        max_page: s.max_page,
        default_deadline_ms: config.execute.default_deadline_ms,
    };
    let v1 = Router::new()
        .route("/v1/requests", get(list))
        .route("/v1/requests/{id}", get(one))
        .route("/v1/requests/{id}/events", get(events))
        .route("/v1/requests/{id}/stream", get(stream::stream))
        .route_layer(axum::middleware::from_fn_with_state(api.clone(), authorize))
        .with_state(api);
    Ok(Some(v1.merge(page::router())))
}

/// Counts one status request.
fn count(endpoint: &'static str, code: StatusCode) {
    let outcome = match code {
        c if c.is_success() => "ok",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::SERVICE_UNAVAILABLE => "busy",
        _ => "error",
    };
    metrics::counter!(STATUS_REQUESTS, "endpoint" => endpoint, "outcome" => outcome).increment(1);
}

/// The endpoint label of a `/v1` path.
fn endpoint_of(path: &str) -> &'static str {
    if path == "/v1/requests" {
        "list"
    } else if path.ends_with("/stream") {
        "stream"
    } else if path.ends_with("/events") {
        "events"
    } else {
        "status"
    }
}

/// A JSON error answer, counted.
fn error(endpoint: &'static str, code: StatusCode, message: &str) -> Response {
    count(endpoint, code);
    (code, Json(serde_json::json!({ "error": message }))).into_response()
}

/// A store failure: 503, its kind only (the details go to the log).
fn store_error(endpoint: &'static str, e: &StoreError) -> Response {
    tracing::warn!(error = %e, endpoint, "status read failed");
    error(
        endpoint,
        StatusCode::SERVICE_UNAVAILABLE,
        &format!("the store did not answer ({}, {})", e.kind.as_str(), e.code),
    )
}

/// 401 unless the request carries the bearer token (compared in constant time).
async fn authorize(State(api): State<Api>, request: Request, next: Next) -> Response {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        // The scheme is case-insensitive (RFC 9110).
        .and_then(|v| {
            v.get(..7)
                .filter(|s| s.eq_ignore_ascii_case("bearer "))
                .map(|_| &v[7..])
        })
        .map(str::trim)
        .unwrap_or("");
    if bool::from(given.as_bytes().ct_eq(&api.token)) {
        return next.run(request).await;
    }
    let endpoint = endpoint_of(request.uri().path());
    let mut r = error(
        endpoint,
        StatusCode::UNAUTHORIZED,
        "a bearer token is required",
    );
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    r
}

/// `None` for a valid request_id, else the 400 answer.
fn refused(endpoint: &'static str, id: &str) -> Option<Response> {
    (!valid_request_id(id)).then(|| {
        error(
            endpoint,
            StatusCode::BAD_REQUEST,
            "request_id must be 1-128 characters of [A-Za-z0-9._:-]",
        )
    })
}

/// The status with the config's default deadline filled in for a recorded claim that set none.
pub async fn status_of(
    reader: &dyn StatusReader,
    id: &str,
    default_deadline_ms: Option<u64>,
) -> Result<RequestStatus, StoreError> {
    let mut s = status::status(reader, id).await?;
    if let (None, Some(_), Some(at), Some(ms)) = (
        s.deadline_ms,
        &s.collection,
        s.claimed_at_ms,
        default_deadline_ms,
    ) {
        s.deadline_ms = Some(at.saturating_add(ms as i64));
    }
    Ok(s)
}

async fn one(State(api): State<Api>, Path(id): Path<String>) -> Response {
    if let Some(r) = refused("status", &id) {
        return r;
    }
    match status_of(api.reader.as_ref(), &id, api.default_deadline_ms).await {
        Ok(s) => {
            let code = if s.state == Phase::Unknown {
                StatusCode::NOT_FOUND
            } else {
                StatusCode::OK
            };
            count("status", code);
            (code, Json(s)).into_response()
        }
        Err(e) => store_error("status", &e),
    }
}

async fn events(State(api): State<Api>, Path(id): Path<String>) -> Response {
    if let Some(r) = refused("events", &id) {
        return r;
    }
    let first = match status::events(api.reader.as_ref(), &id, 0, status::EVENTS_PAGE).await {
        Ok((None, _)) => return error("events", StatusCode::NOT_FOUND, status::UNKNOWN_NOTE),
        Ok((Some(_), list)) => list,
        Err(e) => return store_error("events", &e),
    };
    count("events", StatusCode::OK);
    // Page by page as the client reads: a request's events are never all in memory.
    let pages = futures::stream::unfold(Some((api, id, first)), |state| async move {
        let (api, id, list) = state?;
        let last = list.last()?;
        let more = list.len() == status::EVENTS_PAGE && !last.terminal;
        let next = last.position + 1;
        let mut page = String::with_capacity(list.iter().map(|e| e.text.len() + 1).sum());
        for e in &list {
            page.push_str(&e.text);
            page.push('\n');
        }
        let state = if more {
            match status::events(api.reader.as_ref(), &id, next, status::EVENTS_PAGE).await {
                Ok((_, list)) => Some((api, id, list)),
                Err(e) => {
                    tracing::warn!(error = %e, "status events: store read failed mid-answer");
                    return Some((Err(std::io::Error::other(e.to_string())), None));
                }
            }
        } else {
            None
        };
        Some((Ok::<_, std::io::Error>(page), state))
    });
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        axum::body::Body::from_stream(pages),
    )
        .into_response()
}

async fn list(State(api): State<Api>, RawQuery(query): RawQuery) -> Response {
    let (mut state, mut limit, mut after) = (None, 100usize, None);
    for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            "state" => state = Some(v.into_owned()),
            "limit" => match v.parse::<usize>() {
                Ok(n) if n >= 1 => limit = n.min(api.max_page),
                _ => {
                    return error(
                        "list",
                        StatusCode::BAD_REQUEST,
                        "limit must be a positive integer",
                    )
                }
            },
            "after" => match Cursor::decode(&v) {
                Some(c) => after = Some(c),
                None => {
                    return error(
                        "list",
                        StatusCode::BAD_REQUEST,
                        "after must be a `next` value of an earlier page",
                    )
                }
            },
            _ => {
                return error(
                    "list",
                    StatusCode::BAD_REQUEST,
                    "unknown query parameter (state, limit, after)",
                )
            }
        }
    }
    if state.as_deref() != Some("in_progress") {
        return error(
            "list",
            StatusCode::BAD_REQUEST,
            "state=in_progress is required (the list of requests in flight)",
        );
    }
    match status::in_flight(api.reader.as_ref(), after.as_ref(), limit).await {
        Ok(page) => {
            count("list", StatusCode::OK);
            Json(page).into_response()
        }
        Err(e) => store_error("list", &e),
    }
}

/// The position after which a reconnecting stream resumes (`Last-Event-ID: generation:pos`),
/// if it names this claim's generation.
fn resume_after(headers: &HeaderMap) -> Option<(i64, usize)> {
    let v = headers.get("last-event-id")?.to_str().ok()?;
    let (g, p) = v.split_once(':')?;
    Some((g.parse().ok()?, p.parse().ok()?))
}
