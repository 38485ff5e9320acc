//! The status page at `/`: one HTML file with its script and styles, shipped in the binary
//! (no build step, no CDN). It holds no data: it asks for the bearer token (kept in the tab's
//! `sessionStorage`, or taken once from the URL fragment `#token=…`, which never reaches the
//! server) and reads the `/v1` API with it — the in-flight list every second, a live progress
//! stream per request shown, and one request's events from the search box.

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

const PAGE: &str = include_str!("page.html");

/// Scripts and styles of the page itself only; data from this origin only.
const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                   connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

pub(super) fn router() -> Router {
    Router::new()
        .route("/", get(page))
        .route("/requests", get(page))
}

async fn page() -> impl IntoResponse {
    super::count("page", StatusCode::OK);
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::CACHE_CONTROL, "no-store"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        PAGE,
    )
}
