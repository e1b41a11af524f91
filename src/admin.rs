//! The admin listener, apart from the public one: `/healthz` (the process lives), `/readyz` (keys
//! loaded, store reachable, not draining), `/metrics` (Prometheus) and `/openapi.json` (the
//! client-facing API's spec).

use std::sync::atomic::Ordering;

use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::json;

use crate::state::AppState;

/// The gateway's own API description, kept in the repository and checked by the tests.
pub const OPENAPI_JSON: &str = include_str!("../openapi/kizen-gateway.openapi.json");

/// The admin listener's routes: health, readiness, metrics and the OpenAPI document.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route(
            "/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON) }),
        )
        .with_state(state)
}

async fn readyz(State(state): State<AppState>) -> Response {
    let keys = state.verifier.has_keys();
    let store = state.store.ping().await.is_ok();
    let draining = state.draining.load(Ordering::SeqCst);
    let ready = keys && store && !draining;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "checks": { "keys_loaded": keys, "store_reachable": store, "draining": draining },
    });
    (status, Json(body)).into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    if let Ok(Some(entries)) = state.store.entry_count().await {
        state.metrics.store_entries.set(entries as i64);
    }
    // A count tokio keeps anyway, read only when scraped: nothing on the request path.
    let tasks = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    state
        .metrics
        .runtime_alive_tasks
        .set(i64::try_from(tasks).unwrap_or(i64::MAX));
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}
