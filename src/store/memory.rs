//! The embedded store for one replica: a map under one mutex, an expiry index for the sweep, and
//! a per-user index so that quota checks never scan the whole map.

use std::{
    collections::{BTreeSet, HashMap},
    sync::Mutex,
    time::Duration,
};

use async_trait::async_trait;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{
    ClaimOutcome, IssuedUpload, Lease, MAX_STORED_RESPONSE_BYTES, StoreError, StoreLimits,
    StoredResponse, UploadStore, Usage, day_of,
};

#[derive(Debug)]
enum State {
    Issued,
    Claimed { lease: Lease, until: OffsetDateTime },
    Consumed(Option<StoredResponse>),
}

#[derive(Debug)]
struct Entry {
    upload: IssuedUpload,
    state: State,
    forget_at: OffsetDateTime,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<Uuid, Entry>,
    /// Per user, the uploads not yet consumed, ordered by window end: the open ones are those
    /// whose window has not closed, so counting them is a trim of the front and a `len`.
    open: HashMap<String, BTreeSet<(OffsetDateTime, Uuid)>>,
    by_forget_at: BTreeSet<(OffsetDateTime, Uuid)>,
    /// (user, yyyymmdd) -> (uploads, bytes) confirmed that day.
    daily: HashMap<(String, String), (u64, u64)>,
}

impl Inner {
    fn outstanding(&mut self, user: &str, now: OffsetDateTime) -> usize {
        let Some(open) = self.open.get_mut(user) else {
            return 0;
        };
        while open
            .first()
            .is_some_and(|(window_end, _)| *window_end < now)
        {
            open.pop_first();
        }
        let count = open.len();
        if count == 0 {
            self.open.remove(user);
        }
        count
    }

    fn close(&mut self, upload: &IssuedUpload) {
        if let Some(open) = self.open.get_mut(&upload.user) {
            open.remove(&(upload.window_end, upload.s3object_id));
            if open.is_empty() {
                self.open.remove(&upload.user);
            }
        }
    }

    fn purge(&mut self, now: OffsetDateTime) -> Vec<IssuedUpload> {
        // Yesterday's counters still answer a request that straddles midnight; older ones go.
        let today = day_of(now);
        let yesterday = day_of(now - time::Duration::DAY);
        self.daily
            .retain(|(_, day), _| *day == today || *day == yesterday);
        let mut never_confirmed = Vec::new();
        while let Some(&(forget_at, id)) = self.by_forget_at.first() {
            if forget_at > now {
                break;
            }
            self.by_forget_at.pop_first();
            if let Some(entry) = self.entries.remove(&id) {
                self.close(&entry.upload);
                if !matches!(entry.state, State::Consumed(_)) {
                    never_confirmed.push(entry.upload);
                }
            }
        }
        never_confirmed
    }
}

#[derive(Debug)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
    limits: StoreLimits,
}

impl MemoryStore {
    pub fn new(limits: StoreLimits) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            limits,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (every mutation is a few
        // infallible map operations), so a poisoned lock is still usable.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn add(at: OffsetDateTime, duration: Duration) -> OffsetDateTime {
    at.checked_add(time::Duration::try_from(duration).unwrap_or(time::Duration::MAX))
        .unwrap_or(
            OffsetDateTime::from_unix_timestamp(253_402_300_799).expect("year 9999 is valid"),
        )
}

#[async_trait]
impl UploadStore for MemoryStore {
    async fn usage(&self, user: &str, now: OffsetDateTime) -> Result<Usage, StoreError> {
        let mut inner = self.lock();
        let (uploads_today, bytes_today) = inner
            .daily
            .get(&(user.to_owned(), day_of(now)))
            .copied()
            .unwrap_or_default();
        Ok(Usage {
            outstanding: inner.outstanding(user, now),
            uploads_today,
            bytes_today,
        })
    }

