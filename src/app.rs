//! The application: its state (`AppState(Arc<App>)`) and its router with every middleware,
//! ordered in one place.

use std::{
    ops::Deref,
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

use axum::{
    BoxError, Router,
    error_handling::HandleErrorLayer,
    http::{HeaderName, HeaderValue, Method, header},
    middleware::{from_fn, from_fn_with_state},
    response::IntoResponse,
    routing::{get, post},
};
use time::OffsetDateTime;
use tower::ServiceBuilder;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::{
    auth::Verifier,
    clock::{Clock, SystemClock},
    config::{Config, StoreKind},
    error::GatewayError,
    http_guard,
    metrics::Metrics,
    observability::{self, X_REQUEST_ID},
    rate_limit::RateLimit,
    routes,
    store::{MemoryStore, RedisSettings, RedisStore, StoreLimits, UploadStore},
    upstream::{PRESIGN_PATH, SUCCESS_PATH, UpstreamClient},
};

pub struct App {
    pub config: Config,
    pub verifier: Verifier,
    pub upstream: UpstreamClient,
    pub store: Arc<dyn UploadStore>,
    /// Each user's presign budget (kept by the store).
    pub presign_rate: RateLimit,
    /// Each user's confirmation budget (kept by the store).
    pub confirm_rate: RateLimit,
    /// Retries the settle of forwarded confirmations whose outcome the store did not take.
    pub settler: crate::settle::Settler,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
    /// Set on SIGTERM: readiness turns false before the listener closes.
    pub draining: AtomicBool,
    pub reloader: crate::reload::Reloader,
}

#[derive(Clone)]
pub struct AppState(pub Arc<App>);

impl Deref for AppState {
    type Target = App;

    fn deref(&self) -> &App {
        &self.0
    }
}

impl App {
    /// Builds every part from the configuration: keys parsed, secrets loaded, client pooled,
    /// store connected. Errors name the option at fault.
    pub async fn from_config(config: Config) -> Result<Self, String> {
        Self::from_config_with_clock(config, Arc::new(SystemClock)).await
    }

    /// Like [`App::from_config`] with a given clock (tests move time by hand).
    pub async fn from_config_with_clock(
        config: Config,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, String> {
        let limits = StoreLimits {
            max_uploads: config.store.max_uploads,
            max_uploads_per_user: config.store.max_uploads_per_user,
            remember_expired: config.confirm.remember_expired,
        };
        let store: Arc<dyn UploadStore> = match config.store.kind {
            StoreKind::Memory => Arc::new(MemoryStore::new(limits)),
            StoreKind::Redis => {
                let redis = &config.store.redis;
                let settings = RedisSettings {
                    urls: redis.urls.clone(),
                    cluster: redis.cluster,
                    password: match &redis.password {
                        Some(source) => Some(
                            source
                                .load()
                                .map_err(|e| format!("store.redis.password: {e}"))?,
                        ),
                        None => None,
                    },
                    prefix: redis.prefix.clone(),
                    operation_timeout: redis.operation_timeout,
                };
                Arc::new(RedisStore::connect(&settings, limits).await?)
            }
        };
        Self::with_parts(config, store, clock)
    }

    /// Assembles an app from given parts (tests, embedding).
    pub fn with_parts(
        config: Config,
        store: Arc<dyn UploadStore>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, String> {
        let metrics = Arc::new(Metrics::new());
        let config_for_reload = config.clone();
        let verifier = Verifier::new(
            &config.auth,
            config.upstream.user_id_claim.clone(),
            config.quotas.tier_claim.clone(),
            metrics.clone(),
        )?;
        let upstream = UpstreamClient::new(&config.upstream, metrics.clone())?;
        let settle_budget = config.confirm.claim_lease;
        let presign_rate = RateLimit {
            burst: config.presign.rate_limit_burst,
            period: config.presign.rate_limit_period,
        };
        let confirm_rate = RateLimit {
            burst: config.confirm.rate_limit_burst,
            period: config.confirm.rate_limit_period,
        };
        Ok(Self {
            config,
            verifier,
            upstream,
            presign_rate,
            confirm_rate,
            settler: crate::settle::Settler::new(store.clone(), metrics.clone(), settle_budget),
            store,
            clock,
            metrics,
            draining: AtomicBool::new(false),
            reloader: crate::reload::Reloader::new(&config_for_reload),
        })
    }

    /// The last instant a confirmation is accepted: the upload's `expires_at` plus the grace,
    /// capped at `max_window` after the presign so that an upstream clock cannot stretch it.
    pub fn confirmation_window_end(
        &self,
        issued_at: OffsetDateTime,
        expires_at: OffsetDateTime,
    ) -> OffsetDateTime {
        let confirm = &self.config.confirm;
        let by_expiry = expires_at + confirm.grace;
        let cap = issued_at + confirm.max_window;
        by_expiry.min(cap)
    }
}

/// The whole HTTP application. Middleware, outermost first:
/// request id and access log -> CORS -> load shedding -> concurrency limit -> deadline ->
/// strict HTTP + route allowlist -> the two routes.
pub fn app(state: AppState) -> Router {
    let config = &state.config;
    let routes = Router::new()
        .route(PRESIGN_PATH, get(routes::presign::presign))
        .route(SUCCESS_PATH, post(routes::confirm::confirm))
        .with_state(state.clone());

    // One service instance behind `fallback_service`, so that the concurrency limit is global
    // rather than per route.
    let service = ServiceBuilder::new()
        .layer(from_fn_with_state(
            state.metrics.clone(),
            observability::observe,
        ))
        .option_layer(cors(&config.cors.allowed_origins, config.cors.max_age))
        .layer(HandleErrorLayer::new(overload_problem))
        .load_shed()
        .concurrency_limit(config.server.max_concurrent_requests)
        .timeout(config.server.request_timeout)
        .layer(from_fn(http_guard::strict_http))
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
        GatewayError::Internal.into_response()
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

fn cors(origins: &[String], max_age: Duration) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let origins: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
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
