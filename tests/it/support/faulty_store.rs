//! The memory store behind switches: made unavailable, made to fail the next settles, or made to
//! panic while settling a confirmation.

use std::{
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    time::Duration,
};

use kizen_gateway::store::{
    Admission, Claim, ClaimRules, IssuedUpload, Lease, MemoryStore, PresignRules, Settled,
    StoreError, StoreLimits, StoredResponse, UploadStore, Usage,
};
use time::OffsetDateTime;
use tokio::sync::Notify;
use uuid::Uuid;

pub struct FaultyStore {
    pub inner: MemoryStore,
    /// Every operation fails with `Unavailable`.
    pub unavailable: AtomicBool,
    /// The next this many settles (`consume` or `release`) fail with `Unavailable`.
    pub failing_settles: AtomicUsize,
    /// `consume` panics.
    pub panic_on_consume: AtomicBool,
    /// Settles that failed so far, and a signal after each.
    pub failed_settles: AtomicUsize,
    pub settle_failed: Notify,
}

impl Default for FaultyStore {
    fn default() -> Self {
        Self::new()
    }
}

impl FaultyStore {
    pub fn new() -> Self {
        Self {
            inner: MemoryStore::new(StoreLimits {
                max_uploads: 1000,
                max_uploads_per_user: 100,
                remember_expired: Duration::from_secs(3600),
            }),
            unavailable: AtomicBool::new(false),
            failing_settles: AtomicUsize::new(0),
            panic_on_consume: AtomicBool::new(false),
            failed_settles: AtomicUsize::new(0),
            settle_failed: Notify::new(),
        }
    }

    fn up(&self) -> Result<(), StoreError> {
        match self.unavailable.load(Ordering::SeqCst) {
            true => Err(StoreError::Unavailable),
            false => Ok(()),
        }
    }

    fn settle_up(&self) -> Result<(), StoreError> {
        self.up()?;
        let failing = self
            .failing_settles
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if failing.is_ok() {
            self.failed_settles.fetch_add(1, Ordering::SeqCst);
            self.settle_failed.notify_waiters();
            return Err(StoreError::Unavailable);
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl UploadStore for FaultyStore {
    async fn usage(&self, user: &str, now: OffsetDateTime) -> Result<Usage, StoreError> {
        self.up()?;
        self.inner.usage(user, now).await
    }

    async fn admit(
        &self,
        user: &str,
        now: OffsetDateTime,
        rules: &PresignRules,
    ) -> Result<Admission, StoreError> {
        self.up()?;
        self.inner.admit(user, now, rules).await
    }

    async fn record(
        &self,
        upload: &IssuedUpload,
        max_outstanding: usize,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        self.up()?;
        self.inner.record(upload, max_outstanding, now).await
    }

    async fn claim(
        &self,
        user: &str,
        id: Uuid,
        key: &str,
        now: OffsetDateTime,
        rules: &ClaimRules,
    ) -> Result<Claim, StoreError> {
        self.up()?;
        self.inner.claim(user, id, key, now, rules).await
    }

    async fn release(
        &self,
        upload: &IssuedUpload,
        lease: Lease,
        now: OffsetDateTime,
        rules: &ClaimRules,
    ) -> Result<Settled, StoreError> {
        self.settle_up()?;
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
        if self.panic_on_consume.load(Ordering::SeqCst) {
            panic!("FaultyStore: deliberate panic to provoke the gateway's internal_error");
        }
        self.settle_up()?;
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
        self.up()
    }
}
