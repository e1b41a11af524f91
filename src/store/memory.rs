//! The embedded store for one replica: per-user maps under one mutex (uploads, day counters, rate
//! budgets), plus two global indexes: every entry by window end (for the sweep, and the expired
//! ones go first when the store is full) and the confirmed entries (they go next). Records are
//! compact: times as milliseconds, the user id and the source shared (`Arc<str>`) rather than
//! copied per upload, so that an upload costs its S3 key and a few index slots.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex},
};

use async_trait::async_trait;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{
    Admission, Claim, ClaimOutcome, ClaimRules, IssuedUpload, Lease, MAX_COUNTED_BYTES,
    MAX_STORED_RESPONSE_BYTES, PresignRules, QuotaKind, Settled, StoreError, StoreLimits,
    StoredResponse, UploadStore, Usage, from_unix_ms, unix_ms,
};
use crate::rate_limit::{RateLimit, RateLimitHeaders, gcra};

type UserId = Arc<str>;

const DAY_MS: i64 = 86_400_000;

/// Entries the sweep forgets per hold of the lock: a large expiry wave never stalls requests.
const PURGE_BATCH: usize = 512;

#[derive(Debug)]
enum State {
    /// Open for a confirmation.
    Issued,
    /// Held by one confirmation (`Entry::lease`) until it settles; it never lapses by itself.
    Claimed,
    Consumed(Option<Box<StoredResponse>>),
}

#[derive(Debug)]
struct Entry {
    key: Box<str>,
    source: Arc<str>,
    issued_ms: i64,
    window_end_ms: i64,
    /// The last claim's lease (nil before the first): a repeated settle of the same claim, after a
    /// store timeout that hid its success, is recognised rather than counted as stale.
    lease: Uuid,
    /// Failed confirmations so far; none is taken before `retry_at_ms`.
    failed: u32,
    retry_at_ms: i64,
    state: State,
}

#[derive(Debug, Default)]
struct UserUploads {
    uploads: HashMap<Uuid, Entry>,
    /// Not yet consumed, by window end, window open as of the last count (those that closed since
    /// are moved to `closed` when the user's uploads are next counted).
    open: BTreeSet<(i64, Uuid)>,
    /// Not consumed, window closed.
    closed: BTreeSet<(i64, Uuid)>,
    /// Consumed, by window end.
    consumed: BTreeSet<(i64, Uuid)>,
}

/// Confirmed uploads and bytes per user, for the current UTC day and the one before (a request
/// that straddles midnight still finds its day).
#[derive(Debug, Default)]
struct DailyCounters {
    day: i64,
    counts: HashMap<UserId, (u64, u64)>,
    previous_day: i64,
    previous: HashMap<UserId, (u64, u64)>,
}

impl DailyCounters {
    fn get(&self, user: &str, day: i64) -> (u64, u64) {
        let counts = if day == self.day {
            &self.counts
        } else if day == self.previous_day {
            &self.previous
        } else {
            return (0, 0);
        };
        counts.get(user).copied().unwrap_or_default()
    }

    fn roll_to(&mut self, day: i64) {
        if day > self.day {
            self.previous = if day == self.day + 1 {
                std::mem::take(&mut self.counts)
            } else {
                HashMap::new()
            };
            self.previous_day = self.day;
            self.counts = HashMap::new();
            self.day = day;
        }
    }

    fn count(&mut self, user: &UserId, day: i64, bytes: u64) {
        self.roll_to(day);
        let counts = if day == self.day {
            &mut self.counts
        } else if day == self.previous_day {
            &mut self.previous
        } else {
            return;
        };
        let counter = counts.entry(user.clone()).or_default();
        counter.0 += 1;
        counter.1 = counter.1.saturating_add(bytes).min(MAX_COUNTED_BYTES);
    }
}

/// A user's rate-limit state: the GCRA theoretical arrival times, in microseconds of the store's
/// monotonic clock.
#[derive(Debug, Default, Clone, Copy)]
struct Budgets {
    presign_tat: i64,
    confirm_tat: i64,
}

