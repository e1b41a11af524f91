//! The embedded store for one replica, under one mutex. It is laid out to hold many open uploads
//! in little memory: an upload costs its S3 key's bytes plus about 60 bytes of tables, and no
//! allocation of its own.
//!
//! - `slab`: every upload (`Entry`, 40 bytes) in fixed-size chunks, with the chunk's keys in pages
//!   beside it, addressed by a `u32` slot; its user and its source are numbers into tables of
//!   their own, shared by all their uploads.
//! - `index`: (user, upload id) -> slot, a hash table of bare slots (5 bytes each with its control
//!   byte), rather than a map that would hold a second copy of the id beside the entry.
//! - `attempts`: what confirmations left on an upload (lease, failures, the kept answer), only for
//!   the uploads ever claimed.
//! - per user, the slots in three runs (consumed, closed, open), each in window order: the user's
//!   open uploads and the user's own eviction.
//! - two timelines, every upload and the consumed ones, in window order: the sweep forgets from the
//!   front; when the store is full, closed entries at the front go first, then consumed ones.
//!
//! Window order is (window end, upload id, user): "soonest forgotten first", and total, so that
//! one upload has one place in every run.

use std::{
    collections::{BTreeMap, HashMap},
    hash::{BuildHasher, RandomState},
    ops::{Bound, Range},
    sync::{Arc, Mutex},
};

use async_trait::async_trait;
use hashbrown::HashTable;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{
    Admission, Claim, ClaimOutcome, ClaimRules, IssuedUpload, Lease, MAX_COUNTED_BYTES,
    MAX_STORED_RESPONSE_BYTES, PresignRules, QuotaKind, Settled, StoreError, StoreLimits,
    StoredResponse, UploadStore, Usage, from_unix_ms, unix_ms,
};
use crate::rate_limit::{RateLimit, RateLimitHeaders, gcra};

type UserId = Arc<str>;

/// An upload's place in the slab.
type Slot = u32;

/// A user's number in `Users`.
type UserNo = u32;

/// An upload's place in window order: (window end, upload id, user).
type Order = (i64, Uuid, UserNo);

const DAY_MS: i64 = 86_400_000;

/// Entries the sweep forgets per hold of the lock: a large expiry wave never stalls requests.
const PURGE_BATCH: usize = 512;

/// Slots per slab chunk: the slab grows by this many entries (40 KiB), never by copying.
const CHUNK: usize = 1024;

/// Shards of the index: one that grows rehashes 1/64 of the store under the lock, not all of it.
const INDEX_SHARDS: usize = 64;

/// Bytes of a key page. Every page has this size (a longer key gets one of its own), so that the
/// pages a compaction frees serve the next ones.
const PAGE: usize = 4096;

/// Slots of a timeline leaf: 2 KiB. A leaf never grows past it, however many uploads a second
/// brings (a bucket per time span would: large blocks, each growth leaving its old one behind).
const LEAF: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Issued and never claimed: no `Attempts` record.
    Fresh,
    /// Open for a confirmation again after a released claim.
    Issued,
    /// Held by one confirmation until it settles; it never lapses by itself.
    Claimed,
    Consumed,
}

#[derive(Debug)]
struct Entry {
    id: Uuid,
    window_end_ms: i64,
    /// Where its key is in its chunk's pages.
    key_at: u32,
    user: UserNo,
    /// From issue to window end, in ms; `FAR` when that does not fit (past about 24 days).
    window_ms: i32,
    /// Its number in `Inner::sources`.
    source: u16,
    stage: Stage,
}

impl Entry {
    fn order(&self) -> Order {
        (self.window_end_ms, self.id, self.user)
    }
}

/// `Entry::window_ms` of an entry whose issue instant is in `Slab::far_issued` instead.
const FAR: i32 = i32::MIN;

/// What confirmations left on an upload: rare, so kept aside rather than in every entry.
#[derive(Debug)]
struct Attempts {
    /// The last claim's lease: a repeated settle of the same claim, after a store timeout that hid
    /// its success, is recognised rather than counted as stale.
    lease: Uuid,
    /// Failed confirmations so far; none is taken before `retry_at_ms`.
    failed: u32,
    retry_at_ms: i64,
    /// The upstream's answer to the confirmation, when small enough to replay.
    response: Option<Box<StoredResponse>>,
}

impl Default for Attempts {
    fn default() -> Self {
        Self {
            lease: Uuid::nil(),
            failed: 0,
            retry_at_ms: i64::MIN,
            response: None,
        }
    }
}

/// `CHUNK` entries and their keys, in pages: a key of its own allocation would cost its size
/// class's rounding, and sit among the request's short-lived allocations, keeping their memory
/// pages resident long after the request.
#[derive(Debug, Default)]
struct Chunk {
    entries: Vec<Option<Entry>>,
    pages: Vec<Vec<u8>>,
    /// Bytes written to `pages`, and those of them whose entry is gone: compacted away once they
    /// are a quarter.
    stored: usize,
    dead: usize,
}

/// A key as stored: the text around its upload's id when it holds the id, as Kizen's keys do
/// (`uploads/<business>/<id>/<file>`), so that the id is not kept twice (36 bytes); else all of
/// it in `before`.
struct StoredKey<'a> {
    before: &'a str,
    id: Option<Uuid>,
    after: &'a str,
}

impl StoredKey<'_> {
    fn matches(&self, key: &str) -> bool {
        let Some(id) = self.id else {
            return self.before == key;
        };
        let middle = self.before.len()..self.before.len() + ID_TEXT;
        key.len() == middle.end + self.after.len()
            && key.starts_with(self.before)
            && key.ends_with(self.after)
            && key.as_bytes()[middle]
                == *id
                    .hyphenated()
                    .encode_lower(&mut Uuid::encode_buffer())
                    .as_bytes()
    }

    fn text(&self) -> String {
        let mut key = String::with_capacity(self.before.len() + ID_TEXT + self.after.len());
        key.push_str(self.before);
        if let Some(id) = self.id {
            key.push_str(id.hyphenated().encode_lower(&mut Uuid::encode_buffer()));
        }
        key.push_str(self.after);
        key
    }
}

