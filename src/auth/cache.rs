//! The verified-token cache: browsers send one token with many requests, and a signature check
//! (RS256: about 20 µs of CPU) is done once per token instead of once per request.
//!
//! What it guarantees:
//! - **Keyed on every byte of the token.** A keyed SipHash of the token picks the shard and the
//!   slot; a hit then compares the whole stored token with the one presented. A token that differs
//!   in one byte (another encoding of the same signature, re-encoded claims, padding) is another
//!   token: a miss, verified from scratch.
//! - **Successes only.** An entry is the [`AuthenticatedUser`] a full verification produced, with
//!   the token's time claims. A refusal is never cached.
//! - **Never more lenient than a fresh verification.** Every hit rechecks `exp`, `nbf` and `iat`
//!   with the configured leeway and the same predicates as verification ([`TokenTimes::admits`]).
//!   An entry that fails them is not served: the request is verified from scratch, which refuses
//!   it with the usual code, and an expired entry is dropped. No entry outlives its token's `exp`
//!   (plus the leeway) as something that can be served.
//! - **Flushed when the keys change.** [`TokenCache::flush`] empties it; the verifier calls it
//!   after static keys are replaced and after a JWKS fetch that changed the key set. A
//!   verification that started before a flush (and may have used the old keys) cannot fill the
//!   cache after it: a fill carries the generation read before the keys were, and is dropped
//!   if a flush came in between.
//! - **Bounded.** At most `max_entries` entries, in fixed-size shards. When a shard is full its
//!   expired entries go first, then the entry closest to expiry (with tokens of one lifetime,
//!   the oldest). Memory is about `max_entries` times a token's length: only tokens that verified
//!   get in, so junk cannot fill it.
//! - **No lock held across anything slow.** One `RwLock` per shard, held for one map lookup or
//!   insert (or, when a full shard makes room, one pass over that shard); never across an
//!   `.await`, signature work or parsing.

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    sync::{
        Arc, PoisonError, RwLock,
        atomic::{AtomicU64, Ordering},
    },
};

use serde_json::{Map, Value};

use super::AuthenticatedUser;
use crate::observability::metrics::Metrics;

/// Shards of the map: enough that requests on many cores rarely meet on one lock.
const SHARDS: usize = 16;

/// Whether `exp` (any JSON number) lies more than `leeway` seconds before `now`: the check made
/// before any signature work.
pub(crate) fn exp_passed(exp: f64, now: u64, leeway: u64) -> bool {
    exp + (leeway as f64) < now as f64
}

/// Whether `iat` (any JSON number) lies more than `leeway` seconds after `now`.
pub(crate) fn iat_in_future(iat: f64, now: u64, leeway: u64) -> bool {
    iat > now.saturating_add(leeway) as f64
}

/// The time claims of a verified token, read as verification reads them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenTimes {
    /// `exp` as the pre-check reads it: any JSON number.
    pub exp: f64,
    /// `exp` as jsonwebtoken reads it: a non-negative integer, or a float rounded.
    pub exp_secs: u64,
    /// `nbf` as jsonwebtoken reads it.
    pub nbf_secs: Option<u64>,
    /// `iat`, any JSON number.
    pub iat: Option<f64>,
}

impl TokenTimes {
    /// The time claims of verified `claims`; `None` if they are not all readable the way
    /// verification read them (such a token is not cached).
    pub fn from_claims(claims: &Map<String, Value>) -> Option<Self> {
        let exp = claims.get("exp")?;
        let nbf_secs = match claims.get("nbf") {
            None => None,
            Some(nbf) => Some(jsonwebtoken_secs(nbf)?),
        };
        let iat = match claims.get("iat") {
            None => None,
            Some(iat) => Some(iat.as_f64()?),
        };
        Some(Self {
            exp: exp.as_f64()?,
            exp_secs: jsonwebtoken_secs(exp)?,
            nbf_secs,
            iat,
        })
    }

