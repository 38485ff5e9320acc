//! What SREs see: the Prometheus recorder, the HTTP listener (`/metrics`, `/healthz`,
//! `/readyz`, and with `[status]` the status API and page of `crate::status`), the periodic store health check that drives readiness, and uptime.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sluice_config::{Config, ObservabilityConfig};
use sluice_pipeline::health::Health;
use sluice_pipeline::metrics::{buckets, register, HEALTH_FAILURES, UPTIME};
use sluice_pipeline::Store;

/// How often histogram samples are folded into their buckets. The recorder keeps raw samples
/// until then (or until a scrape), so this bounds the memory they take when nobody scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(1);

/// The recorder, once installed (`sluice bench` installs it before the pipeline starts, and
/// the pipeline's listener then serves the same one).
static RECORDER: std::sync::Mutex<Option<PrometheusHandle>> = std::sync::Mutex::new(None);

/// Installs the global Prometheus recorder (explicit buckets for every histogram), registers
/// every metric, and starts its upkeep thread; the installed one when called again.
pub fn install_recorder() -> anyhow::Result<PrometheusHandle> {
    let mut installed = RECORDER.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(handle) = installed.as_ref() {
        return Ok(handle.clone());
    }
    let mut builder = PrometheusBuilder::new();
    for (name, b) in buckets() {
        builder = builder.set_buckets_for_metric(Matcher::Full(name.to_string()), b)?;
    }
    let handle = builder
        .install_recorder()
        .context("installing the metrics recorder")?;
    register();
    let upkeep = handle.clone();
    std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(UPKEEP_EVERY);
            upkeep.run_upkeep();
        })
        .context("starting the metrics upkeep thread")?;
    *installed = Some(handle.clone());
    Ok(handle)
}

#[derive(Clone)]
struct AppState {
    handle: PrometheusHandle,
    health: Arc<Health>,
    process: Arc<metrics_process::Collector>,
}

/// With `observability.listen` set: installs the recorder, serves the endpoints and starts
/// the store health checks that drive readiness.
pub async fn start(
    full: &Config,
    store: &Arc<dyn Store>,
    health: &Arc<Health>,
) -> anyhow::Result<()> {
    let config = &full.observability;
    let Some(listen) = &config.listen else {
        return Ok(());
    };
    let handle = install_recorder()?;
    let status = crate::status::router(full).await?;
    serve(listen, config, handle, health.clone(), status).await?;
    spawn_checks(store.clone(), health.clone(), config);
    Ok(())
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listen` until the process exits, within
/// the limits of [`crate::listener`].
async fn serve(
    listen: &str,
    config: &ObservabilityConfig,
    handle: PrometheusHandle,
    health: Arc<Health>,
    status: Option<Router>,
) -> anyhow::Result<()> {
    let process = metrics_process::Collector::default();
    process.describe();
    let state = AppState {
        handle,
        health,
        process: Arc::new(process),
    };
    let mut app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state);
    if let Some(status) = status {
        app = app.merge(status);
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the observability listener on {listen}"))?;
    tracing::info!(address = %listener.local_addr()?, "serving /metrics, /healthz, /readyz");
    tokio::spawn(crate::listener::serve(
        listener,
        app,
        crate::listener::Limits::from_config(config),
    ));
    Ok(())
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    s.process.collect();
    let _ = s.health.readiness(); // refreshes sluice_ready
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        s.handle.render(),
    )
}

async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    let mut r = s.health.readiness();
    for reason in r.reasons.iter_mut() {
        *reason = sluice_config::scrub(reason).into_owned();
    }
    let code = if r.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(r))
}

/// Checks the store every `health_interval_ms` (each check bounded by `health_timeout_ms`)
/// and updates readiness; also keeps `sluice_uptime_seconds` current.
fn spawn_checks(store: Arc<dyn Store>, health: Arc<Health>, config: &ObservabilityConfig) {
    let interval = Duration::from_millis(config.health_interval_ms);
    let timeout = Duration::from_millis(config.health_timeout_ms);
    let started = Instant::now();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut was_ok = true;
        loop {
            tick.tick().await;
            metrics::gauge!(UPTIME).set(started.elapsed().as_secs_f64());
            // The full error goes to the log; `/readyz`, which may be reachable from a wider
            // network, says only what kind of failure it is.
            let result = match tokio::time::timeout(timeout, store.health()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err((
                    format!("{} ({}); details in the log", e.kind.as_str(), e.code),
                    e.to_string(),
                )),
                Err(_) => {
                    let e = format!("health check timed out after {} ms", timeout.as_millis());
                    Err((e.clone(), e))
                }
            };
            let ok = result.is_ok();
            if ok != was_ok {
                match &result {
                    Ok(()) => tracing::info!(store = store.kind(), "store healthy again"),
                    Err((_, e)) => {
                        metrics::counter!(HEALTH_FAILURES, "component" => "store").increment(1);
                        tracing::warn!(store = store.kind(), error = %e, "store health check failing")
                    }
                }
            }
            was_ok = ok;
            health.set_store(result.map_err(|(reason, _)| reason));
        }
    });
}