/// Length of an id's hyphenated text.
const ID_TEXT: usize = 36;

fn read_varint(page: &[u8], next: &mut usize) -> usize {
    let mut value = 0;
    let mut shift = 0;
    loop {
        let byte = page[*next];
        *next += 1;
        value |= usize::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return value;
        }
        shift += 7;
    }
}

fn write_varint(head: &mut [u8], used: &mut usize, mut value: usize) {
    while value >= 0x80 {
        head[*used] = (value & 0x7f) as u8 | 0x80;
        value >>= 7;
        *used += 1;
    }
    head[*used] = value as u8;
    *used += 1;
}

/// The key of upload `id` stored at `at` (page number, then offset in the page's last 12 bits),
/// and its stored bytes in that page. Stored: the kept length times two, plus one if the id was
/// cut out (LEB128); then where it was; then the kept bytes.
fn stored_key(pages: &[Vec<u8>], at: u32, id: Uuid) -> (StoredKey<'_>, Range<usize>) {
    let page = &pages[(at >> 12) as usize];
    let start = (at & 0xfff) as usize;
    let mut next = start;
    let head = read_varint(page, &mut next);
    let cut = if head & 1 == 1 {
        Some(read_varint(page, &mut next))
    } else {
        None
    };
    let kept = &page[next..next + (head >> 1)];
    let text = |bytes| std::str::from_utf8(bytes).expect("keys are stored whole");
    let key = StoredKey {
        before: text(&kept[..cut.unwrap_or(kept.len())]),
        id: cut.map(|_| id),
        after: text(&kept[cut.unwrap_or(kept.len())..]),
    };
    (key, start..next + (head >> 1))
}

/// Appends `parts` as one stored key, returning where.
fn store(pages: &mut Vec<Vec<u8>>, stored: &mut usize, parts: &[&[u8]]) -> u32 {
    let need = parts.iter().map(|part| part.len()).sum();
    if !pages
        .last()
        .is_some_and(|page| page.capacity() == PAGE && PAGE - page.len() >= need)
    {
        pages.push(Vec::with_capacity(need.max(PAGE)));
    }
    let number = pages.len() - 1;
    let page = &mut pages[number];
    let at = number << 12 | page.len();
    for part in parts {
        page.extend_from_slice(part);
    }
    *stored += need;
    u32::try_from(at).expect("a chunk's keys fit in 2^20 pages")
}

impl Chunk {
    fn push_key(&mut self, key: &str, id: Uuid) -> u32 {
        let mut text = Uuid::encode_buffer();
        let text = id.hyphenated().encode_lower(&mut text);
        let (before, after, cut) = match key.find(&*text) {
            Some(cut) => (&key[..cut], &key[cut + ID_TEXT..], true),
            None => (key, "", false),
        };
        let mut head = [0; 20];
        let mut used = 0;
        write_varint(
            &mut head,
            &mut used,
            (before.len() + after.len()) << 1 | usize::from(cut),
        );
        if cut {
            write_varint(&mut head, &mut used, before.len());
        }
        store(
            &mut self.pages,
            &mut self.stored,
            &[&head[..used], before.as_bytes(), after.as_bytes()],
        )
    }

    /// Counts the key of an entry gone as dead; past a quarter, moves the live ones to new pages.
    fn forget_key(&mut self, at: u32, id: Uuid) {
        self.dead += stored_key(&self.pages, at, id).1.len();
        if self.dead * 4 <= self.stored {
            return;
        }
        let old = std::mem::take(&mut self.pages);
        self.stored = 0;
        self.dead = 0;
        for entry in self.entries.iter_mut().flatten() {
            let bytes = stored_key(&old, entry.key_at, entry.id).1;
            let bytes = &old[(entry.key_at >> 12) as usize][bytes];
            entry.key_at = store(&mut self.pages, &mut self.stored, &[bytes]);
        }
    }
}

/// Every upload, in chunks: growing never copies entries (nor leaves a doubled vector half
/// empty), and the next record reuses a freed slot. A chunk's entries stay allocated once used:
/// at most `max_uploads` entries' worth.
#[derive(Debug, Default)]
struct Slab {
    chunks: Vec<Chunk>,
    free: Vec<Slot>,
    len: usize,
    /// Issue instants of the entries whose `window_ms` is `FAR`.
    far_issued: HashMap<Slot, i64>,
}

fn place(slot: Slot) -> (usize, usize) {
    let slot = slot as usize;
    (slot / CHUNK, slot % CHUNK)
}

impl Slab {
    fn get(&self, slot: Slot) -> &Entry {
        let (chunk, at) = place(slot);
        self.chunks[chunk].entries[at]
            .as_ref()
            .expect("every indexed slot holds an upload")
    }

    fn get_mut(&mut self, slot: Slot) -> &mut Entry {
        let (chunk, at) = place(slot);
        self.chunks[chunk].entries[at]
            .as_mut()
            .expect("every indexed slot holds an upload")
    }

    fn order(&self, slot: Slot) -> Order {
        self.get(slot).order()
    }