    /// Whether a token with these claims passes every time check of a verification at `now`:
    /// the `exp` pre-check, jsonwebtoken's `exp` and `nbf` checks (`exp < now - leeway` and
    /// `nbf > now + leeway` refuse) and the `iat` check.
    pub fn admits(&self, now: u64, leeway: u64) -> bool {
        !self.expired(now, leeway)
            && self
                .nbf_secs
                .is_none_or(|nbf| nbf <= now.saturating_add(leeway))
            && self.iat.is_none_or(|iat| !iat_in_future(iat, now, leeway))
    }

    /// Whether `exp` has passed at `now`, by either reading: for good, as time only moves on.
    pub fn expired(&self, now: u64, leeway: u64) -> bool {
        exp_passed(self.exp, now, leeway) || self.exp_secs < now.saturating_sub(leeway)
    }
}

/// A number claim as jsonwebtoken reads `exp` and `nbf`: an unsigned integer, or a finite
/// non-negative float below 2^64, rounded. Anything else fails there, and here.
fn jsonwebtoken_secs(value: &Value) -> Option<u64> {
    let number = value.as_number()?;
    if let Some(secs) = number.as_u64() {
        return Some(secs);
    }
    let float = number.as_f64().filter(|_| number.is_f64())?;
    (float.is_finite() && float >= 0.0 && float < u64::MAX as f64).then(|| float.round() as u64)
}

/// What a lookup found.
#[derive(Debug)]
pub enum Lookup {
    /// The token verified before, and its time claims still hold.
    Hit(AuthenticatedUser),
    /// Verify it; then [`TokenCache::fill`] with this ticket.
    Miss(Ticket),
}

/// Taken by a lookup that missed, before the keys are read; lets one fill through unless the
/// cache was flushed since.
#[derive(Debug)]
pub struct Ticket {
    hash: u64,
    generation: u64,
}

struct Entry {
    token: Box<str>,
    user: AuthenticatedUser,
    times: TokenTimes,
}

/// See the module documentation.
pub struct TokenCache {
    shards: Box<[RwLock<HashMap<u64, Entry>>]>,
    shard_capacity: usize,
    hasher: RandomState,
    /// Moved on by every flush.
    generation: AtomicU64,
    leeway_secs: u64,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Entries hold bearer tokens: never printed.
        f.debug_struct("TokenCache")
            .field("shards", &self.shards.len())
            .field("shard_capacity", &self.shard_capacity)
            .finish_non_exhaustive()
    }
}

impl TokenCache {
    /// A cache of at most `max_entries` tokens (at least 1), rechecking times with `leeway_secs`.
    pub fn new(max_entries: usize, leeway_secs: u64, metrics: Arc<Metrics>) -> Self {
        Self::with_shards(max_entries, SHARDS, leeway_secs, metrics)
    }

    fn with_shards(
        max_entries: usize,
        shards: usize,
        leeway_secs: u64,
        metrics: Arc<Metrics>,
    ) -> Self {
        let max_entries = max_entries.max(1);
        let shards = shards.clamp(1, max_entries);
        Self {
            shards: (0..shards).map(|_| RwLock::new(HashMap::new())).collect(),
            // Rounded down: the shards together never hold more than `max_entries`.
            shard_capacity: max_entries / shards,
            hasher: RandomState::new(),
            generation: AtomicU64::new(0),
            leeway_secs,
            metrics,
        }
    }

    fn shard(&self, hash: u64) -> &RwLock<HashMap<u64, Entry>> {
        // The high half picks the shard; the map hashes the whole value again for its slot.
        &self.shards[(hash >> 32) as usize % self.shards.len()]
    }

    /// The user of `token` if it verified before and its time claims hold at `now` (seconds
    /// since the epoch, from the clock verification uses). Counts a hit or a miss.
    pub fn lookup(&self, token: &str, now: u64) -> Lookup {
        // Read before the lookup, and so before the caller reads any key.
        let generation = self.generation.load(Ordering::Acquire);
        let hash = self.hasher.hash_one(token.as_bytes());
        let shard = self.shard(hash);
        let mut stale = false;
        {
            let entries = shard.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(entry) = entries.get(&hash)
                && entry.token.as_bytes() == token.as_bytes()
            {
                if entry.times.admits(now, self.leeway_secs) {
                    let user = entry.user.clone();
                    drop(entries);
                    self.metrics.token_cache_hits.inc();
                    return Lookup::Hit(user);
                }
                stale = entry.times.expired(now, self.leeway_secs);
            }
        }
        if stale {
            let mut entries = shard.write().unwrap_or_else(PoisonError::into_inner);
            if entries
                .get(&hash)
                .is_some_and(|e| e.token.as_bytes() == token.as_bytes())
            {
                entries.remove(&hash);
            }
        }
        self.metrics.token_cache_misses.inc();
        Lookup::Miss(Ticket { hash, generation })
    }

