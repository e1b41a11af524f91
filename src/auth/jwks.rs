//! A JWKS endpoint's keys: fetched at start, refreshed in the background, refetched when a token
//! names an unknown `kid` (at most once per cooldown), and the last good set kept when a fetch fails.
//!
//! The unknown-`kid` refetch is single-flight and runs in its own task: a request that needs it
//! starts it or joins the one in flight, and waits for its end without holding any lock, at most
//! for the fetch timeout. Within the cooldown nothing is fetched and the request is answered at
//! once with the cached set.
//!
//! A fetch that changes the key set (compared key by key, as the document described the usable
//! keys) flushes the verified-token cache once the new set is in place; one that brings the same
//! keys leaves it alone.

use std::{
    sync::{Arc, Mutex, PoisonError, RwLock},
    time::Duration,
};

use jsonwebtoken::{Algorithm, jwk::Jwk};
use serde::Deserialize;
use tokio::{sync::watch, time::Instant};

use super::{
    cache::TokenCache,
    keys::{ClaimRules, KeySet, VerificationKey, key_from_jwk},
};
use crate::config::JwksConfig;

/// Largest JWKS document accepted.
const MAX_JWKS_BYTES: usize = 256 * 1024;

/// The identity provider's key set (`auth.jwks`): fetched at start, refreshed in the background,
/// refetched on an unknown `kid` at most once per cooldown.
pub struct JwksCache {
    url: reqwest::Url,
    client: reqwest::Client,
    rsa_default: Algorithm,
    rules: ClaimRules,
    refetch_cooldown: Duration,
    /// Bound of one fetch (the HTTP client's whole-request timeout) and of a wait for a refetch.
    fetch_timeout: Duration,
    keys: RwLock<Arc<KeySet>>,
    /// The usable keys of the last fetched set, as JSON: a fetch flushes the token cache when
    /// they differ. Locked only to compare and replace them with the set.
    fingerprint: Mutex<Option<String>>,
    token_cache: Option<Arc<TokenCache>>,
    /// The unknown-`kid` refetch. Locked only to read or update it, never across a fetch.
    refetch: Mutex<Refetch>,
    metrics: Arc<crate::observability::metrics::Metrics>,
}

#[derive(Default)]
struct Refetch {
    /// When the last unknown-`kid` refetch started (the cooldown runs from there).
    last_started: Option<Instant>,
    /// The refetch in flight: its receiver turns `true` when it has ended, either way.
    in_flight: Option<watch::Receiver<bool>>,
}

/// Ends a refetch, also if its task panics or is cancelled: clears the in-flight refetch (after the
/// new set, if any, is in place) and then wakes its waiters.
struct EndRefetch {
    cache: Arc<JwksCache>,
    ended: watch::Sender<bool>,
}

impl Drop for EndRefetch {
    fn drop(&mut self) {
        self.cache.refetch_state().in_flight = None;
        self.ended.send_replace(true);
    }
}

#[derive(Deserialize)]
struct JwksDocument {
    keys: Vec<serde_json::Value>,
}

impl JwksCache {
    /// A cache of the set at `url`, empty until its first fetch (see [`JwksCache::refresh`]).
    pub fn new(
        config: &JwksConfig,
        url: &str,
        rules: ClaimRules,
        metrics: Arc<crate::observability::metrics::Metrics>,
        token_cache: Option<Arc<TokenCache>>,
    ) -> Result<Self, String> {
        let url = reqwest::Url::parse(url).map_err(|e| format!("auth.jwks.url: {e}"))?;
        // Built before the upstream client: the provider must be installed here too.
        crate::tls::install_crypto_provider();
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(config.fetch_timeout)
            .connect_timeout(config.fetch_timeout)
            .build()
            .map_err(|e| format!("auth.jwks: cannot build HTTP client: {e}"))?;
        Ok(Self {
            url,
            client,
            rsa_default: config.rsa_algorithm.0,
            rules,
            refetch_cooldown: config.refetch_cooldown,
            fetch_timeout: config.fetch_timeout,
            keys: RwLock::new(Arc::new(KeySet::default())),
            fingerprint: Mutex::new(None),
            token_cache,
            refetch: Mutex::new(Refetch::default()),
            metrics,
        })
    }

    fn count_refresh(&self, result: &'static str) {
        self.metrics
            .jwks_refreshes
            .get_or_create(&crate::observability::metrics::ResultLabels { result })
            .inc();
    }

    /// The key set in force: the last fetch that succeeded, or empty.
    pub fn keys(&self) -> Arc<KeySet> {
        self.keys.read().expect("jwks lock poisoned").clone()
    }

