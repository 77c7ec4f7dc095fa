//! The link the robot sends over: whether it is metered (`fleethook link metered`), and
//! what each subscription has sent in the last 24 hours, against its `daily_budget`.
//! Shared by the dispatcher (which adds to it), the status socket (which switches the
//! profile and reads it) and the heartbeat; it outlives reloads. Owns no loop.
//!
//! The 24 hours roll in hourly steps on the schedule clock, which wall-clock steps do not
//! move and which is re-based across restarts (`clock`), so a budget neither resets nor
//! jumps when NTP corrects the time. What was sent is saved beside the outbox at most every
//! ten minutes, at a profile switch and at exit, without fsync: a kill or a power cut can
//! forget the last minutes' bytes, never a queued event. Each save dirties a page of
//! flash, so not more often (guarantee 6), and only while some subscription has a
//! `daily_budget` for the bytes to count against: otherwise they are shown since start.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

const HOUR_MS: i64 = 3_600_000;
const SAVE_EVERY: Duration = Duration::from_secs(600);

/// The link's state, shared.
#[derive(Clone, Default)]
pub struct Link(Arc<Mutex<State>>, Arc<AtomicBool>);

#[derive(Default)]
struct State {
    saved: Saved,
    path: Option<PathBuf>,
    dirty: bool,
    saved_at: Option<Instant>,
    /// A daily budget needs what was sent to outlive restarts.
    keep_sent: bool,
}

/// What is kept across restarts.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Saved {
    metered: bool,
    /// Bytes sent per subscription, per hour of the schedule clock, oldest first.
    sent: HashMap<String, VecDeque<(i64, u64)>>,
}

/// The link as `status` and the heartbeat show it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct LinkView {
    /// `metered` or `unmetered`.
    pub profile: &'static str,
}

impl Link {
    /// The link state saved in `dir` (beside the outbox), or a fresh one.
    pub fn open(dir: &Path) -> Link {
        let path = dir.join("link.json");
        let saved = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), error = %e, "Cannot read the saved link state; starting from none sent.");
                Saved::default()
            }),
            Err(_) => Saved::default(),
        };
        let metered = Arc::new(AtomicBool::new(saved.metered));
        Link(
            Arc::new(Mutex::new(State { saved, path: Some(path), dirty: false, saved_at: None, keep_sent: false })),
            metered,
        )
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut state = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut state)
    }

    /// Read on every turn of the dispatcher's loop: an atomic, not the lock.
    pub fn metered(&self) -> bool {
        self.1.load(Ordering::Relaxed)
    }

    /// Switches the profile; says whether it changed. Saved at once.
    pub fn set_metered(&self, metered: bool) -> bool {
        let changed = self.with(|s| {
            let changed = s.saved.metered != metered;
            s.saved.metered = metered;
            self.1.store(metered, Ordering::Relaxed);
            s.dirty |= changed;
            changed
        });
        if changed {
            tracing::info!(profile = if metered { "metered" } else { "unmetered" }, "The link profile changed.");
            self.save();
        }
        changed
    }

    /// `bytes` sent to `subscription` now.
    pub fn add(&self, subscription: &str, bytes: u64) {
        let hour = crate::clock::sched_ms().div_euclid(HOUR_MS);
        self.with(|s| {
            // Called for every request: no allocation once the subscription is known.
            if !s.saved.sent.contains_key(subscription) {
                s.saved.sent.insert(subscription.to_string(), VecDeque::new());
            }
            let Some(hours) = s.saved.sent.get_mut(subscription) else { return };
            match hours.back_mut() {
                Some((h, b)) if *h == hour => *b += bytes,
                _ => hours.push_back((hour, bytes)),
            }
            while hours.front().is_some_and(|(h, _)| *h <= hour - 24) {
                hours.pop_front();
            }
            s.dirty = true;
        });
    }

    /// What `subscription` has sent in the last 24 hours (in hourly steps).
    pub fn sent_24h(&self, subscription: &str) -> u64 {
        let hour = crate::clock::sched_ms().div_euclid(HOUR_MS);
        self.with(|s| {
            s.saved
                .sent
                .get(subscription)
                .map_or(0, |hours| hours.iter().filter(|(h, _)| *h > hour - 24).map(|(_, b)| b).sum())
        })
    }

    pub fn view(&self) -> LinkView {
        LinkView { profile: if self.metered() { "metered" } else { "unmetered" } }
    }

    /// Whether what was sent is saved now and then (some subscription has a daily
    /// budget), or only with a profile switch and at exit.
    pub fn keep_sent(&self, keep: bool) {
        self.with(|s| s.keep_sent = keep);
    }

    /// Saves if something changed, bytes sent are kept, and the last save is
    /// [`SAVE_EVERY`] old.
    pub fn save_if_due(&self) {
        let due = self.with(|s| s.keep_sent && s.dirty && s.saved_at.is_none_or(|t| t.elapsed() >= SAVE_EVERY));
        if due {
            self.save();
        }
    }

    /// Writes the state beside the outbox (a new file renamed over the old).
    pub fn save(&self) {
        let Some((path, bytes)) = self.with(|s| {
            s.dirty = false;
            s.saved_at = Some(Instant::now());
            Some((s.path.clone()?, serde_json::to_vec(&s.saved).ok()?))
        }) else {
            return;
        };
        let tmp = path.with_extension("json.new");
        if let Err(e) = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, &path)) {
            tracing::warn!(path = %path.display(), error = %e, "Cannot save the link state; bytes sent today may be forgotten at a restart.");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_was_sent_and_the_profile_outlive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let link = Link::open(dir.path());
        assert!(!link.metered());
        link.add("ops", 1000);
        link.add("ops", 500);
        link.add("cloud", 7);
        assert_eq!(link.sent_24h("ops"), 1500);
        assert!(link.set_metered(true));
        assert!(!link.set_metered(true), "no change");
        let again = Link::open(dir.path());
        assert!(again.metered());
        assert_eq!((again.sent_24h("ops"), again.sent_24h("cloud"), again.sent_24h("x")), (1500, 7, 0));
    }

    #[test]
    fn bytes_sent_are_saved_on_a_timer_only_for_a_daily_budget() {
        let dir = tempfile::tempdir().unwrap();
        let link = Link::open(dir.path());
        link.add("ops", 10);
        link.save_if_due();
        assert!(!dir.path().join("link.json").exists(), "no budget: no write");
        link.keep_sent(true);
        link.save_if_due();
        assert_eq!(Link::open(dir.path()).sent_24h("ops"), 10);
    }

    #[test]
    fn hours_older_than_a_day_are_forgotten() {
        let link = Link::default();
        let hour = crate::clock::sched_ms().div_euclid(HOUR_MS);
        link.with(|s| {
            s.saved.sent.insert("ops".into(), [(hour - 30, 9_000), (hour - 24, 5_000), (hour - 23, 40)].into());
        });
        assert_eq!(link.sent_24h("ops"), 40);
        link.add("ops", 2);
        assert_eq!(link.with(|s| s.saved.sent["ops"].len()), 2, "the old hours are dropped");
    }
}