#[derive(Debug, Default)]
struct Inner {
    users: HashMap<UserId, UserUploads>,
    /// Budgets of the users who spent some lately (pruned by the sweep once whole again).
    budgets: HashMap<UserId, Budgets>,
    /// Every entry by window end: the sweep forgets from the front, and when the store is full,
    /// entries at the front whose window has closed are evicted first.
    by_window: BTreeSet<(i64, UserId, Uuid)>,
    /// Consumed entries by window end: evicted next when the store is full.
    consumed: BTreeSet<(i64, UserId, Uuid)>,
    len: usize,
    daily: DailyCounters,
    /// The few distinct `source` values, shared by every entry.
    sources: Vec<Arc<str>>,
}

impl Inner {
    fn source(&mut self, source: &str) -> Arc<str> {
        if let Some(known) = self.sources.iter().find(|s| ***s == *source) {
            return known.clone();
        }
        let interned: Arc<str> = source.into();
        self.sources.push(interned.clone());
        interned
    }

    /// Takes one request from a user's budget (`confirm` or presign), or says how long to wait.
    fn spend(
        &mut self,
        user: &str,
        confirm: bool,
        limit: &RateLimit,
        now_us: i64,
    ) -> Result<RateLimitHeaders, RateLimitHeaders> {
        let budgets = self.budgets.get(user).copied().unwrap_or_default();
        let tat = if confirm {
            budgets.confirm_tat
        } else {
            budgets.presign_tat
        };
        let (kept, headers) = gcra(tat, now_us, limit);
        let Some(new_tat) = kept else {
            return Err(headers);
        };
        let entry = match self.budgets.get_mut(user) {
            Some(entry) => entry,
            None => self.budgets.entry(user.into()).or_default(),
        };
        if confirm {
            entry.confirm_tat = new_tat;
        } else {
            entry.presign_tat = new_tat;
        }
        Ok(headers)
    }

    /// The user's open uploads: a trim of the front of `open` and a `len`.
    fn outstanding(&mut self, user: &str, now_ms: i64) -> usize {
        let Some(uploads) = self.users.get_mut(user) else {
            return 0;
        };
        while let Some(&slot) = uploads.open.first()
            && slot.0 < now_ms
        {
            uploads.open.pop_first();
            uploads.closed.insert(slot);
        }
        uploads.open.len()
    }

    /// Forgets one entry, returning it with its owner.
    fn remove(&mut self, user: &str, id: Uuid) -> Option<(UserId, Entry)> {
        let owner = self.users.get_key_value(user)?.0.clone();
        let uploads = self.users.get_mut(user)?;
        let entry = uploads.uploads.remove(&id)?;
        let slot = (entry.window_end_ms, id);
        uploads.open.remove(&slot);
        uploads.closed.remove(&slot);
        uploads.consumed.remove(&slot);
        if uploads.uploads.is_empty() {
            self.users.remove(user);
        }
        let global = (entry.window_end_ms, owner.clone(), id);
        self.by_window.remove(&global);
        self.consumed.remove(&global);
        self.len -= 1;
        Some((owner, entry))
    }

