//! A JWKS endpoint's keys: fetched at start, refreshed in the background, refetched when a token
//! names an unknown `kid` (at most once per cooldown), and the last good set kept when a fetch fails.

use std::sync::{Arc, RwLock};

use jsonwebtoken::{Algorithm, jwk::Jwk};
use serde::Deserialize;
use tokio::{sync::Mutex, time::Instant};

use super::keys::{ClaimRules, KeySet, VerificationKey, key_from_jwk};
use crate::config::JwksConfig;

/// Largest JWKS document accepted.
const MAX_JWKS_BYTES: usize = 256 * 1024;

pub struct JwksCache {
    url: reqwest::Url,
    client: reqwest::Client,
    rsa_default: Algorithm,
    rules: ClaimRules,
    refetch_cooldown: std::time::Duration,
    keys: RwLock<Arc<KeySet>>,
    /// Time of the last unknown-`kid` refetch; the mutex also makes concurrent refetches one.
    last_refetch: Mutex<Option<Instant>>,
    metrics: Arc<crate::metrics::Metrics>,
}

#[derive(Deserialize)]
struct JwksDocument {
    keys: Vec<serde_json::Value>,
}

impl JwksCache {
    pub fn new(
        config: &JwksConfig,
        url: &str,
        rules: ClaimRules,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Result<Self, String> {
        let url = reqwest::Url::parse(url).map_err(|e| format!("auth.jwks.url: {e}"))?;
        // Built before the upstream client: the provider must be installed here too.
        crate::upstream::install_crypto_provider();
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(config.fetch_timeout)
            .connect_timeout(config.fetch_timeout)
            .build()
            .map_err(|e| format!("auth.jwks: cannot build HTTP client: {e}"))?;
        Ok(Self {
            url,
            client,
            rsa_default: super::keys::parse_rsa_algorithm(&config.rsa_algorithm)?,
            rules,
            refetch_cooldown: config.refetch_cooldown,
            keys: RwLock::new(Arc::new(KeySet::default())),
            last_refetch: Mutex::new(None),
            metrics,
        })
    }

    fn count_refresh(&self, result: &'static str) {
        self.metrics
            .jwks_refreshes
            .get_or_create(&crate::metrics::ResultLabels { result })
            .inc();
    }

    pub fn keys(&self) -> Arc<KeySet> {
        self.keys.read().expect("jwks lock poisoned").clone()
    }

    /// Fetches the set and replaces the cached one. On failure the cached set stays.
    pub async fn refresh(&self) -> Result<usize, String> {
        match self.fetch().await {
            Ok(set) => {
                let count = set.len();
                *self.keys.write().expect("jwks lock poisoned") = Arc::new(set);
                tracing::info!(keys = count, "jwks fetched");
                self.count_refresh("success");
                Ok(count)
            }
            Err(why) => {
                tracing::warn!(error = %why, "jwks fetch failed; keeping the last good key set");
                self.count_refresh("failure");
                Err(why)
            }
        }
    }

    /// Called for a token whose `kid` is not cached. Refetches unless one happened within the
    /// cooldown; returns the (possibly new) set.
    pub async fn refetch_for_unknown_kid(&self, kid: &str) -> Arc<KeySet> {
        let mut last = self.last_refetch.lock().await;
        // Another request may have refetched while this one waited for the lock.
        let current = self.keys();
        if current.has_kid(kid) {
            return current;
        }
        let now = Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < self.refetch_cooldown) {
            return current;
        }
        *last = Some(now);
        let _ = self.refresh().await;
        self.keys()
    }

    async fn fetch(&self) -> Result<KeySet, String> {
        let response = self
            .client
            .get(self.url.clone())
            .header(http::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| format!("request failed: {}", e.without_url()))?;
        if !response.status().is_success() {
            return Err(format!("answered {}", response.status()));
        }
        if response
            .content_length()
            .is_some_and(|len| len > MAX_JWKS_BYTES as u64)
        {
            return Err("document too large".into());
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| format!("reading body: {}", e.without_url()))?;
        if body.len() > MAX_JWKS_BYTES {
            return Err("document too large".into());
        }
        let document: JwksDocument =
            serde_json::from_slice(&body).map_err(|e| format!("not a JWKS document: {e}"))?;
        let mut keys: Vec<VerificationKey> = Vec::with_capacity(document.keys.len());
        for raw in document.keys {
            let kid = raw
                .get("kid")
                .and_then(|k| k.as_str())
                .unwrap_or("")
                .to_owned();
            let parsed = serde_json::from_value::<Jwk>(raw)
                .map_err(|e| e.to_string())
                .and_then(|jwk| key_from_jwk(&jwk, self.rsa_default, &self.rules));
            match parsed {
                Ok(key) => keys.push(key),
                Err(why) => tracing::warn!(kid = ?kid, reason = %why, "jwks key skipped"),
            }
        }
        if keys.is_empty() {
            return Err("no usable signature key in the document".into());
        }
        Ok(KeySet::new(keys))
    }

    /// Refreshes every `interval` until the returned task is aborted.
    pub fn spawn_refresh(
        self: &Arc<Self>,
        interval: std::time::Duration,
    ) -> tokio::task::JoinHandle<()> {
        let cache = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval_at(Instant::now() + interval, interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let Some(cache) = cache.upgrade() else { return };
                let _ = cache.refresh().await;
            }
        })
    }
}