    async fn record(
        &self,
        upload: IssuedUpload,
        max_outstanding: usize,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if inner.outstanding(&upload.user, now) >= max_outstanding {
            return Err(StoreError::UserCapReached {
                limit: max_outstanding,
            });
        }
        if inner.entries.len() >= self.limits.max_uploads {
            // Forgetting what is past its memory is always allowed; live uploads are never evicted.
            inner.purge(now);
            if inner.entries.len() >= self.limits.max_uploads {
                return Err(StoreError::Full);
            }
        }
        let id = upload.s3object_id;
        if inner.entries.contains_key(&id) {
            // An upstream that repeats an s3object_id must not overwrite another user's upload.
            return Err(StoreError::Duplicate);
        }
        let forget_at = add(upload.window_end, self.limits.remember_expired);
        inner
            .open
            .entry(upload.user.clone())
            .or_default()
            .insert((upload.window_end, id));
        inner.by_forget_at.insert((forget_at, id));
        inner.entries.insert(
            id,
            Entry {
                upload,
                state: State::Issued,
                forget_at,
            },
        );
        Ok(())
    }

    async fn claim(
        &self,
        user: &str,
        id: Uuid,
        key: &str,
        now: OffsetDateTime,
        lease_for: Duration,
    ) -> Result<ClaimOutcome, StoreError> {
        let mut inner = self.lock();
        let Some(entry) = inner.entries.get_mut(&id) else {
            return Ok(ClaimOutcome::NotFound);
        };
        if entry.upload.user != user || now >= entry.forget_at {
            return Ok(ClaimOutcome::NotFound);
        }
        let key_matches = entry.upload.key == key;
        match &entry.state {
            State::Consumed(stored) => {
                return Ok(ClaimOutcome::AlreadyConfirmed(if key_matches {
                    stored.clone()
                } else {
                    None
                }));
            }
            State::Claimed { until, .. } if now < *until => {
                return Ok(if key_matches {
                    ClaimOutcome::InFlight
                } else {
                    ClaimOutcome::KeyMismatch
                });
            }
            _ => {}
        }
        if !key_matches {
            return Ok(ClaimOutcome::KeyMismatch);
        }
        if now > entry.upload.window_end {
            return Ok(ClaimOutcome::Expired);
        }
        let lease = Lease(Uuid::new_v4());
        entry.state = State::Claimed {
            lease,
            until: add(now, lease_for),
        };
        Ok(ClaimOutcome::Claimed {
            lease,
            upload: entry.upload.clone(),
        })
    }

    async fn release(&self, upload: &IssuedUpload, lease: Lease) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if let Some(entry) = inner.entries.get_mut(&upload.s3object_id)
            && matches!(entry.state, State::Claimed { lease: held, .. } if held == lease)
        {
            entry.state = State::Issued;
        }
        Ok(())
    }

    async fn consume(
        &self,
        upload: &IssuedUpload,
        lease: Lease,
        response: StoredResponse,
        size_bytes: u64,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let mut inner = self.lock();
        let Some(entry) = inner.entries.get_mut(&upload.s3object_id) else {
            return Ok(());
        };
        if !matches!(entry.state, State::Claimed { lease: held, .. } if held == lease) {
            return Ok(());
        }
        let keep = response.body.len() <= MAX_STORED_RESPONSE_BYTES;
        entry.state = State::Consumed(keep.then_some(response));
        let stored = entry.upload.clone();
        inner.close(&stored);
        let counter = inner
            .daily
            .entry((upload.user.clone(), day_of(now)))
            .or_default();
        counter.0 += 1;
        counter.1 = counter.1.saturating_add(size_bytes);
        Ok(())
    }

    async fn purge(&self, now: OffsetDateTime) -> Result<Vec<IssuedUpload>, StoreError> {
        Ok(self.lock().purge(now))
    }

    async fn entry_count(&self) -> Result<Option<usize>, StoreError> {
        Ok(Some(self.lock().entries.len()))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