    /// Fetches the set and replaces the cached one. On failure the cached set stays.
    pub async fn refresh(&self) -> Result<usize, String> {
        match self.fetch().await {
            Ok((set, fingerprint)) => {
                let count = set.len();
                let changed = {
                    let mut last = self
                        .fingerprint
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    *self.keys.write().expect("jwks lock poisoned") = Arc::new(set);
                    let changed = last.as_deref() != Some(fingerprint.as_str());
                    *last = Some(fingerprint);
                    changed
                };
                // After the new set is in place: see `TokenCache::flush`.
                if changed && let Some(cache) = &self.token_cache {
                    cache.flush();
                }
                tracing::info!(keys = count, changed, "jwks fetched");
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

    fn refetch_state(&self) -> std::sync::MutexGuard<'_, Refetch> {
        self.refetch.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Called for a token whose `kid` is not cached. Starts a refetch unless one is in flight (then
    /// joins it) or one started within the cooldown (then answers the cached set at once). Waits
    /// for the refetch's end at most the fetch timeout, holding no lock; returns the (possibly new)
    /// set.
    pub async fn refetch_for_unknown_kid(self: &Arc<Self>, kid: &str) -> Arc<KeySet> {
        let mut ended = {
            let mut state = self.refetch_state();
            // A refetch replaces the set before it leaves `in_flight`: one that ended while this
            // request was on its way is seen here.
            let current = self.keys();
            if current.has_kid(kid) {
                return current;
            }
            match &state.in_flight {
                Some(ended) => ended.clone(),
                None => {
                    let now = Instant::now();
                    if state
                        .last_started
                        .is_some_and(|at| now.duration_since(at) < self.refetch_cooldown)
                    {
                        return current;
                    }
                    state.last_started = Some(now);
                    let (sender, ended) = watch::channel(false);
                    state.in_flight = Some(ended.clone());
                    // Its own task: a request that goes away cancels no fetch others wait for.
                    let end = EndRefetch {
                        cache: Arc::clone(self),
                        ended: sender,
                    };
                    tokio::spawn(async move {
                        let _ = end.cache.refresh().await;
                        drop(end);
                    });
                    ended
                }
            }
        };
        // The fetch itself ends within the timeout; this bound only guards against a stuck task.
        let _ = tokio::time::timeout(self.fetch_timeout, ended.wait_for(|&done| done)).await;
        self.keys()
    }

    /// The usable keys of the document, and their JWKs as JSON (in document order).
    async fn fetch(&self) -> Result<(KeySet, String), String> {
        let mut response = self
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
        // Read piece by piece: a body without Content-Length (chunked) is dropped as soon as it
        // passes the limit, never read in full first.
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| format!("reading body: {}", e.without_url()))?
        {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err("document too large".into());
            }
            body.extend_from_slice(&chunk);
        }
        parse_document(&body, self.rsa_default, &self.rules)
    }

    /// Refreshes every `interval` until the returned task is aborted.
    pub fn spawn_refresh(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
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

/// The usable keys of a JWKS document, and their JWKs as JSON (in document order), which
/// [`JwksCache`] compares between fetches. Unusable keys are skipped with a warning; a document
/// without any usable key is refused.
pub(crate) fn parse_document(
    body: &[u8],
    rsa_default: Algorithm,
    rules: &ClaimRules,
) -> Result<(KeySet, String), String> {
    let document: JwksDocument =
        serde_json::from_slice(body).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut keys: Vec<VerificationKey> = Vec::with_capacity(document.keys.len());
    let mut usable: Vec<serde_json::Value> = Vec::with_capacity(document.keys.len());
    for raw in document.keys {
        let kid = raw
            .get("kid")
            .and_then(|k| k.as_str())
            .unwrap_or("")
            .to_owned();
        let parsed = serde_json::from_value::<Jwk>(raw.clone())
            .map_err(|e| e.to_string())
            .and_then(|jwk| key_from_jwk(&jwk, rsa_default, rules));
        match parsed {
            Ok(key) => {
                keys.push(key);
                usable.push(raw);
            }
            Err(why) => tracing::warn!(kid = ?kid, reason = %why, "jwks key skipped"),
        }
    }
    if keys.is_empty() {
        return Err("no usable signature key in the document".into());
    }
    // Objects serialize with sorted members: the same keys give the same text.
    let fingerprint = serde_json::Value::Array(usable).to_string();
    Ok((KeySet::new(keys), fingerprint))
}