    /// The first entry that may be forgotten early: among `closed` (past their window, oldest
    /// first) one not held by a confirmation, else the oldest of `consumed`.
    fn first_evictable<'a>(
        &self,
        mut closed: impl Iterator<Item = (&'a str, Uuid)>,
        mut consumed: impl Iterator<Item = (&'a str, Uuid)>,
    ) -> Option<(String, Uuid)> {
        let unheld = |(user, id): &(&str, Uuid)| {
            self.users
                .get(*user)
                .and_then(|u| u.uploads.get(id))
                .is_some_and(|e| !matches!(e.state, State::Claimed))
        };
        closed
            .find(unheld)
            .or_else(|| consumed.next())
            .map(|(user, id)| (user.to_owned(), id))
    }

    /// Makes room for one more entry of `user`: first within the user's own bound, then within the
    /// store's, by forgetting confirmed and expired entries. Never an open upload.
    fn make_room(&mut self, user: &str, limits: &StoreLimits, now_ms: i64) -> bool {
        while let Some(uploads) = self.users.get(user) {
            if uploads.uploads.len() < limits.max_uploads_per_user {
                break;
            }
            let closed = uploads
                .closed
                .iter()
                .chain(uploads.open.range(..(now_ms, Uuid::nil())))
                .map(|(_, id)| (user, *id));
            let consumed = uploads.consumed.iter().map(|(_, id)| (user, *id));
            match self.first_evictable(closed, consumed) {
                Some((owner, id)) => self.remove(&owner, id),
                None => return false,
            };
        }
        while self.len >= limits.max_uploads {
            let closed = self
                .by_window
                .range(..(now_ms, UserId::from(""), Uuid::nil()))
                .map(|(_, u, id)| (&**u, *id));
            let consumed = self.consumed.iter().map(|(_, u, id)| (&**u, *id));
            match self.first_evictable(closed, consumed) {
                Some((owner, id)) => self.remove(&owner, id),
                None => return false,
            };
        }
        true
    }

    /// Forgets up to `PURGE_BATCH` entries whose memory has passed; `None` when none is left.
    fn purge_batch(
        &mut self,
        now_ms: i64,
        remember_ms: i64,
        never_confirmed: &mut Vec<IssuedUpload>,
    ) -> bool {
        for _ in 0..PURGE_BATCH {
            let Some((window_end_ms, user, id)) = self.by_window.first().cloned() else {
                return false;
            };
            if window_end_ms.saturating_add(remember_ms) > now_ms {
                return false;
            }
            if let Some((owner, entry)) = self.remove(&user, id)
                && !matches!(entry.state, State::Consumed(_))
            {
                never_confirmed.push(issued(&owner, id, &entry));
            }
        }
        true
    }
}

fn issued(user: &str, id: Uuid, entry: &Entry) -> IssuedUpload {
    IssuedUpload {
        s3object_id: id,
        key: entry.key.to_string(),
        user: user.to_owned(),
        source: entry.source.to_string(),
        issued_at: from_unix_ms(entry.issued_ms),
        window_end: from_unix_ms(entry.window_end_ms),
    }
}

/// The upload store of one replica: everything in this process, lost on restart.
#[derive(Debug)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
    limits: StoreLimits,
    /// The rate limits' clock: monotonic, whatever the wall clock does.
    origin: std::time::Instant,
}

impl MemoryStore {
    /// An empty store bounded by `limits`.
    pub fn new(limits: StoreLimits) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            limits,
            origin: std::time::Instant::now(),
        }
    }

    fn now_us(&self) -> i64 {
        // Offset by a second so that a fresh budget (TAT 0) is whole from the first instant.
        i64::try_from(self.origin.elapsed().as_micros()).unwrap_or(i64::MAX) + 1_000_000
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (every mutation is a few
        // infallible map operations), so a poisoned lock is still usable.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn remember_ms(&self) -> i64 {
        i64::try_from(self.limits.remember_expired.as_millis()).unwrap_or(i64::MAX)
    }

    /// The claim's checks after the budget, under the lock.
    fn claim_upload(
        &self,
        inner: &mut Inner,
        user: &str,
        id: Uuid,
        key: &str,
        now: OffsetDateTime,
        rules: &ClaimRules,
    ) -> ClaimOutcome {
        let now_ms = unix_ms(now);
        let remember_ms = self.remember_ms();
        let (uploads_today, bytes_today) = inner.daily.get(user, now_ms.div_euclid(DAY_MS));
        let Some(entry) = inner
            .users
            .get_mut(user)
            .and_then(|u| u.uploads.get_mut(&id))
        else {
            return ClaimOutcome::NotFound;
        };
        if now_ms >= entry.window_end_ms.saturating_add(remember_ms) {
            return ClaimOutcome::NotFound;
        }
        let key_matches = *entry.key == *key;
        match &entry.state {
            State::Consumed(stored) => {
                return ClaimOutcome::AlreadyConfirmed(if key_matches {
                    stored.as_deref().cloned()
                } else {
                    None
                });
            }
            _ if !key_matches => return ClaimOutcome::KeyMismatch,
            State::Claimed => return ClaimOutcome::InFlight,
            State::Issued => {}
        }
        if now_ms > entry.window_end_ms {
            return ClaimOutcome::Expired;
        }
        if now_ms < entry.retry_at_ms {
            return ClaimOutcome::BackingOff {
                until: from_unix_ms(entry.retry_at_ms),
            };
        }
        if rules
            .max_uploads_per_day
            .is_some_and(|max| uploads_today >= max)
        {
            return ClaimOutcome::DailyQuotaReached(QuotaKind::UploadsPerDay);
        }
        if rules
            .max_bytes_per_day
            .is_some_and(|max| bytes_today >= max)
        {
            return ClaimOutcome::DailyQuotaReached(QuotaKind::BytesPerDay);
        }
        let lease = Lease(Uuid::new_v4());
        entry.lease = lease.0;
        entry.state = State::Claimed;
        ClaimOutcome::Claimed {
            lease,
            upload: issued(user, id, entry),
        }
    }
}

