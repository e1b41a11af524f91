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
    observability::metrics::Metrics,
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
        /// Kizen's answer, kept to replay to a repeat of this confirmation.
        response: StoredResponse,
        /// The size Kizen reported (`size_bytes`; 0 when absent), for the daily byte quota.
        size_bytes: u64,
        /// When Kizen answered, by the app's clock: the day the confirmation counts toward.
        at: OffsetDateTime,
    },
    /// Kizen refused it or was not reached: give the upload back, counting a failed attempt.
    Failed {
        /// When Kizen answered or the call failed, by the app's clock: the start of any backoff.
        at: OffsetDateTime,
        /// The attempt limit and backoff the failed attempt counts against.
        rules: ClaimRules,
    },
}

/// Records the outcome of forwarded confirmations in the store, retrying in the background with
/// backoff while the store fails, until `confirm.claim_lease` after the claim.
#[derive(Clone)]
pub struct Settler {
    store: Arc<dyn UploadStore>,
    metrics: Arc<Metrics>,
    /// How long after its claim a settle may still be retried (`confirm.claim_lease`).
    budget: Duration,
    pending: Arc<AtomicUsize>,
}

impl Settler {
    /// A settler over `store` whose retries stop `budget` after the claim.
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
        upload: &IssuedUpload,
        lease: Lease,
        settlement: Settlement,
        claimed_at: Instant,
    ) -> bool {
        match self.attempt(upload, lease, &settlement).await {
            Ok(()) => return true,
            Err(error) => tracing::warn!(
                %error,
                s3object_id = %upload.s3object_id,
                "could not record the confirmation's outcome; retrying in the background"
            ),
        }
        if self.pending.fetch_add(1, Ordering::SeqCst) >= MAX_PENDING {
            self.pending.fetch_sub(1, Ordering::SeqCst);
            self.give_up(upload, "too many settles pending");
            return false;
        }
        let (settler, upload) = (self.clone(), upload.clone());
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