    fn key(&self, slot: Slot) -> StoredKey<'_> {
        let entry = self.get(slot);
        stored_key(&self.chunks[place(slot).0].pages, entry.key_at, entry.id).0
    }

    fn issued_ms(&self, slot: Slot) -> i64 {
        let entry = self.get(slot);
        if entry.window_ms == FAR {
            self.far_issued[&slot]
        } else {
            entry.window_end_ms - i64::from(entry.window_ms)
        }
    }

    fn insert(&mut self, upload: &IssuedUpload, user: UserNo, source: u16) -> Slot {
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                if self
                    .chunks
                    .last()
                    .is_none_or(|chunk| chunk.entries.len() == CHUNK)
                {
                    self.chunks.push(Chunk {
                        entries: Vec::with_capacity(CHUNK),
                        ..Chunk::default()
                    });
                }
                let used = (self.chunks.len() - 1) * CHUNK
                    + self.chunks[self.chunks.len() - 1].entries.len();
                Slot::try_from(used).expect("memory runs out long before 2^32 uploads")
            }
        };
        let issued_ms = unix_ms(upload.issued_at);
        let window_end_ms = unix_ms(upload.window_end);
        let window_ms = window_end_ms
            .checked_sub(issued_ms)
            .and_then(|window| i32::try_from(window).ok())
            .filter(|&window| window != FAR)
            .unwrap_or(FAR);
        if window_ms == FAR {
            self.far_issued.insert(slot, issued_ms);
        }
        let (chunk, at) = place(slot);
        let chunk = &mut self.chunks[chunk];
        let entry = Some(Entry {
            id: upload.s3object_id,
            window_end_ms,
            key_at: chunk.push_key(&upload.key, upload.s3object_id),
            user,
            window_ms,
            source,
            stage: Stage::Fresh,
        });
        if at == chunk.entries.len() {
            chunk.entries.push(entry);
        } else {
            chunk.entries[at] = entry;
        }
        self.len += 1;
        slot
    }

    fn remove(&mut self, slot: Slot) {
        let (chunk, at) = place(slot);
        let chunk = &mut self.chunks[chunk];
        let entry = chunk.entries[at]
            .take()
            .expect("every indexed slot holds an upload");
        chunk.forget_key(entry.key_at, entry.id);
        if entry.window_ms == FAR {
            self.far_issued.remove(&slot);
        }
        self.free.push(slot);
        self.len -= 1;
    }
}

/// (user, upload id) -> slot. The table holds bare slots and hashes and compares through the slab.
#[derive(Debug)]
struct Index {
    shards: Vec<HashTable<Slot>>,
    hasher: RandomState,
}

impl Default for Index {
    fn default() -> Self {
        Self {
            shards: (0..INDEX_SHARDS).map(|_| HashTable::new()).collect(),
            hasher: RandomState::new(),
        }
    }
}

impl Index {
    fn hash(hasher: &RandomState, user: UserNo, id: &Uuid) -> u64 {
        hasher.hash_one((user, id))
    }

    /// From bits the tables themselves do not look at (they probe with the low bits and tag with
    /// the top seven), so that a shard's slots still spread over its whole table.
    fn shard(hash: u64) -> usize {
        (hash >> 32) as usize % INDEX_SHARDS
    }

    fn find(&self, slab: &Slab, user: UserNo, id: &Uuid) -> Option<Slot> {
        let hash = Self::hash(&self.hasher, user, id);
        self.shards[Self::shard(hash)]
            .find(hash, |&slot| {
                let entry = slab.get(slot);
                entry.user == user && entry.id == *id
            })
            .copied()
    }

    fn insert(&mut self, slab: &Slab, slot: Slot) {
        let entry = slab.get(slot);
        let hash = Self::hash(&self.hasher, entry.user, &entry.id);
        let hasher = &self.hasher;
        self.shards[Self::shard(hash)].insert_unique(hash, slot, |&other| {
            let entry = slab.get(other);
            Self::hash(hasher, entry.user, &entry.id)
        });
    }

    fn remove(&mut self, slab: &Slab, slot: Slot) {
        let entry = slab.get(slot);
        let hash = Self::hash(&self.hasher, entry.user, &entry.id);
        if let Ok(found) = self.shards[Self::shard(hash)].find_entry(hash, |&other| other == slot) {
            found.remove();
        }
    }
}

/// Slots in window order, in leaves of at most `LEAF`, each under a bound below its slots and
/// above those of the leaf before: 4 bytes an upload, and one out of order shifts one leaf only.
#[derive(Debug, Default)]
struct Timeline {
    leaves: BTreeMap<Order, Vec<Slot>>,
}

impl Timeline {
    fn insert(&mut self, slab: &Slab, slot: Slot) {
        let at = slab.order(slot);
        let bound = match self.leaves.range(..=at).next_back() {
            Some((&bound, _)) => bound,
            None => {
                // Before every leaf: the first one's bound comes down to it.
                let leaf = match self.leaves.pop_first() {
                    Some((_, leaf)) => leaf,
                    None => Vec::with_capacity(LEAF),
                };
                self.leaves.insert(at, leaf);
                at
            }
        };
        let leaf = self.leaves.get_mut(&bound).expect("found or made above");
        // Uploads mostly arrive in window order: appending is the common case.
        let place = if leaf.last().is_none_or(|&last| slab.order(last) < at) {
            leaf.len()
        } else {
            leaf.partition_point(|&other| slab.order(other) < at)
        };
        if leaf.len() < LEAF {
            leaf.insert(place, slot);
            return;
        }
        // Full: split where the slot goes if that is in the second half, so that a leaf filled in
        // order stays full, else in the middle.
        let cut = place.max(LEAF / 2);
        let mut right = Vec::with_capacity(LEAF);
        right.extend_from_slice(&leaf[cut..]);
        leaf.truncate(cut);
        if place < cut {
            leaf.insert(place, slot);
        } else {
            right.insert(place - cut, slot);
        }
        self.leaves.insert(slab.order(right[0]), right);
    }

    fn remove(&mut self, slab: &Slab, slot: Slot) {
        let at = slab.order(slot);
        let Some((&bound, leaf)) = self.leaves.range_mut(..=at).next_back() else {
            return;
        };
        let Ok(place) = leaf.binary_search_by(|&other| slab.order(other).cmp(&at)) else {
            return;
        };
        leaf.remove(place);
        let len = leaf.len();
        if len == 0 {
            self.leaves.remove(&bound);
        } else if len < LEAF / 4 {
            // A leaf emptied out of order joins a neighbour rather than stay sparse.
            let fits = |(&other, leaf): (&Order, &Vec<Slot>)| {
                (len + leaf.len() <= LEAF / 2).then_some(other)
            };
            if let Some(before) = self.leaves.range(..bound).next_back().and_then(fits) {
                let leaf = self.leaves.remove(&bound).expect("found above");
                self.leaves
                    .get_mut(&before)
                    .expect("found above")
                    .extend_from_slice(&leaf);
            } else if let Some(after) = self
                .leaves
                .range((Bound::Excluded(bound), Bound::Unbounded))
                .next()
                .and_then(fits)
            {
                let after = self.leaves.remove(&after).expect("found above");
                self.leaves
                    .get_mut(&bound)
                    .expect("found above")
                    .extend_from_slice(&after);
            }
        }
    }

