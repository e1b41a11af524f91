//! Prometheus metrics, one registry per app. Label values come from fixed vocabularies (route
//! labels, status codes, problem codes): never a user id or anything else unbounded.

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};

/// The labels of `kizen_gateway_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route's fixed label ([`crate::paths::route_label`]): `presign`, `confirm` or `other`.
    pub route: &'static str,
    /// The HTTP status answered.
    pub status: u16,
    /// The request's outcome in one word: a problem code, or a success word such as `ok`.
    pub outcome: &'static str,
}

/// The labels of the duration histograms: the route alone.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// The route's fixed label: `presign`, `confirm` or `other`.
    pub route: &'static str,
}

/// The labels of counters broken down by why something was refused.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// A problem code, from a fixed vocabulary: `token_expired`, `daily_upload_quota_exceeded`, ...
    pub reason: &'static str,
}

/// The labels of `kizen_gateway_rate_limited_total`: the refused user's quota tier.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TierLabels {
    /// A configured tier's name (`quotas.tiers`), or `unknown` before the user is known.
    pub tier: String,
}

/// The labels of `kizen_gateway_quota_rejections_total`: the tier and the quota's problem code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TierReasonLabels {
    /// A configured tier's name (`quotas.tiers`), or `unknown` before the user is known.
    pub tier: String,
    /// The quota's problem code: `too_many_outstanding_uploads`, `daily_upload_quota_exceeded`
    /// or `daily_byte_quota_exceeded`.
    pub reason: &'static str,
}

/// The labels of counters broken down by how an operation ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// A fixed word: `success`/`failure` for JWKS fetches; `settled`, `retried`, `stale` or
    /// `abandoned` for settles.
    pub result: &'static str,
}

/// The labels of `kizen_gateway_reloads_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// What triggered the reload: `file` (a changed file seen by the periodic check) or `sighup`.
    pub source: &'static str,
    /// `success`, or `failure` when the new files did not load and the old values stay in force.
    pub result: &'static str,
}

fn latency_histogram() -> Histogram {
    // 1 ms .. ~16 s
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.001, 2.0, 15,
    ))
}

