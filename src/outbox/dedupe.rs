//! Recognising a message that was already stored (the "few duplicates" guarantee).
//!
//! Each stored event carries its dedupe key in `events.dedupe_key`: 8 bytes of a hash of
//! the payload's own id (routes with `dedupe`) or of topic and payload. The keys of the
//! newest events are also held here, in memory, and looked up there — never in an index
//! on disk: keys are hashes, so an index would put every insert on a random page, and
//! that page (1 KiB written to the WAL, again at the checkpoint) cost more flash than the
//! event itself. After a restart the window is filled again from the newest rows.
//!
//! Keys staged by an open transaction count at once (a batch can hold a message and its
//! redelivery) and become part of the window when it commits; a rolled-back transaction
//! takes its keys with it, so a retried batch is not mistaken for its own duplicate.
//!
//! The window is shared ([`SharedKeys`]) between the writer and the fast path. An event
//! that the fast path is sending from memory *claims* its key first, so a redelivery that
//! arrives meanwhile (on either path) is recognised. A delivered event's key joins the
//! window; one that falls back to the durable path keeps its claim until that commit has
//! put the key in the window; one that could not be stored gives its claim back, so the
//! broker's next redelivery is taken in.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use sha2::{Digest, Sha256};

/// A dedupe key for a message: a hash of `scope` (topic, or the route for a payload id)
/// and `bytes` (payload, or the id).
pub fn content_key(scope: &str, bytes: &[u8]) -> i64 {
    let mut h = Sha256::new();
    h.update(scope.as_bytes());
    h.update([0u8]);
    h.update(bytes);
    let digest = h.finalize();
    i64::from_le_bytes(digest[..8].try_into().expect("a SHA-256 digest has 8 bytes"))
}

/// The newest keys, at most `capacity` of them.
pub struct RecentKeys {
    capacity: usize,
    set: HashSet<i64>,
    order: VecDeque<i64>,
    staged: Vec<i64>,
    staged_set: HashSet<i64>,
}

impl RecentKeys {
    pub fn new(capacity: usize) -> RecentKeys {
        RecentKeys {
            capacity: capacity.max(1),
            set: HashSet::new(),
            order: VecDeque::new(),
            staged: Vec::new(),
            staged_set: HashSet::new(),
        }
    }

    pub fn contains(&self, key: i64) -> bool {
        self.set.contains(&key) || self.staged_set.contains(&key)
    }

    /// Adds a key for the open transaction.
    pub fn stage(&mut self, key: i64) {
        if self.staged_set.insert(key) {
            self.staged.push(key);
        }
    }

    /// The open transaction committed: its keys join the window.
    pub fn commit(&mut self) {
        self.staged_set.clear();
        let staged = std::mem::take(&mut self.staged);
        self.extend(staged);
    }

    /// The open transaction rolled back: its keys never existed.
    pub fn discard(&mut self) {
        self.staged.clear();
        self.staged_set.clear();
    }

    /// Adds committed keys, oldest first, forgetting the oldest beyond the capacity.
    pub fn extend(&mut self, keys: impl IntoIterator<Item = i64>) {
        for key in keys {
            if self.set.insert(key) {
                self.order.push_back(key);
            }
            while self.order.len() > self.capacity {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.order.len()
    }
}

/// The dedupe window, shared by the writer and the fast path.
#[derive(Clone)]
pub struct SharedKeys(Arc<Mutex<Keys>>);

pub struct Keys {
    pub recent: RecentKeys,
    claimed: HashSet<i64>,
    /// Redeliveries the fast path recognised (the writer counts its own).
    pub fast_duplicates: u64,
}

impl Keys {
    pub fn contains(&self, key: i64) -> bool {
        self.recent.contains(key) || self.claimed.contains(&key)
    }
}

impl SharedKeys {
    pub fn new(capacity: usize) -> SharedKeys {
        SharedKeys(Arc::new(Mutex::new(Keys {
            recent: RecentKeys::new(capacity),
            claimed: HashSet::new(),
            fast_duplicates: 0,
        })))
    }

    pub fn lock(&self) -> MutexGuard<'_, Keys> {
        // A panic elsewhere while holding it cannot leave the sets half-changed in a way
        // that matters more than losing dedupe: keep going.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Claims `key` for an event about to be sent from memory; false (and counted) if
    /// `check` and it is known already: the event is a redelivery. Unchecked keys (a
    /// content hash of a message without DUP) are claimed all the same, so that their
    /// redelivery is recognised.
    pub fn claim(&self, key: i64, check: bool) -> bool {
        let mut keys = self.lock();
        if check && keys.contains(key) {
            keys.fast_duplicates += 1;
            return false;
        }
        keys.claimed.insert(key);
        true
    }

    /// The claimed event was delivered: its key joins the window.
    pub fn settle(&self, key: i64) {
        let mut keys = self.lock();
        keys.claimed.remove(&key);
        keys.recent.extend([key]);
    }

    /// Gives a claim back: the event was stored (its key is in the window by its commit)
    /// or could not be (the broker sends it again, and it must not look like a duplicate).
    pub fn release(&self, key: i64) {
        self.lock().claimed.remove(&key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claimed_key_marks_a_redelivery_until_given_back() {
        let keys = SharedKeys::new(10);
        assert!(keys.claim(7, true));
        assert!(!keys.claim(7, true), "a redelivery while the first is in flight");
        assert!(keys.lock().contains(7), "the writer sees the claim too");
        keys.release(7);
        assert!(keys.claim(7, true), "a claim given back lets the next redelivery in");
        keys.settle(7);
        assert!(!keys.claim(7, true), "a delivered key stays in the window");
        assert!(keys.claim(7, false), "an unchecked key is taken as new");
        assert_eq!(keys.lock().fast_duplicates, 2);
    }

    #[test]
    fn keys_depend_on_scope_and_bytes() {
        assert_eq!(content_key("t", b"x"), content_key("t", b"x"));
        assert_ne!(content_key("t", b"x"), content_key("u", b"x"));
        assert_ne!(content_key("t", b"x"), content_key("t", b"y"));
        // The scope and the bytes are separated: "ab" + "c" is not "a" + "bc".
        assert_ne!(content_key("ab", b"c"), content_key("a", b"bc"));
    }

    #[test]
    fn staged_keys_count_at_once_and_vanish_on_rollback() {
        let mut keys = RecentKeys::new(10);
        keys.stage(1);
        assert!(keys.contains(1), "a redelivery in the same batch is recognised");
        keys.discard();
        assert!(!keys.contains(1), "a rolled-back batch leaves no keys behind");
        keys.stage(2);
        keys.commit();
        assert!(keys.contains(2));
        assert_eq!(keys.len(), 1);
    }

    #[test]
    fn the_window_forgets_the_oldest_keys() {
        let mut keys = RecentKeys::new(3);
        keys.extend([1, 2, 3, 4]);
        assert!(!keys.contains(1));
        assert!(keys.contains(2) && keys.contains(4));
        assert_eq!(keys.len(), 3);
        keys.extend([2]);
        assert_eq!(keys.len(), 3, "a key seen again is not held twice");
    }
}
