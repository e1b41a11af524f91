//! The application's state, `AppState(Arc<App>)`: every part built once from the configuration
//! (verifier, upstream client, store, settler, reloader, metrics) and shared by the handlers.

use std::{
    ops::Deref,
    sync::{Arc, atomic::AtomicBool},
};

use crate::{
    auth::Verifier,
    clock::{Clock, SystemClock},
    config::{Config, StoreKind},
    domain::ConfirmationWindow,
    observability::metrics::Metrics,
    rate_limit::RateLimit,
    reload::{ReloadOutcome, ReloadTargets, Reloader},
    settle::Settler,
    store::{MemoryStore, RedisSettings, RedisStore, SentinelSettings, StoreLimits, UploadStore},
    upstream::UpstreamClient,
};

/// Everything a request needs, built once from the configuration (see [`App::from_config`]).
pub struct App {
    /// The validated configuration the app was built from.
    pub config: Config,
    /// Verifies the end users' bearer tokens.
    pub verifier: Verifier,
    /// The pooled client of the Kizen API, holding the server-side credentials.
    pub upstream: UpstreamClient,
    /// The upload store of `store.kind`: issued uploads, rate-limit budgets, quota counters.
    pub store: Arc<dyn UploadStore>,
    /// Each user's presign budget (kept by the store).
    pub presign_rate: RateLimit,
    /// Each user's confirmation budget (kept by the store).
    pub confirm_rate: RateLimit,
    /// Retries the settle of forwarded confirmations whose outcome the store did not take.
    pub settler: Settler,
    /// The app's clock for upload windows and quota days (tokens always use the system clock).
    pub clock: Arc<dyn Clock>,
    /// The Prometheus metrics, served by the admin listener.
    pub metrics: Arc<Metrics>,
    /// Set on SIGTERM: readiness turns false before the listener closes.
    pub draining: AtomicBool,
    /// Re-reads secret and key files when they change (see [`App::reload`]).
    pub reloader: Reloader,
}

/// The axum state of every handler and middleware: one shared [`App`], cheap to clone.
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
                let settings =
                    RedisSettings {
                        urls: redis
                            .urls
                            .iter()
                            .map(|url| url.as_str().to_owned())
                            .collect(),
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
                        wait_for_replicas: redis.wait_for_replicas,
                        sweep_grace: 2 * config.store.sweep_interval,
                        sentinel: match &redis.sentinel {
                            Some(sentinel) => Some(SentinelSettings {
                                master_name: sentinel.master_name.clone(),
                                urls: sentinel
                                    .urls
                                    .iter()
                                    .map(|url| url.as_str().to_owned())
                                    .collect(),
                                password: match &sentinel.password {
                                    Some(source) => Some(source.load().map_err(|e| {
                                        format!("store.redis.sentinel.password: {e}")
                                    })?),
                                    None => None,
                                },
                            }),
                            None => None,
                        },
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
            settler: Settler::new(store.clone(), metrics.clone(), settle_budget),
            store,
            clock,
            metrics,
            draining: AtomicBool::new(false),
            reloader: Reloader::new(&config_for_reload),
        })
    }

    /// How long after its presign an upload may be confirmed.
    pub fn confirmation_window(&self) -> ConfirmationWindow {
        ConfirmationWindow {
            grace: self.config.confirm.grace,
            max_window: self.config.confirm.max_window,
        }
    }

    /// Reloads secrets and keys when their files changed (or always, when `force`).
    pub fn reload(&self, source: &'static str, force: bool) -> ReloadOutcome {
        let targets = ReloadTargets {
            config: &self.config,
            upstream: &self.upstream,
            verifier: &self.verifier,
            metrics: &self.metrics,
        };
        self.reloader.reload(targets, source, force)
    }
}
