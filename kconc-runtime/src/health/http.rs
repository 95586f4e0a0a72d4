//! The optional HTTP endpoint (`--http`): the status page at `/`,
//! `/healthz`, `/readyz`, `/metrics`, `/asyncapi.json`.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::{health, metrics_text, registry, HealthThresholds};
use crate::error::Error;
use crate::watch::Watched;

/// Binds the HTTP endpoint's address (`--http`), before anything connects:
/// a bad or busy address fails start-up naming the setting.
pub(crate) fn bind(addr: &str) -> Result<(std::net::TcpListener, SocketAddr), Error> {
    let bad = |source: std::io::Error| Error::Http {
        addr: addr.to_owned(),
        source,
    };
    let listener = std::net::TcpListener::bind(addr).map_err(bad)?;
    listener.set_nonblocking(true).map_err(bad)?;
    let local = listener.local_addr().map_err(bad)?;
    Ok((listener, local))
}

/// The HTTP endpoint on a listener from [`bind`], with the health
/// thresholds and the AsyncAPI document (JSON) it serves: serves until
/// `stop` is cancelled.
pub(crate) fn serve(
    (std_listener, local): (std::net::TcpListener, SocketAddr),
    watched: Vec<Watched>,
    (thresholds, asyncapi): (HealthThresholds, String),
    stop: CancellationToken,
    runtime: &tokio::runtime::Handle,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), Error> {
    use axum::http::StatusCode;
    use axum::routing::get;

    let state = Arc::new((watched, thresholds));
    // /healthz and /readyz: the same report, judged by liveness or readiness.
    let probe = |judge: fn(&super::Health) -> bool| {
        let state = state.clone();
        get(move || {
            let health = health(&state.0, &state.1);
            let code = if judge(&health) {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            async move { (code, health.report()) }
        })
    };
    // The metrics' collector is registered once; each scrape reads the
    // subscribers' live state through it.
    let metrics = Arc::new(registry(state.0.clone(), state.1));
    // The status page's charts: sampled while the endpoint serves.
    let history = Arc::new(super::page::History::default());
    let sampled = (history.clone(), state.clone(), stop.clone());
    runtime.spawn(async move {
        let (history, state, stop) = sampled;
        history.keep(&state.0, stop).await;
    });
    let page = state.clone();
    let app = axum::Router::new()
        .route(
            "/",
            get(move || {
                let html = super::page::render(&page.0, &page.1, &history);
                async move { (StatusCode::OK, [("content-type", "text/html; charset=utf-8")], html) }
            }),
        )
        .route(
            "/asyncapi.json",
            get(move || {
                let document = asyncapi.clone();
                async move { (StatusCode::OK, [("content-type", "application/json")], document) }
            }),
        )
        .route("/healthz", probe(|h| h.healthy))
        .route("/readyz", probe(|h| h.ready))
        .route(
            "/metrics",
            get(move || {
                let result = metrics_text(&metrics);
                async move {
                    match result {
                        Ok(text) => (
                            StatusCode::OK,
                            [(
                                "content-type",
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            )],
                            text,
                        ),
                        Err(e) => (
                            StatusCode::INTERNAL_SERVER_ERROR,
                            [("content-type", "text/plain; charset=utf-8")],
                            e.to_string(),
                        ),
                    }
                }
            }),
        );
    let task = runtime.spawn(async move {
        let listener = match tokio::net::TcpListener::from_std(std_listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "the HTTP endpoint cannot start");
                return;
            }
        };
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the HTTP endpoint failed");
        }
    });
    tracing::info!(address = %local, "HTTP endpoint: / (status page) /healthz /readyz /metrics /asyncapi.json");
    Ok((local, task))
}