fn add_ms(at_ms: i64, duration: std::time::Duration) -> i64 {
    at_ms.saturating_add(i64::try_from(duration.as_millis()).unwrap_or(i64::MAX))
}

#[async_trait]
impl UploadStore for MemoryStore {
    async fn usage(&self, user: &str, now: OffsetDateTime) -> Result<Usage, StoreError> {
        let now_ms = unix_ms(now);
        let mut inner = self.lock();
        let (uploads_today, bytes_today) = inner.daily.get(user, now_ms.div_euclid(DAY_MS));
        Ok(Usage {
            outstanding: inner.outstanding(user, now_ms),
            uploads_today,
            bytes_today,
        })
    }

    async fn admit(
        &self,
        user: &str,
        now: OffsetDateTime,
        rules: &PresignRules,
    ) -> Result<Admission, StoreError> {
        let now_ms = unix_ms(now);
        let now_us = self.now_us();
        let mut inner = self.lock();
        let outstanding = inner.outstanding(user, now_ms);
        let (uploads_today, bytes_today) = inner.daily.get(user, now_ms.div_euclid(DAY_MS));
        if outstanding >= rules.max_outstanding {
            return Ok(Admission::QuotaReached(QuotaKind::Outstanding));
        }
        // Open uploads count toward the day: each may be confirmed today.
        if rules
            .max_uploads_per_day
            .is_some_and(|max| uploads_today + outstanding as u64 >= max)
        {
            return Ok(Admission::QuotaReached(QuotaKind::UploadsPerDay));
        }
        if rules
            .max_bytes_per_day
            .is_some_and(|max| bytes_today >= max)
        {
            return Ok(Admission::QuotaReached(QuotaKind::BytesPerDay));
        }
        Ok(match inner.spend(user, false, &rules.rate, now_us) {
            Ok(budget) => Admission::Admitted(budget),
            Err(budget) => Admission::RateLimited(budget),
        })
    }

    async fn record(
        &self,
        upload: &IssuedUpload,
        max_outstanding: usize,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let now_ms = unix_ms(now);
        let id = upload.s3object_id;
        let mut inner = self.lock();
        if inner.outstanding(&upload.user, now_ms) >= max_outstanding {
            return Err(StoreError::UserCapReached {
                limit: max_outstanding,
            });
        }
        if inner
            .users
            .get(upload.user.as_str())
            .is_some_and(|u| u.uploads.contains_key(&id))
        {
            // An upstream that repeats an s3object_id must not overwrite an upload.
            return Err(StoreError::Duplicate);
        }
        if !inner.make_room(&upload.user, &self.limits, now_ms) {
            return Err(StoreError::Full);
        }
        let source = inner.source(&upload.source);
        let user: UserId = match inner.users.get_key_value(upload.user.as_str()) {
            Some((user, _)) => user.clone(),
            None => upload.user.as_str().into(),
        };
        let window_end_ms = unix_ms(upload.window_end);
        let uploads = inner.users.entry(user.clone()).or_default();
        uploads.open.insert((window_end_ms, id));
        uploads.uploads.insert(
            id,
            Entry {
                key: upload.key.as_str().into(),
                source,
                issued_ms: unix_ms(upload.issued_at),
                window_end_ms,
                lease: Uuid::nil(),
                failed: 0,
                retry_at_ms: i64::MIN,
                state: State::Issued,
            },
        );
        inner.by_window.insert((window_end_ms, user, id));
        inner.len += 1;
        Ok(())
    }