    /// Remembers that `token` verified as `user`, unless the cache was flushed since the lookup
    /// that gave `ticket`. `now` is only used to drop expired entries when the shard is full.
    pub fn fill(
        &self,
        ticket: Ticket,
        token: &str,
        user: &AuthenticatedUser,
        times: TokenTimes,
        now: u64,
    ) {
        let mut entries = self
            .shard(ticket.hash)
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        // Under the shard lock: a flush moves the generation on before it empties this shard, so
        // either it empties the shard after this fill, or this fill sees the new generation.
        if self.generation.load(Ordering::Acquire) != ticket.generation {
            return;
        }
        if entries.len() >= self.shard_capacity && !entries.contains_key(&ticket.hash) {
            let leeway = self.leeway_secs;
            entries.retain(|_, entry| !entry.times.expired(now, leeway));
            if entries.len() >= self.shard_capacity {
                // Room for a quarter of the shard at once, the entries closest to expiry first:
                // the pass over the shard is paid once per many fills, not on every one.
                let room = (self.shard_capacity / 4).clamp(1, entries.len());
                let mut by_exp: Vec<(f64, u64)> = entries
                    .iter()
                    .map(|(hash, entry)| (entry.times.exp, *hash))
                    .collect();
                by_exp.select_nth_unstable_by(room - 1, |a, b| a.0.total_cmp(&b.0));
                for (_, hash) in &by_exp[..room] {
                    entries.remove(hash);
                }
                self.metrics.token_cache_evictions.inc_by(room as u64);
            }
        }
        // Two tokens with one hash: the newer replaces the older; lookups compare the bytes.
        entries.insert(
            ticket.hash,
            Entry {
                token: token.into(),
                user: user.clone(),
                times,
            },
        );
    }

    /// Forgets every entry, and every fill of a verification that started before.
    pub fn flush(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        for shard in self.shards.iter() {
            let forgotten =
                std::mem::take(&mut *shard.write().unwrap_or_else(PoisonError::into_inner));
            // Freed after the lock is let go.
            drop(forgotten);
        }
    }

    /// Entries held now, expired ones not yet dropped included.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.read().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    /// Whether no token is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const LEEWAY: u64 = 30;
    const NOW: u64 = 1_800_000_000;

    fn user(id: &str) -> AuthenticatedUser {
        AuthenticatedUser {
            id: id.to_owned(),
            upstream_user_id: Some(format!("{id}-upstream")),
            tier: Some("pro".into()),
        }
    }

    fn times(exp: u64) -> TokenTimes {
        TokenTimes {
            exp: exp as f64,
            exp_secs: exp,
            nbf_secs: None,
            iat: Some((NOW - 10) as f64),
        }
    }