/// The gateway's Prometheus metrics, all prefixed `kizen_gateway_`, served on the admin `/metrics`.
pub struct Metrics {
    registry: Registry,
    /// `kizen_gateway_requests_total`: requests answered, by route, status and outcome.
    pub requests: Family<RequestLabels, Counter>,
    /// `kizen_gateway_request_duration_seconds`: time to answer a request, upstream call included.
    pub request_duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    /// `kizen_gateway_upstream_duration_seconds`: time of Kizen calls that got an answer, by route.
    pub upstream_duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    /// `kizen_gateway_auth_failures_total`: refused bearer tokens, by reason (the `token_*` codes).
    pub auth_failures: Family<ReasonLabels, Counter>,
    /// `kizen_gateway_rate_limited_total`: presigns and confirmations refused by a rate limit,
    /// by the user's quota tier.
    pub rate_limited: Family<TierLabels, Counter>,
    /// `kizen_gateway_quota_rejections_total`: presigns and confirmations refused by a quota, by
    /// the user's tier and the quota's problem code.
    pub quota_rejections: Family<TierReasonLabels, Counter>,
    /// `kizen_gateway_uploads_issued_total`: uploads presigned and recorded.
    pub uploads_issued: Counter,
    /// `kizen_gateway_uploads_confirmed_total`: uploads confirmed upstream.
    pub uploads_confirmed: Counter,
    /// `kizen_gateway_uploads_rejected_total`: confirmations refused, by reason.
    pub uploads_rejected: Family<ReasonLabels, Counter>,
    /// `kizen_gateway_uploads_expired_total`: uploads forgotten without ever being confirmed.
    pub uploads_expired: Counter,
    /// `kizen_gateway_store_entries`: uploads held by the store, set on each scrape (Redis: its
    /// expiry index, see `store::redis`).
    pub store_entries: Gauge,
    /// `kizen_gateway_runtime_alive_tasks`: tokio tasks alive in the gateway's runtime, set on
    /// each scrape (a task leak shows here first, long before memory does).
    pub runtime_alive_tasks: Gauge,
    /// `kizen_gateway_store_errors_total`: requests refused because the store failed or was full.
    pub store_errors: Counter,
    /// `kizen_gateway_jwks_refreshes_total`: JWKS fetches, by result.
    pub jwks_refreshes: Family<ResultLabels, Counter>,
    /// `kizen_gateway_reloads_total`: re-reads of secret and key files, by source and result.
    pub reloads: Family<ReloadLabels, Counter>,
    /// `kizen_gateway_confirmation_settles_total`: outcomes of recording forwarded confirmations.
    pub settles: Family<ResultLabels, Counter>,
    /// `kizen_gateway_token_cache_hits_total`: tokens accepted from the cache, no signature check.
    pub token_cache_hits: Counter,
    /// `kizen_gateway_token_cache_misses_total`: tokens not in the cache, verified in full.
    pub token_cache_misses: Counter,
    /// `kizen_gateway_token_cache_evictions_total`: unexpired tokens dropped from the full cache.
    pub token_cache_evictions: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("kizen_gateway");
        let metrics = Self {
            requests: Family::default(),
            request_duration: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            upstream_duration: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            auth_failures: Family::default(),
            rate_limited: Family::default(),
            quota_rejections: Family::default(),
            uploads_issued: Counter::default(),
            uploads_confirmed: Counter::default(),
            uploads_rejected: Family::default(),
            uploads_expired: Counter::default(),
            store_entries: Gauge::default(),
            runtime_alive_tasks: Gauge::default(),
            store_errors: Counter::default(),
            jwks_refreshes: Family::default(),
            reloads: Family::default(),
            settles: Family::default(),
            token_cache_hits: Counter::default(),
            token_cache_misses: Counter::default(),
            token_cache_evictions: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "requests",
            "Requests answered, by route, status and outcome",
            metrics.requests.clone(),
        );
        registry.register_with_unit(
            "request_duration",
            "Time to answer a request, upstream call included",
            Unit::Seconds,
            metrics.request_duration.clone(),
        );
        registry.register_with_unit(
            "upstream_duration",
            "Time of calls to the Kizen API",
            Unit::Seconds,
            metrics.upstream_duration.clone(),
        );
        registry.register(
            "auth_failures",
            "Refused bearer tokens, by reason",
            metrics.auth_failures.clone(),
        );
        registry.register(
            "rate_limited",
            "Requests refused by a per-user rate limit (presigns or confirmations), by the user's quota tier",
            metrics.rate_limited.clone(),
        );
        registry.register(
            "quota_rejections",
            "Presigns and confirmations refused by a quota, by the user's tier and the quota",
            metrics.quota_rejections.clone(),
        );
        registry.register(
            "uploads_issued",
            "Uploads presigned and recorded",
            metrics.uploads_issued.clone(),
        );
        registry.register(
            "uploads_confirmed",
            "Uploads confirmed upstream",
            metrics.uploads_confirmed.clone(),
        );
        registry.register(
            "uploads_rejected",
            "Confirmations refused, by reason",
            metrics.uploads_rejected.clone(),
        );
        registry.register(
            "uploads_expired",
            "Uploads forgotten unconfirmed",
            metrics.uploads_expired.clone(),
        );
        registry.register(
            "store_entries",
            "Uploads held by the store (Redis: shared by every replica)",
            metrics.store_entries.clone(),
        );
        registry.register(
            "runtime_alive_tasks",
            "Tokio tasks alive in the gateway's runtime (set when scraped)",
            metrics.runtime_alive_tasks.clone(),
        );
        registry.register(
            "store_errors",
            "Requests refused because the store failed",
            metrics.store_errors.clone(),
        );
        registry.register(
            "jwks_refreshes",
            "JWKS fetches, by result",
            metrics.jwks_refreshes.clone(),
        );
        registry.register(
            "reloads",
            "Re-reads of secret and key files, by source and result",
            metrics.reloads.clone(),
        );
        registry.register(
            "confirmation_settles",
            "Outcomes of forwarded confirmations recorded in the store, by result: settled, retried (a background retry after a store failure), stale (the claim was not held; an error), abandoned (retries ran out; the upload stays unconfirmable)",
            metrics.settles.clone(),
        );
        registry.register(
            "token_cache_hits",
            "Bearer tokens accepted from the verified-token cache, without signature work",
            metrics.token_cache_hits.clone(),
        );
        registry.register(
            "token_cache_misses",
            "Bearer tokens looked up in the verified-token cache and verified in full",
            metrics.token_cache_misses.clone(),
        );
        registry.register(
            "token_cache_evictions",
            "Unexpired tokens dropped from the full verified-token cache to make room",
            metrics.token_cache_evictions.clone(),
        );
        Self {
            registry,
            ..metrics
        }
    }

    /// Counts one answered request; the outcome (a problem code or a success word) also feeds
    /// the auth, rate-limit, quota and store counters. `tier` is the user's quota tier once the
    /// token verified (a configured tier's name: a bounded label), `None` before.
    pub fn observe_request(
        &self,
        route: &'static str,
        status: u16,
        outcome: &'static str,
        tier: Option<&str>,
        seconds: f64,
    ) {
        let tier = || tier.unwrap_or("unknown").to_owned();
        self.requests
            .get_or_create(&RequestLabels {
                route,
                status,
                outcome,
            })
            .inc();
        self.request_duration
            .get_or_create(&RouteLabels { route })
            .observe(seconds);
        match outcome {
            reason if reason.starts_with("token_") => {
                self.auth_failures
                    .get_or_create(&ReasonLabels { reason })
                    .inc();
            }
            "rate_limited" => {
                self.rate_limited
                    .get_or_create(&TierLabels { tier: tier() })
                    .inc();
            }
            "too_many_outstanding_uploads"
            | "daily_upload_quota_exceeded"
            | "daily_byte_quota_exceeded" => {
                self.quota_rejections
                    .get_or_create(&TierReasonLabels {
                        tier: tier(),
                        reason: outcome,
                    })
                    .inc();
            }
            "store_unavailable" | "store_full" => {
                self.store_errors.inc();
            }
            _ => {}
        }
    }

    /// Counts one settle of a forwarded confirmation.
    pub fn settle_result(&self, result: &'static str) {
        self.settles.get_or_create(&ResultLabels { result }).inc();
    }

    /// Every metric in the OpenMetrics text format, as `/metrics` serves it.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::Metrics;

    #[test]
    fn refusals_are_counted_by_tier() {
        let metrics = Metrics::new();
        metrics.observe_request("presign", 429, "rate_limited", Some("pro"), 0.001);
        metrics.observe_request("confirm", 429, "rate_limited", Some("pro"), 0.001);
        metrics.observe_request(
            "presign",
            429,
            "daily_byte_quota_exceeded",
            Some("default"),
            0.001,
        );
        metrics.observe_request("presign", 429, "rate_limited", None, 0.001);
        let text = metrics.render();
        for line in [
            r#"kizen_gateway_rate_limited_total{tier="pro"} 2"#,
            r#"kizen_gateway_rate_limited_total{tier="unknown"} 1"#,
            r#"kizen_gateway_quota_rejections_total{tier="default",reason="daily_byte_quota_exceeded"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }
}