    fn iter(&self) -> impl Iterator<Item = Slot> + '_ {
        self.leaves.values().flatten().copied()
    }

    fn first(&self) -> Option<Slot> {
        self.iter().next()
    }
}

#[derive(Debug)]
struct User {
    name: UserId,
    /// The user's slots in three runs, each in window order: consumed, then closed (not consumed,
    /// window closed as of the last count), then open. One vector rather than three sets: an
    /// upload costs 4 bytes here and a user 48; a record appends, a settle or a forget shifts the
    /// slots after it, at most `max_uploads_per_user` (4 KiB at the default 1000).
    slots: Vec<Slot>,
    consumed_end: u32,
    closed_end: u32,
}

impl User {
    fn consumed(&self) -> Range<usize> {
        0..self.consumed_end as usize
    }

    fn closed(&self) -> Range<usize> {
        self.consumed_end as usize..self.closed_end as usize
    }

    fn open(&self) -> Range<usize> {
        self.closed_end as usize..self.slots.len()
    }

    /// Where `slot` is (`Ok`) or would go (`Err`) in `run`.
    fn locate(&self, run: Range<usize>, slot: Slot, slab: &Slab) -> Result<usize, usize> {
        let at = slab.order(slot);
        let slots = &self.slots[run.clone()];
        // Uploads mostly arrive in window order: appending is the common case.
        if slots.last().is_none_or(|&last| slab.order(last) < at) {
            return Err(run.end);
        }
        slots
            .binary_search_by(|&other| slab.order(other).cmp(&at))
            .map(|place| run.start + place)
            .map_err(|place| run.start + place)
    }

    /// Where a slot not consumed is: in the closed run or the open one.
    fn locate_unconsumed(&self, slot: Slot, slab: &Slab) -> usize {
        self.locate(self.closed(), slot, slab)
            .or_else(|_| self.locate(self.open(), slot, slab))
            .expect("a user's runs hold the user's uploads")
    }

    fn add_open(&mut self, slot: Slot, slab: &Slab) {
        if let Err(place) = self.locate(self.open(), slot, slab) {
            self.slots.insert(place, slot);
        }
    }

    /// Moves the open uploads whose window closed before `now_ms` to the closed run (for good,
    /// whatever later calls' `now_ms`) and returns how many stay open.
    fn close(&mut self, now_ms: i64, slab: &Slab) -> usize {
        let open = self.open();
        let closing =
            self.slots[open].partition_point(|&slot| slab.get(slot).window_end_ms < now_ms);
        if closing > 0 {
            let before = self.closed();
            self.closed_end += u32::try_from(closing).expect("a user holds fewer than 2^32");
            // Those closing now normally end after the ones closed before; one recorded with its
            // window already past, or an earlier `now_ms`, may not.
            if !before.is_empty()
                && slab.order(self.slots[before.end - 1]) > slab.order(self.slots[before.end])
            {
                let closed = self.closed();
                self.slots[closed].sort_unstable_by_key(|&slot| slab.order(slot));
            }
        }
        self.slots.len() - self.closed_end as usize
    }

    fn consume(&mut self, slot: Slot, slab: &Slab) {
        let from = self.locate_unconsumed(slot, slab);
        let Err(to) = self.locate(self.consumed(), slot, slab) else {
            return;
        };
        self.slots[to..=from].rotate_right(1);
        // An open upload leaves the closed run where it was, one place further on.
        if from >= self.closed_end as usize {
            self.closed_end += 1;
        }
        self.consumed_end += 1;
    }

    fn remove(&mut self, slot: Slot, slab: &Slab) {
        let place = if slab.get(slot).stage == Stage::Consumed {
            self.locate(self.consumed(), slot, slab)
                .expect("a user's runs hold the user's uploads")
        } else {
            self.locate_unconsumed(slot, slab)
        };
        self.slots.remove(place);
        if place < self.consumed_end as usize {
            self.consumed_end -= 1;
        }
        if place < self.closed_end as usize {
            self.closed_end -= 1;
        }
    }
}

/// The users holding uploads, by number (what an entry names) and by id.
#[derive(Debug, Default)]
struct Users {
    numbered: Vec<Option<User>>,
    free: Vec<UserNo>,
    by_id: HashMap<UserId, UserNo>,
}

impl Users {
    fn find(&self, id: &str) -> Option<UserNo> {
        self.by_id.get(id).copied()
    }

    fn get(&self, user: UserNo) -> &User {
        self.numbered[user as usize]
            .as_ref()
            .expect("an entry's user is held")
    }

    fn get_mut(&mut self, user: UserNo) -> &mut User {
        self.numbered[user as usize]
            .as_mut()
            .expect("an entry's user is held")
    }

    /// The user's number, given one if new; `shared` is the same id held elsewhere, to share
    /// rather than copy.
    fn intern(&mut self, id: &str, shared: Option<UserId>) -> UserNo {
        if let Some(user) = self.find(id) {
            return user;
        }
        let name = shared.unwrap_or_else(|| id.into());
        let user = User {
            name: name.clone(),
            // Most users hold few uploads.
            slots: Vec::with_capacity(1),
            consumed_end: 0,
            closed_end: 0,
        };
        let number = match self.free.pop() {
            Some(number) => {
                self.numbered[number as usize] = Some(user);
                number
            }
            None => {
                self.numbered.push(Some(user));
                UserNo::try_from(self.numbered.len() - 1)
                    .expect("memory runs out long before 2^32 users")
            }
        };
        self.by_id.insert(name, number);
        number
    }

