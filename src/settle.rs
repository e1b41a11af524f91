//! Recording the outcome of a forwarded confirmation ("settling" its claim), even when the store
//! fails at that moment.
//!
//! Once a confirmation was forwarded, its claim must end by its own settle: `consume` when Kizen
//! accepted it, `release` when Kizen refused it or was never reached. The claim never lapses by
//! itself, so until the settle lands the upload answers 409 and is never forwarded again. When the
//! store does not take the settle (Redis timed out, restarted or is failing over), the settle is
//! retried in the background with exponential backoff until the claim's lease ends
//! (`confirm.claim_lease` after the claim). A settle that still has not landed by then is given up
//! and counted; the upload then stays unconfirmable (409, then 410 when its window closes) rather
//! than risk a second forward.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use time::OffsetDateTime;
use tokio::time::Instant;

use crate::{
    metrics::Metrics,
    store::{ClaimRules, IssuedUpload, Lease, Settled, StoreError, StoredResponse, UploadStore},
};

/// First wait before retrying a settle; doubled after each failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Settles retried at once, at most: a store outage cannot grow the gateway's memory without bound.
const MAX_PENDING: usize = 10_000;

/// What Kizen said about a forwarded confirmation.
#[derive(Debug, Clone)]
pub enum Settlement {
    /// Kizen accepted it: consume the upload, keep the answer, count it toward the day.
    Confirmed {
        response: StoredResponse,
        size_bytes: u64,
        at: OffsetDateTime,
    },
    /// Kizen refused it or was not reached: give the upload back, counting a failed attempt.
    Failed {
        at: OffsetDateTime,
        rules: ClaimRules,
    },
}

#[derive(Clone)]
pub struct Settler {
    store: Arc<dyn UploadStore>,
    metrics: Arc<Metrics>,
    /// How long after its claim a settle may still be retried (`confirm.claim_lease`).
    budget: Duration,
    pending: Arc<AtomicUsize>,
}