    async fn claim(
        &self,
        user: &str,
        id: Uuid,
        key: &str,
        now: OffsetDateTime,
        rules: &ClaimRules,
    ) -> Result<Claim, StoreError> {
        let now_us = self.now_us();
        let mut inner = self.lock();
        let budget = match inner.spend(user, true, &rules.rate, now_us) {
            Ok(budget) => budget,
            Err(budget) => {
                return Ok(Claim {
                    outcome: ClaimOutcome::RateLimited,
                    budget,
                });
            }
        };
        let outcome = self.claim_upload(&mut inner, user, id, key, now, rules);
        Ok(Claim { outcome, budget })
    }
    async fn release(
        &self,
        upload: &IssuedUpload,
        lease: Lease,
        now: OffsetDateTime,
        rules: &ClaimRules,
    ) -> Result<Settled, StoreError> {
        let mut inner = self.lock();
        let Some(entry) = inner
            .users
            .get_mut(upload.user.as_str())
            .and_then(|u| u.uploads.get_mut(&upload.s3object_id))
        else {
            return Ok(Settled::Stale);
        };
        if entry.lease != lease.0 {
            return Ok(Settled::Stale);
        }
        match entry.state {
            State::Claimed => {}
            // This claim's release already landed.
            State::Issued => return Ok(Settled::Done),
            State::Consumed(_) => return Ok(Settled::Stale),
        }
        entry.failed = entry.failed.saturating_add(1);
        if entry.failed >= rules.max_attempts {
            entry.retry_at_ms = add_ms(unix_ms(now), rules.attempt_backoff);
        }
        entry.state = State::Issued;
        Ok(Settled::Done)
    }

    async fn consume(
        &self,
        upload: &IssuedUpload,
        lease: Lease,
        response: StoredResponse,
        size_bytes: u64,
        now: OffsetDateTime,
    ) -> Result<Settled, StoreError> {
        let mut inner = self.lock();
        let Some(owner) = inner
            .users
            .get_key_value(upload.user.as_str())
            .map(|(owner, _)| owner.clone())
        else {
            return Ok(Settled::Stale);
        };
        let uploads = inner
            .users
            .get_mut(upload.user.as_str())
            .expect("looked up above");
        let Some(entry) = uploads.uploads.get_mut(&upload.s3object_id) else {
            return Ok(Settled::Stale);
        };
        if entry.lease != lease.0 {
            return Ok(Settled::Stale);
        }
        match entry.state {
            State::Claimed => {}
            // This claim's consume already landed.
            State::Consumed(_) => return Ok(Settled::Done),
            State::Issued => return Ok(Settled::Stale),
        }
        let keep = response.body.len() <= MAX_STORED_RESPONSE_BYTES;
        entry.state = State::Consumed(keep.then(|| Box::new(response)));
        let slot = (entry.window_end_ms, upload.s3object_id);
        uploads.open.remove(&slot);
        uploads.closed.remove(&slot);
        uploads.consumed.insert(slot);
        inner.consumed.insert((slot.0, owner.clone(), slot.1));
        inner
            .daily
            .count(&owner, unix_ms(now).div_euclid(DAY_MS), size_bytes);
        Ok(Settled::Done)
    }

    async fn purge(&self, now: OffsetDateTime) -> Result<Vec<IssuedUpload>, StoreError> {
        let now_ms = unix_ms(now);
        let remember_ms = self.remember_ms();
        let now_us = self.now_us();
        {
            let mut inner = self.lock();
            inner.daily.roll_to(now_ms.div_euclid(DAY_MS));
            // A budget whose TAT has passed is whole: forgetting it changes nothing.
            inner
                .budgets
                .retain(|_, b| b.presign_tat > now_us || b.confirm_tat > now_us);
        }
        let mut never_confirmed = Vec::new();
        // In batches, letting requests take the lock in between.
        while self
            .lock()
            .purge_batch(now_ms, remember_ms, &mut never_confirmed)
        {
            tokio::task::yield_now().await;
        }
        Ok(never_confirmed)
    }

    async fn entry_count(&self) -> Result<Option<usize>, StoreError> {
        Ok(Some(self.lock().len))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