    fn forget(&mut self, user: UserNo) {
        if let Some(forgotten) = self.numbered[user as usize].take() {
            self.by_id.remove(&forgotten.name);
            self.free.push(user);
        }
    }
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
    slab: Slab,
    index: Index,
    /// By slot, for the uploads not `Fresh`.
    attempts: HashMap<Slot, Attempts>,
    users: Users,
    /// Every entry.
    by_window: Timeline,
    /// The consumed entries: evicted next when the store is full.
    consumed: Timeline,
    /// Budgets of the users who spent some lately (pruned by the sweep once whole again).
    budgets: HashMap<UserId, Budgets>,
    daily: DailyCounters,
    /// The few distinct `source` values, numbered for the entries.
    sources: Vec<Box<str>>,
}

impl Inner {
    /// The source's number; `None` past 2^16 distinct sources (there are a handful).
    fn source(&mut self, source: &str) -> Option<u16> {
        if let Some(number) = self.sources.iter().position(|known| **known == *source) {
            return u16::try_from(number).ok();
        }
        let number = u16::try_from(self.sources.len()).ok()?;
        self.sources.push(source.into());
        Some(number)
    }

    fn find(&self, user: &str, id: Uuid) -> Option<Slot> {
        let user = self.users.find(user)?;
        self.index.find(&self.slab, user, &id)
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
            None => {
                let id = match self.users.by_id.get_key_value(user) {
                    Some((id, _)) => id.clone(),
                    None => user.into(),
                };
                self.budgets.entry(id).or_default()
            }
        };
        if confirm {
            entry.confirm_tat = new_tat;
        } else {
            entry.presign_tat = new_tat;
        }
        Ok(headers)
    }

    /// The user's open uploads, closing those past their window first.
    fn outstanding(&mut self, user: &str, now_ms: i64) -> usize {
        match self.users.find(user) {
            Some(user) => self.users.get_mut(user).close(now_ms, &self.slab),
            None => 0,
        }
    }

    fn issued(&self, slot: Slot, user: &str) -> IssuedUpload {
        let entry = self.slab.get(slot);
        IssuedUpload {
            s3object_id: entry.id,
            key: self.slab.key(slot).text(),
            user: user.to_owned(),
            source: self.sources[usize::from(entry.source)].to_string(),
            issued_at: from_unix_ms(self.slab.issued_ms(slot)),
            window_end: from_unix_ms(entry.window_end_ms),
        }
    }

    /// Forgets one entry.
    fn remove(&mut self, slot: Slot) {
        let entry = self.slab.get(slot);
        let (user, stage) = (entry.user, entry.stage);
        let owner = self.users.get_mut(user);
        owner.remove(slot, &self.slab);
        if owner.slots.is_empty() {
            self.users.forget(user);
        }
        self.by_window.remove(&self.slab, slot);
        if stage == Stage::Consumed {
            self.consumed.remove(&self.slab, slot);
        }
        if stage != Stage::Fresh {
            self.attempts.remove(&slot);
        }
        self.index.remove(&self.slab, slot);
        self.slab.remove(slot);
    }

    /// Whether an entry may be forgotten early, its window closed or its upload consumed: not
    /// while a confirmation holds it.
    fn evictable(&self, slot: Slot) -> bool {
        self.slab.get(slot).stage != Stage::Claimed
    }

    /// Makes room for one more entry of `user`: first within the user's own bound, then within the
    /// store's, by forgetting confirmed and expired entries (past their window, oldest first, else
    /// the oldest confirmed one). Never an open upload.
    fn make_room(&mut self, user: &str, limits: &StoreLimits, now_ms: i64) -> bool {
        while let Some(number) = self.users.find(user) {
            let owner = self.users.get_mut(number);
            if owner.slots.len() < limits.max_uploads_per_user {
                break;
            }
            owner.close(now_ms, &self.slab);
            let owner = self.users.get(number);
            let victim = owner.slots[owner.closed()]
                .iter()
                .copied()
                .find(|&slot| self.evictable(slot))
                .or_else(|| owner.slots[owner.consumed()].first().copied());
            match victim {
                Some(slot) => self.remove(slot),
                None => return false,
            }
        }
        while self.slab.len >= limits.max_uploads {
            let victim = self
                .by_window
                .iter()
                .take_while(|&slot| self.slab.get(slot).window_end_ms < now_ms)
                .find(|&slot| self.evictable(slot))
                .or_else(|| self.consumed.first());
            match victim {
                Some(slot) => self.remove(slot),
                None => return false,
            }
        }
        true
    }

    /// Forgets up to `PURGE_BATCH` entries whose memory has passed; `false` when none is left.
    fn purge_batch(
        &mut self,
        now_ms: i64,
        remember_ms: i64,
        never_confirmed: &mut Vec<IssuedUpload>,
    ) -> bool {
        for _ in 0..PURGE_BATCH {
            let Some(slot) = self.by_window.first() else {
                return false;
            };
            if self
                .slab
                .get(slot)
                .window_end_ms
                .saturating_add(remember_ms)
                > now_ms
            {
                return false;
            }
            let entry = self.slab.get(slot);
            if entry.stage != Stage::Consumed {
                never_confirmed.push(self.issued(slot, &self.users.get(entry.user).name));
            }
            self.remove(slot);
        }
        true
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
        // Nothing under the lock panics unless an invariant is already broken (the `expect`s),
        // so a poisoned lock is still usable.
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
        let Some(slot) = inner.find(user, id) else {
            return ClaimOutcome::NotFound;
        };
        let entry = inner.slab.get(slot);
        if now_ms >= entry.window_end_ms.saturating_add(remember_ms) {
            return ClaimOutcome::NotFound;
        }
        let key_matches = inner.slab.key(slot).matches(key);
        let attempts = inner.attempts.get(&slot);
        match entry.stage {
            Stage::Consumed => {
                return ClaimOutcome::AlreadyConfirmed(if key_matches {
                    attempts.and_then(|a| a.response.as_deref().cloned())
                } else {
                    None
                });
            }
            _ if !key_matches => return ClaimOutcome::KeyMismatch,
            Stage::Claimed => return ClaimOutcome::InFlight,
            Stage::Fresh | Stage::Issued => {}
        }
        if now_ms > entry.window_end_ms {
            return ClaimOutcome::Expired;
        }
        let retry_at_ms = attempts.map_or(i64::MIN, |a| a.retry_at_ms);
        if now_ms < retry_at_ms {
            return ClaimOutcome::BackingOff {
                until: from_unix_ms(retry_at_ms),
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
        inner.attempts.entry(slot).or_default().lease = lease.0;
        inner.slab.get_mut(slot).stage = Stage::Claimed;
        ClaimOutcome::Claimed {
            lease,
            upload: inner.issued(slot, user),
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
        let user = upload.user.as_str();
        let mut inner = self.lock();
        if inner.outstanding(user, now_ms) >= max_outstanding {
            return Err(StoreError::UserCapReached {
                limit: max_outstanding,
            });
        }
        if inner.find(user, upload.s3object_id).is_some() {
            // An upstream that repeats an s3object_id must not overwrite an upload.
            return Err(StoreError::Duplicate);
        }
        // Sources are the configured few; past 2^16 of them there is no room to number one.
        let Some(source) = inner.source(&upload.source) else {
            return Err(StoreError::Full);
        };
        if !inner.make_room(user, &self.limits, now_ms) {
            return Err(StoreError::Full);
        }
        let shared = inner.budgets.get_key_value(user).map(|(id, _)| id.clone());
        let number = inner.users.intern(user, shared);
        let slot = inner.slab.insert(upload, number, source);
        let Inner {
            slab,
            index,
            users,
            by_window,
            ..
        } = &mut *inner;
        index.insert(slab, slot);
        users.get_mut(number).add_open(slot, slab);
        by_window.insert(slab, slot);
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
        let Some(slot) = inner.find(&upload.user, upload.s3object_id) else {
            return Ok(Settled::Stale);
        };
        // A never claimed upload holds the nil lease.
        let held = inner.attempts.get(&slot).map_or(Uuid::nil(), |a| a.lease);
        if held != lease.0 {
            return Ok(Settled::Stale);
        }
        match inner.slab.get(slot).stage {
            Stage::Claimed => {}
            // This claim's release already landed.
            Stage::Fresh | Stage::Issued => return Ok(Settled::Done),
            Stage::Consumed => return Ok(Settled::Stale),
        }
        let attempts = inner.attempts.entry(slot).or_default();
        attempts.failed = attempts.failed.saturating_add(1);
        if attempts.failed >= rules.max_attempts {
            attempts.retry_at_ms = add_ms(unix_ms(now), rules.attempt_backoff);
        }
        inner.slab.get_mut(slot).stage = Stage::Issued;
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
        let Some(slot) = inner.find(&upload.user, upload.s3object_id) else {
            return Ok(Settled::Stale);
        };
        let held = inner.attempts.get(&slot).map_or(Uuid::nil(), |a| a.lease);
        if held != lease.0 {
            return Ok(Settled::Stale);
        }
        match inner.slab.get(slot).stage {
            Stage::Claimed => {}
            // This claim's consume already landed.
            Stage::Consumed => return Ok(Settled::Done),
            Stage::Fresh | Stage::Issued => return Ok(Settled::Stale),
        }
        let keep = response.body.len() <= MAX_STORED_RESPONSE_BYTES;
        inner.attempts.entry(slot).or_default().response = keep.then(|| Box::new(response));
        let Inner {
            slab,
            users,
            consumed,
            daily,
            ..
        } = &mut *inner;
        let number = {
            let entry = slab.get_mut(slot);
            entry.stage = Stage::Consumed;
            entry.user
        };
        let owner = users.get_mut(number);
        owner.consume(slot, slab);
        consumed.insert(slab, slot);
        daily.count(&owner.name, unix_ms(now).div_euclid(DAY_MS), size_bytes);
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
        Ok(Some(self.lock().slab.len))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;

    const RULES: ClaimRules = ClaimRules {
        rate: RateLimit {
            burst: 1_000_000,
            period: Duration::from_secs(1),
        },
        max_attempts: 3,
        attempt_backoff: Duration::from_secs(60),
        max_uploads_per_day: None,
        max_bytes_per_day: None,
    };

    const REMEMBER: Duration = Duration::from_secs(3600);

    fn store(max_uploads: usize, max_uploads_per_user: usize) -> MemoryStore {
        MemoryStore::new(StoreLimits {
            max_uploads,
            max_uploads_per_user,
            remember_expired: REMEMBER,
        })
    }

    fn at(ms: i64) -> OffsetDateTime {
        from_unix_ms(1_800_000_000_000 + ms)
    }

    fn upload(user: &str, window_end_ms: i64) -> IssuedUpload {
        let id = Uuid::new_v4();
        IssuedUpload {
            s3object_id: id,
            key: format!("uploads/business/{id}/file.png"),
            user: user.to_owned(),
            source: "field_value".into(),
            issued_at: at(window_end_ms - 600_000),
            window_end: at(window_end_ms),
        }
    }

    fn answer() -> StoredResponse {
        StoredResponse {
            status: 200,
            content_type: None,
            body: Bytes::from_static(b"{}"),
        }
    }

    /// A small deterministic generator (xorshift): the order of arrivals and settles.
    struct Dice(u64);

    impl Dice {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    impl Inner {
        /// Every index, run and timeline agrees with the slab.
        fn check(&self) {
            let mut live = 0;
            let mut consumed = 0;
            for (number, chunk) in self.slab.chunks.iter().enumerate() {
                let mut stored = 0;
                for (at, entry) in chunk.entries.iter().enumerate() {
                    let Some(entry) = entry else { continue };
                    let slot = Slot::try_from(number * CHUNK + at).unwrap();
                    live += 1;
                    consumed += usize::from(entry.stage == Stage::Consumed);
                    stored += stored_key(&chunk.pages, entry.key_at, entry.id).1.len();
                    assert_eq!(
                        self.index.find(&self.slab, entry.user, &entry.id),
                        Some(slot)
                    );
                    let user = self.users.get(entry.user);
                    assert_eq!(self.users.find(&user.name), Some(entry.user));
                    let runs = if entry.stage == Stage::Consumed {
                        vec![user.consumed()]
                    } else {
                        vec![user.closed(), user.open()]
                    };
                    assert!(runs.into_iter().any(|run| user.slots[run].contains(&slot)));
                    assert_eq!(
                        entry.stage != Stage::Fresh,
                        self.attempts.contains_key(&slot)
                    );
                    assert_eq!(
                        entry.window_ms == FAR,
                        self.slab.far_issued.contains_key(&slot)
                    );
                }
                assert_eq!(stored, chunk.stored - chunk.dead);
            }
            assert_eq!(live, self.slab.len);
            assert_eq!(self.attempts.len(), live - self.fresh());
            let mut held = 0;
            for user in self.users.numbered.iter().flatten() {
                assert!(!user.slots.is_empty());
                held += user.slots.len();
                for run in [user.consumed(), user.closed(), user.open()] {
                    let orders: Vec<_> = user.slots[run]
                        .iter()
                        .map(|&s| self.slab.order(s))
                        .collect();
                    assert!(orders.is_sorted_by(|a, b| a < b));
                }
            }
            assert_eq!(held, live);
            for (timeline, len) in [(&self.by_window, live), (&self.consumed, consumed)] {
                let orders: Vec<_> = timeline.iter().map(|s| self.slab.order(s)).collect();
                assert_eq!(orders.len(), len);
                assert!(orders.is_sorted_by(|a, b| a < b));
                let mut bounds = timeline.leaves.iter().peekable();
                while let Some((bound, leaf)) = bounds.next() {
                    assert!(!leaf.is_empty() && leaf.len() <= LEAF);
                    assert!(*bound <= self.slab.order(leaf[0]));
                    if let Some((next, _)) = bounds.peek() {
                        assert!(self.slab.order(*leaf.last().unwrap()) < **next);
                    }
                }
            }
        }

        fn fresh(&self) -> usize {
            self.slab
                .chunks
                .iter()
                .flat_map(|chunk| chunk.entries.iter().flatten())
                .filter(|entry| entry.stage == Stage::Fresh)
                .count()
        }
    }

    /// Leaves split when full and join their neighbours when sparse, whichever end empties.
    #[test]
    fn timeline_leaves_split_and_join() {
        let mut slab = Slab::default();
        let mut timeline = Timeline::default();
        let slots: Vec<Slot> = (0..4 * LEAF)
            .map(|i| slab.insert(&upload("u", i64::try_from(i).unwrap()), 0, 0))
            .collect();
        let check = |timeline: &Timeline, expected: &[Slot]| {
            assert_eq!(timeline.iter().collect::<Vec<_>>(), expected);
            assert!(timeline.leaves.values().all(|leaf| leaf.len() <= LEAF));
        };
        // In reverse: every slot lands before the first leaf.
        for &slot in slots.iter().rev() {
            timeline.insert(&slab, slot);
        }
        check(&timeline, &slots);
        let sizes =
            |timeline: &Timeline| timeline.leaves.values().map(Vec::len).collect::<Vec<_>>();
        let mut kept = slots.clone();
        let remove = |timeline: &mut Timeline, kept: &mut Vec<Slot>, at: usize| {
            timeline.remove(&slab, kept.remove(at));
            check(timeline, kept);
        };
        // A sparse leaf, then its neighbour thinned from the front: each joins the other, the
        // one after it or the one before.
        for (sparse, thinned) in [(1, 0), (3, 4)] {
            let size = sizes(&timeline);
            // Their other neighbours are too full to join either.
            assert!(size.len() > 5 && size[2] >= LEAF / 2 && size[5] >= LEAF / 2);
            let start = |leaf: usize| size[..leaf].iter().sum::<usize>();
            for _ in 0..size[sparse] - 40 {
                remove(&mut timeline, &mut kept, start(sparse));
            }
            let leaves = timeline.leaves.len();
            let at = if thinned < sparse {
                start(thinned)
            } else {
                start(sparse) + 40
            };
            while timeline.leaves.len() == leaves {
                remove(&mut timeline, &mut kept, at);
            }
        }
        for slot in kept {
            timeline.remove(&slab, slot);
        }
        assert!(timeline.leaves.is_empty());
    }

    async fn confirm(store: &MemoryStore, up: &IssuedUpload, now: OffsetDateTime) {
        let claim = store
            .claim(&up.user, up.s3object_id, &up.key, now, &RULES)
            .await
            .unwrap();
        let ClaimOutcome::Claimed { lease, upload } = claim.outcome else {
            panic!("{:?}", claim.outcome);
        };
        assert_eq!(&upload, up);
        let settled = store.consume(up, lease, answer(), 1, now).await.unwrap();
        assert_eq!(settled, Settled::Done);
    }

    #[test]
    fn records_stay_small() {
        if cfg!(target_pointer_width = "64") {
            assert_eq!(std::mem::size_of::<Option<Entry>>(), 40);
            assert_eq!(std::mem::size_of::<User>(), 48);
        }
    }

    /// Keys with and without their id, long and short, not ASCII; windows near and far.
    #[tokio::test]
    async fn an_upload_comes_back_as_recorded() {
        let store = store(1000, 100);
        let now = at(0);
        let mut uploads = Vec::new();
        for (i, shape) in [
            "{id}",
            "a/{id}/{id}/b",
            "x{id}",
            "{id}é",
            "ünïcode/{id}/ö",
            "plain",
            "",
        ]
        .into_iter()
        .enumerate()
        {
            let mut up = upload(&format!("user{i}"), 600_000);
            up.key = shape.replace("{id}", &up.s3object_id.to_string());
            uploads.push(up);
        }
        let mut long = upload("long", 600_000);
        long.key = format!("{}{}", "k".repeat(5000), long.s3object_id);
        uploads.push(long);
        let mut upper = upload("upper", 600_000);
        upper.key = upper.s3object_id.to_string().to_uppercase();
        uploads.push(upper);
        for (i, days) in [-30_i64, 30, 0].into_iter().enumerate() {
            let mut up = upload(&format!("far{i}"), 600_000);
            up.issued_at = up.window_end - time::Duration::days(days);
            uploads.push(up);
        }
        for up in &uploads {
            store.record(up, 10, now).await.unwrap();
        }
        store.lock().check();
        for up in &uploads {
            let mut shorter = up.key.clone();
            shorter.pop();
            let wrongs = [
                format!("{}x", up.key),
                shorter,
                up.key
                    .replace(&up.s3object_id.to_string(), &Uuid::new_v4().to_string()),
            ];
            for wrong in wrongs.iter().filter(|wrong| **wrong != up.key) {
                let claim = store
                    .claim(&up.user, up.s3object_id, wrong, now, &RULES)
                    .await
                    .unwrap();
                assert_eq!(claim.outcome, ClaimOutcome::KeyMismatch, "{wrong}");
            }
            confirm(&store, up, now).await;
        }
        store.lock().check();
    }

    /// Uploads arriving in any window order, settled in any order, leave every run and timeline
    /// in window order; the sweep reports the never-confirmed ones soonest first and leaves
    /// nothing behind.
    #[tokio::test]
    async fn window_order_survives_any_arrival() {
        let store = store(100_000, 10_000);
        let mut dice = Dice(0x9e37_79b9_7f4a_7c15);
        let now = at(0);
        let mut uploads = Vec::new();
        for _ in 0..5000 {
            let user = format!("user{}", dice.below(40));
            // Ties in window end are common; some windows have closed already.
            let up = upload(
                &user,
                i64::try_from(dice.below(400)).unwrap() * 1000 - 20_000,
            );
            store.record(&up, 10_000, now).await.unwrap();
            uploads.push(up);
        }
        store.lock().check();
        let mut confirmed = Vec::new();
        for up in &uploads {
            match dice.below(4) {
                0 if up.window_end >= now => {
                    confirm(&store, up, now).await;
                    confirmed.push(up.s3object_id);
                }
                1 => {
                    let outstanding = store.usage(&up.user, now).await.unwrap().outstanding;
                    let expected = uploads
                        .iter()
                        .filter(|other| {
                            other.user == up.user
                                && other.window_end >= now
                                && !confirmed.contains(&other.s3object_id)
                        })
                        .count();
                    assert_eq!(outstanding, expected);
                }
                _ => {}
            }
        }
        store.lock().check();
        let mut reported = Vec::new();
        for step in 0..50 {
            let purged = store.purge(at(step * 10_000) + REMEMBER).await.unwrap();
            store.lock().check();
            reported.extend(purged);
        }
        let mut expected: Vec<_> = uploads
            .iter()
            .filter(|up| !confirmed.contains(&up.s3object_id))
            .collect();
        expected.sort_by_key(|up| (up.window_end, up.s3object_id));
        assert_eq!(reported.len(), expected.len());
        for (got, want) in reported.iter().zip(expected) {
            assert_eq!(got, want);
        }
        let inner = store.lock();
        assert_eq!(inner.slab.len, 0);
        assert!(inner.by_window.leaves.is_empty() && inner.consumed.leaves.is_empty());
        assert!(inner.users.by_id.is_empty() && inner.attempts.is_empty());
        assert!(inner.slab.chunks.iter().all(|chunk| chunk.pages.is_empty()));
    }

    /// Eviction goes through closed and confirmed entries of every age, freed slots are reused,
    /// and keys moved by compaction stay whole.
    #[tokio::test]
    async fn eviction_and_reuse_keep_everything_whole() {
        let store = store(3000, 200);
        let mut dice = Dice(7);
        let mut live: Vec<IssuedUpload> = Vec::new();
        for round in 0..20_i64 {
            let now = at(round * 60_000);
            for _ in 0..400 {
                let user = format!("user{}", dice.below(30));
                let window = i64::try_from(dice.below(120)).unwrap() * 1000;
                let up = upload(&user, round * 60_000 + window);
                match store.record(&up, 150, now).await {
                    Ok(()) => live.push(up),
                    Err(StoreError::UserCapReached { .. } | StoreError::Full) => {}
                    Err(other) => panic!("{other}"),
                }
            }
            for up in live.iter().filter(|up| up.window_end >= now) {
                if dice.below(3) == 0 {
                    let claim = store
                        .claim(&up.user, up.s3object_id, &up.key, now, &RULES)
                        .await
                        .unwrap();
                    if let ClaimOutcome::Claimed { lease, upload } = claim.outcome {
                        assert_eq!(&upload, up);
                        store.consume(up, lease, answer(), 1, now).await.unwrap();
                    }
                }
            }
            store.lock().check();
            // What is still there comes back whole.
            for up in &live {
                let claim = store
                    .claim(&up.user, up.s3object_id, &up.key, now, &RULES)
                    .await
                    .unwrap();
                match claim.outcome {
                    ClaimOutcome::Claimed { lease, upload } => {
                        assert_eq!(&upload, up);
                        store.release(up, lease, now, &RULES).await.unwrap();
                    }
                    ClaimOutcome::NotFound
                    | ClaimOutcome::Expired
                    | ClaimOutcome::BackingOff { .. }
                    | ClaimOutcome::AlreadyConfirmed(Some(_)) => {}
                    other => panic!("{other:?}"),
                }
            }
            assert!(store.entry_count().await.unwrap().unwrap() <= 3000);
        }
        store.lock().check();
    }
}
