//! The whole HTTP application: the two routes and every middleware, ordered in this one file.

use std::time::Duration;

use axum::{
    BoxError, Router,
    error_handling::HandleErrorLayer,
    extract::DefaultBodyLimit,
    http::{HeaderName, Method, header},
    middleware::from_fn_with_state,
    response::IntoResponse,
    routing::{get, post},
};
use tower::ServiceBuilder;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::{
    config::Origin,
    error::GatewayError,
    http_guard::{self, Guard},
    observability::access::{self, X_REQUEST_ID},
    paths::{PRESIGN_PATH, SUCCESS_PATH},
    routes,
    state::AppState,
};

/// The whole HTTP application. Middleware, outermost first:
/// request id and access log -> (with CORS on: the preflight gate -> CORS) -> load shedding ->
/// concurrency limit -> deadline -> strict HTTP, head limits and route allowlist -> the two
/// routes.
pub fn app(state: AppState) -> Router {
    let config = &state.config;
    let routes = Router::new()
        .route(PRESIGN_PATH, get(routes::presign::presign))
        .route(
            SUCCESS_PATH,
            post(routes::confirm::confirm)
                .layer(DefaultBodyLimit::max(config.confirm.max_body_bytes)),
        )
        .with_state(state.clone());

    // One service instance behind `fallback_service`, so that the concurrency limit is global
    // rather than per route.
    let cors = cors(&config.cors.allowed_origins, config.cors.max_age);
    // The CORS layer answers every OPTIONS request itself: the gate in front of it lets only the
    // preflights on the two routes reach it.
    let preflight_gate = cors.as_ref().map(|_| {
        from_fn_with_state(
            Guard::for_preflights(&config.server),
            http_guard::preflight_gate,
        )
    });
    let service = ServiceBuilder::new()
        .layer(from_fn_with_state(state.metrics.clone(), access::observe))
        .option_layer(preflight_gate)
        .option_layer(cors)
        .layer(HandleErrorLayer::new(overload_problem))
        .load_shed()
        .concurrency_limit(config.server.max_concurrent_requests)
        .timeout(config.server.request_timeout)
        .layer(from_fn_with_state(
            Guard::new(&config.server),
            http_guard::strict_http,
        ))
        .service(routes);
    Router::new().fallback_service(service)
}

async fn overload_problem(error: BoxError) -> axum::response::Response {
    if error.is::<tower::load_shed::error::Overloaded>() {
        GatewayError::Overloaded.into_response()
    } else if error.is::<tower::timeout::error::Elapsed>() {
        GatewayError::RequestTimeout.into_response()
    } else {
        tracing::error!(error = %error, "unhandled middleware error");
        GatewayError::Internal("unhandled middleware error").into_response()
    }
}

/// Headers a browser script may read on a cross-origin answer.
pub const EXPOSED_HEADERS: [&str; 6] = [
    "retry-after",
    "ratelimit-limit",
    "ratelimit-remaining",
    "ratelimit-reset",
    "x-request-id",
    routes::confirm::IDEMPOTENT_REPLAYED,
];

fn cors(origins: &[Origin], max_age: Duration) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let origins = origins.iter().map(|o| o.header_value().clone());
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                X_REQUEST_ID.clone(),
            ])
            .expose_headers(EXPOSED_HEADERS.map(HeaderName::from_static))
            .max_age(max_age),
    )
}