    fn cache(max_entries: usize) -> (TokenCache, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new());
        (
            TokenCache::new(max_entries, LEEWAY, metrics.clone()),
            metrics,
        )
    }

    /// Looks up and, on a miss, fills: what the verifier does for a token that verifies.
    fn put(cache: &TokenCache, token: &str, id: &str, times: TokenTimes, now: u64) {
        match cache.lookup(token, now) {
            Lookup::Miss(ticket) => cache.fill(ticket, token, &user(id), times, now),
            Lookup::Hit(_) => panic!("{token} was cached already"),
        }
    }

    fn hit(cache: &TokenCache, token: &str, now: u64) -> Option<AuthenticatedUser> {
        match cache.lookup(token, now) {
            Lookup::Hit(user) => Some(user),
            Lookup::Miss(_) => None,
        }
    }

    #[test]
    fn a_filled_token_is_a_hit_with_its_user_and_counted() {
        let (cache, metrics) = cache(100);
        put(&cache, "a.b.c", "alice", times(NOW + 3600), NOW);
        let found = hit(&cache, "a.b.c", NOW + 1).expect("a hit");
        assert_eq!(found.id, "alice");
        assert_eq!(found.upstream_user_id.as_deref(), Some("alice-upstream"));
        assert_eq!(found.tier.as_deref(), Some("pro"));
        assert_eq!(metrics.token_cache_hits.get(), 1);
        assert_eq!(metrics.token_cache_misses.get(), 1);
    }

    #[test]
    fn a_token_that_differs_in_one_byte_is_a_miss() {
        let (cache, _) = cache(100);
        let token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.c2lnbmF0dXJl";
        put(&cache, token, "alice", times(NOW + 3600), NOW);
        let mut bytes = token.as_bytes().to_vec();
        for i in 0..bytes.len() {
            let original = bytes[i];
            bytes[i] = if original == b'A' { b'B' } else { b'A' };
            let other = std::str::from_utf8(&bytes).unwrap();
            assert!(hit(&cache, other, NOW).is_none(), "byte {i} changed: a hit");
            bytes[i] = original;
        }
        assert!(hit(&cache, &format!("{token}="), NOW).is_none());
        assert!(hit(&cache, &token[..token.len() - 1], NOW).is_none());
        assert!(hit(&cache, token, NOW).is_some());
    }

    #[test]
    fn a_hit_rechecks_exp_with_the_leeway_and_drops_the_expired_entry() {
        let (cache, _) = cache(100);
        let exp = NOW + 60;
        put(&cache, "t.o.k", "alice", times(exp), NOW);
        assert!(hit(&cache, "t.o.k", exp).is_some());
        assert!(
            hit(&cache, "t.o.k", exp + LEEWAY).is_some(),
            "within the leeway"
        );
        assert!(hit(&cache, "t.o.k", exp + LEEWAY + 1).is_none(), "expired");
        assert_eq!(cache.len(), 0, "the expired entry is dropped");
        // Even if the clock went back: the entry is gone, a fresh verification decides.
        assert!(hit(&cache, "t.o.k", NOW).is_none());
    }

    #[test]
    fn a_fractional_exp_is_rechecked_by_both_readings() {
        // The pre-check reads 100.4 as is; jsonwebtoken rounds it to 100.
        let times = TokenTimes::from_claims(json!({ "exp": 100.4 }).as_object().unwrap()).unwrap();
        assert_eq!(times.exp_secs, 100);
        assert!(times.admits(130, LEEWAY));
        assert!(!times.admits(131, LEEWAY));
        let times = TokenTimes::from_claims(json!({ "exp": 100.6 }).as_object().unwrap()).unwrap();
        assert_eq!(times.exp_secs, 101);
        assert!(
            !times.admits(131, LEEWAY),
            "the pre-check refuses 100.6 + 30 < 131"
        );
    }

    #[test]
    fn a_hit_before_nbf_or_iat_is_not_served() {
        let (cache, _) = cache(100);
        let nbf = NOW + 100;
        let mut future = times(NOW + 3600);
        future.nbf_secs = Some(nbf);
        put(&cache, "n.b.f", "alice", future, nbf);
        assert!(
            hit(&cache, "n.b.f", nbf - LEEWAY - 1).is_none(),
            "before nbf"
        );
        assert!(
            hit(&cache, "n.b.f", nbf - LEEWAY).is_some(),
            "within the leeway"
        );
        assert!(hit(&cache, "n.b.f", nbf).is_some());

        let mut issued_later = times(NOW + 3600);
        issued_later.iat = Some((NOW + 100) as f64);
        put(&cache, "i.a.t", "bob", issued_later, NOW + 100);
        assert!(hit(&cache, "i.a.t", NOW + 100 - LEEWAY - 1).is_none());
        assert!(hit(&cache, "i.a.t", NOW + 100 - LEEWAY).is_some());
    }

    #[test]
    fn time_claims_are_read_as_verification_reads_them() {
        let read = |claims: Value| TokenTimes::from_claims(claims.as_object().unwrap());
        assert_eq!(
            read(json!({ "exp": 200, "nbf": 100, "iat": 99.5 })),
            Some(TokenTimes {
                exp: 200.0,
                exp_secs: 200,
                nbf_secs: Some(100),
                iat: Some(99.5)
            })
        );
        assert_eq!(read(json!({ "exp": 200 })).unwrap().nbf_secs, None);
        // What jsonwebtoken would not have read: never cached.
        assert_eq!(read(json!({ "iat": 1 })), None);
        assert_eq!(read(json!({ "exp": "200" })), None);
        assert_eq!(read(json!({ "exp": -1 })), None);
        assert_eq!(read(json!({ "exp": 1e30 })), None);
        assert_eq!(read(json!({ "exp": 200, "nbf": -5 })), None);
        assert_eq!(read(json!({ "exp": 200, "nbf": "soon" })), None);
        assert_eq!(read(json!({ "exp": 200, "iat": "now" })), None);
    }

    #[test]
    fn the_cache_holds_at_most_max_entries() {
        for max in [1, 3, 16, 50, 1000] {
            let (cache, metrics) = cache(max);
            for i in 0..10 * max {
                put(
                    &cache,
                    &format!("token-{i}"),
                    "alice",
                    times(NOW + 3600),
                    NOW,
                );
                assert!(cache.len() <= max, "{} entries with max {max}", cache.len());
            }
            assert!(!cache.is_empty());
            assert!(metrics.token_cache_evictions.get() >= (9 * max) as u64);
        }
    }

    #[test]
    fn a_full_shard_drops_expired_entries_first_then_the_soonest_to_expire() {
        let metrics = Arc::new(Metrics::new());
        let cache = TokenCache::with_shards(3, 1, LEEWAY, metrics.clone());
        put(&cache, "a", "alice", times(NOW + 100), NOW);
        put(&cache, "b", "bob", times(NOW + 50), NOW);
        put(&cache, "c", "carol", times(NOW + 200), NOW);
        put(&cache, "d", "dave", times(NOW + 3600), NOW);
        assert_eq!(cache.len(), 3);
        assert_eq!(metrics.token_cache_evictions.get(), 1);
        assert!(
            hit(&cache, "b", NOW).is_none(),
            "the soonest to expire went"
        );
        for kept in ["a", "c", "d"] {
            assert!(hit(&cache, kept, NOW).is_some(), "{kept} kept");
        }

        // `a` has expired by now: it makes room, and that is no eviction.
        let later = NOW + 100 + LEEWAY + 1;
        put(&cache, "e", "erin", times(NOW + 3600), later);
        assert_eq!(cache.len(), 3);
        assert_eq!(metrics.token_cache_evictions.get(), 1);
        for kept in ["c", "d", "e"] {
            assert!(hit(&cache, kept, later).is_some(), "{kept} kept");
        }
    }

    #[test]
    fn a_flush_forgets_everything_and_a_fill_that_raced_it() {
        let (cache, _) = cache(100);
        put(&cache, "a", "alice", times(NOW + 3600), NOW);
        // A verification starts (its lookup misses) before the keys change...
        let Lookup::Miss(ticket) = cache.lookup("b", NOW) else {
            panic!("b is not cached")
        };
        cache.flush();
        assert!(cache.is_empty());
        assert!(hit(&cache, "a", NOW).is_none());
        // ...and ends after: its result, maybe from the old keys, is not kept.
        cache.fill(ticket, "b", &user("bob"), times(NOW + 3600), NOW);
        assert!(hit(&cache, "b", NOW).is_none());
        // Verifications started after the flush fill it again.
        put(&cache, "c", "carol", times(NOW + 3600), NOW);
        assert!(hit(&cache, "c", NOW).is_some());
    }

    #[test]
    fn concurrent_lookups_fills_and_flushes_keep_the_bound() {
        let (cache, _) = cache(64);
        let cache = Arc::new(cache);
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let cache = Arc::clone(&cache);
                std::thread::spawn(move || {
                    for i in 0..2000 {
                        let token = format!("token-{}", (i * 7 + t) % 300);
                        if let Lookup::Miss(ticket) = cache.lookup(&token, NOW) {
                            cache.fill(ticket, &token, &user("u"), times(NOW + 3600), NOW);
                        }
                        if t == 0 && i % 500 == 0 {
                            cache.flush();
                        }
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert!(cache.len() <= 64);
    }
}