impl Settler {
    pub fn new(store: Arc<dyn UploadStore>, metrics: Arc<Metrics>, budget: Duration) -> Self {
        Self {
            store,
            metrics,
            budget,
            pending: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Settles now; if the store fails, keeps retrying in a background task. Returns whether the
    /// settle landed now.
    pub async fn settle(
        &self,
        upload: IssuedUpload,
        lease: Lease,
        settlement: Settlement,
        claimed_at: Instant,
    ) -> bool {
        match self.attempt(&upload, lease, &settlement).await {
            Ok(()) => return true,
            Err(error) => tracing::warn!(
                %error,
                s3object_id = %upload.s3object_id,
                "could not record the confirmation's outcome; retrying in the background"
            ),
        }
        if self.pending.fetch_add(1, Ordering::SeqCst) >= MAX_PENDING {
            self.pending.fetch_sub(1, Ordering::SeqCst);
            self.give_up(&upload, "too many settles pending");
            return false;
        }
        let settler = self.clone();
        let deadline = claimed_at + self.budget;
        tokio::spawn(async move {
            settler.retry(upload, lease, settlement, deadline).await;
            settler.pending.fetch_sub(1, Ordering::SeqCst);
        });
        false
    }

    /// Settles retried in the background right now.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::SeqCst)
    }

    async fn retry(
        &self,
        upload: IssuedUpload,
        lease: Lease,
        settlement: Settlement,
        deadline: Instant,
    ) {
        let mut backoff = FIRST_BACKOFF;
        loop {
            let wake = Instant::now() + backoff;
            if wake >= deadline {
                self.give_up(&upload, "the claim's lease ended");
                return;
            }
            tokio::time::sleep_until(wake).await;
            self.metrics.settle_result("retried");
            match self.attempt(&upload, lease, &settlement).await {
                Ok(()) => {
                    tracing::info!(s3object_id = %upload.s3object_id, "recorded the confirmation's outcome after a retry");
                    return;
                }
                Err(error) => {
                    tracing::warn!(%error, s3object_id = %upload.s3object_id, "settle retry failed");
                }
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One settle. A stale lease is not an error to retry: it is logged and counted.
    async fn attempt(
        &self,
        upload: &IssuedUpload,
        lease: Lease,
        settlement: &Settlement,
    ) -> Result<(), StoreError> {
        let settled = match settlement {
            Settlement::Confirmed {
                response,
                size_bytes,
                at,
            } => {
                self.store
                    .consume(upload, lease, response.clone(), *size_bytes, *at)
                    .await
            }
            Settlement::Failed { at, rules } => self.store.release(upload, lease, *at, rules).await,
        };
        match settled {
            Ok(Settled::Done) => {
                self.metrics.settle_result("settled");
                Ok(())
            }
            Ok(Settled::Stale) => {
                tracing::error!(
                    s3object_id = %upload.s3object_id,
                    "the confirmation's claim was no longer held when its outcome was recorded"
                );
                self.metrics.store_errors.inc();
                self.metrics.settle_result("stale");
                Ok(())
            }
            Err(error) => {
                self.metrics.store_errors.inc();
                Err(error)
            }
        }
    }

    fn give_up(&self, upload: &IssuedUpload, why: &'static str) {
        tracing::error!(
            s3object_id = %upload.s3object_id,
            reason = why,
            "gave up recording the confirmation's outcome; the upload stays unconfirmable"
        );
        self.metrics.settle_result("abandoned");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use async_trait::async_trait;
    use uuid::Uuid;

    use super::*;
    use crate::{
        rate_limit::RateLimit,
        store::{Admission, Claim, ClaimOutcome, MemoryStore, PresignRules, StoreLimits, Usage},
    };

    /// The memory store whose settles fail while `down` is set.
    struct Flaky {
        inner: MemoryStore,
        down: AtomicBool,
    }

    #[async_trait]
    impl UploadStore for Flaky {
        async fn usage(&self, user: &str, now: OffsetDateTime) -> Result<Usage, StoreError> {
            self.inner.usage(user, now).await
        }
        async fn admit(
            &self,
            user: &str,
            now: OffsetDateTime,
            rules: &PresignRules,
        ) -> Result<Admission, StoreError> {
            self.inner.admit(user, now, rules).await
        }
        async fn record(
            &self,
            upload: IssuedUpload,
            max: usize,
            now: OffsetDateTime,
        ) -> Result<(), StoreError> {
            self.inner.record(upload, max, now).await
        }
        async fn claim(
            &self,
            user: &str,
            id: Uuid,
            key: &str,
            now: OffsetDateTime,
            rules: &ClaimRules,
        ) -> Result<Claim, StoreError> {
            self.inner.claim(user, id, key, now, rules).await
        }
        async fn release(
            &self,
            upload: &IssuedUpload,
            lease: Lease,
            now: OffsetDateTime,
            rules: &ClaimRules,
        ) -> Result<Settled, StoreError> {
            if self.down.load(Ordering::SeqCst) {
                return Err(StoreError::Unavailable);
            }
            self.inner.release(upload, lease, now, rules).await
        }
        async fn consume(
            &self,
            upload: &IssuedUpload,
            lease: Lease,
            response: StoredResponse,
            size_bytes: u64,
            now: OffsetDateTime,
        ) -> Result<Settled, StoreError> {
            if self.down.load(Ordering::SeqCst) {
                return Err(StoreError::Unavailable);
            }
            self.inner
                .consume(upload, lease, response, size_bytes, now)
                .await
        }
        async fn purge(&self, now: OffsetDateTime) -> Result<Vec<IssuedUpload>, StoreError> {
            self.inner.purge(now).await
        }
        async fn entry_count(&self) -> Result<Option<usize>, StoreError> {
            self.inner.entry_count().await
        }
        async fn ping(&self) -> Result<(), StoreError> {
            Ok(())
        }
    }

    const RULES: ClaimRules = ClaimRules {
        rate: RateLimit {
            burst: 100,
            period: Duration::from_secs(60),
        },
        max_attempts: 5,
        attempt_backoff: Duration::from_secs(60),
        max_uploads_per_day: None,
        max_bytes_per_day: None,
    };

    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
    }

    /// A store with one claimed upload of alice's.
    async fn claimed(down: bool) -> (Arc<Flaky>, IssuedUpload, Lease) {
        let store = Arc::new(Flaky {
            inner: MemoryStore::new(StoreLimits {
                max_uploads: 10,
                max_uploads_per_user: 10,
                remember_expired: Duration::from_secs(3600),
            }),
            down: AtomicBool::new(down),
        });
        let id = Uuid::new_v4();
        let upload = IssuedUpload {
            s3object_id: id,
            key: format!("uploads/{id}"),
            user: "alice".into(),
            source: "field_value".into(),
            issued_at: now(),
            window_end: now() + Duration::from_secs(3600),
        };
        store.record(upload.clone(), 5, now()).await.unwrap();
        let ClaimOutcome::Claimed { lease, .. } = store
            .claim("alice", id, &upload.key, now(), &RULES)
            .await
            .unwrap()
            .outcome
        else {
            panic!("claims")
        };
        (store, upload, lease)
    }

    fn confirmed() -> Settlement {
        Settlement::Confirmed {
            response: StoredResponse {
                status: 200,
                content_type: None,
                body: bytes::Bytes::from_static(b"{}"),
            },
            size_bytes: 1,
            at: now(),
        }
    }

    fn count(metrics: &Metrics, result: &str) -> bool {
        metrics.render().contains(&format!(
            "confirmation_settles_total{{result=\"{result}\"}} 1"
        ))
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_settle_is_retried_until_the_store_takes_it() {
        let (store, upload, lease) = claimed(true).await;
        let metrics = Arc::new(Metrics::new());
        let settler = Settler::new(store.clone(), metrics.clone(), Duration::from_secs(60));
        let landed = settler
            .settle(upload.clone(), lease, confirmed(), Instant::now())
            .await;
        assert!(!landed);
        assert_eq!(settler.pending(), 1);
        tokio::time::sleep(Duration::from_secs(2)).await;
        store.down.store(false, Ordering::SeqCst);
        while settler.pending() > 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            store
                .claim("alice", upload.s3object_id, &upload.key, now(), &RULES)
                .await
                .map(|c| c.outcome),
            Ok(ClaimOutcome::AlreadyConfirmed(Some(StoredResponse {
                status: 200,
                content_type: None,
                body: bytes::Bytes::from_static(b"{}"),
            })))
        );
        assert!(count(&metrics, "settled"), "{}", metrics.render());
    }

    #[tokio::test(start_paused = true)]
    async fn a_settle_that_never_lands_is_given_up_at_the_end_of_the_lease() {
        let (store, upload, lease) = claimed(true).await;
        let metrics = Arc::new(Metrics::new());
        let settler = Settler::new(store.clone(), metrics.clone(), Duration::from_secs(60));
        let started = Instant::now();
        settler
            .settle(upload.clone(), lease, confirmed(), started)
            .await;
        while settler.pending() > 0 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        assert!(started.elapsed() <= Duration::from_secs(61));
        assert!(count(&metrics, "abandoned"), "{}", metrics.render());
        // The upload stays held: never claimable again, so never forwarded twice.
        store.down.store(false, Ordering::SeqCst);
        assert_eq!(
            store
                .claim("alice", upload.s3object_id, &upload.key, now(), &RULES)
                .await
                .map(|c| c.outcome),
            Ok(ClaimOutcome::InFlight)
        );
    }

    #[tokio::test]
    async fn a_settle_for_a_claim_not_held_is_counted_as_an_error() {
        let (store, upload, _lease) = claimed(false).await;
        let metrics = Arc::new(Metrics::new());
        let settler = Settler::new(store, metrics.clone(), Duration::from_secs(60));
        let foreign = Lease(Uuid::new_v4());
        let failed = Settlement::Failed {
            at: now(),
            rules: RULES,
        };
        assert!(
            settler
                .settle(upload, foreign, failed, Instant::now())
                .await
        );
        assert!(count(&metrics, "stale"), "{}", metrics.render());
        assert!(metrics.render().contains("store_errors_total 1"));
    }
}
