//! Data loss by design (eviction at the cap, expiry past `max_age`) is logged at ERROR,
//! because an operator must hear of it, but once per episode: the first loss of an
//! episode logs its count, the rest are counted, and after `QUIET` without one a WARN
//! gives the episode's total. One line per batch filled a journal with dozens of lines
//! that said the same thing.

use std::time::{Duration, Instant};

/// An episode ends after this long without a loss of its kind.
pub(super) const QUIET: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Loss {
    Evicted,
    Expired,
}

#[derive(Default)]
struct Episode {
    total: u64,
    last: Option<Instant>,
}

/// What to log now, if anything.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Say {
    /// The first loss of an episode: ERROR with this many.
    Began(u64),
    /// An episode is over: WARN with its total.
    Ended(u64),
}

#[derive(Default)]
pub(super) struct Losses {
    evicted: Episode,
    expired: Episode,
}

impl Losses {
    fn episode(&mut self, loss: Loss) -> &mut Episode {
        match loss {
            Loss::Evicted => &mut self.evicted,
            Loss::Expired => &mut self.expired,
        }
    }

    /// Counts `n` lost deliveries; says whether an episode began.
    pub(super) fn count(&mut self, loss: Loss, n: u64, now: Instant) -> Option<Say> {
        if n == 0 {
            return None;
        }
        let episode = self.episode(loss);
        let began = episode.last.is_none();
        episode.total += n;
        episode.last = Some(now);
        began.then_some(Say::Began(n))
    }

    /// Ends the episodes that went quiet.
    pub(super) fn quiet(&mut self, now: Instant) -> Vec<(Loss, Say)> {
        let mut said = Vec::new();
        for loss in [Loss::Evicted, Loss::Expired] {
            let episode = self.episode(loss);
            if let Some(last) = episode.last
                && now.duration_since(last) >= QUIET
            {
                said.push((loss, Say::Ended(episode.total)));
                *episode = Episode::default();
            }
        }
        said
    }
}

/// Logs what `Losses` says, with the cap for evictions.
pub(super) fn log(loss: Loss, say: Say, max_bytes: u64) {
    match (loss, say) {
        (Loss::Evicted, Say::Began(n)) => tracing::error!(
            evicted = n,
            max_bytes,
            "The outbox reached storage.max_bytes: evicting the lowest-priority, oldest pending deliveries \
             (data loss; more are counted, and the total is logged when it stops)."
        ),
        (Loss::Evicted, Say::Ended(total)) => {
            tracing::warn!(evicted = total, "Evictions stopped; this many deliveries were evicted in all.")
        }
        (Loss::Expired, Say::Began(n)) => tracing::error!(
            expired = n,
            "Deliveries passed their max_age undelivered and expired (data loss; more are counted, and the total \
             is logged when it stops)."
        ),
        (Loss::Expired, Say::Ended(total)) => {
            tracing::warn!(expired = total, "Expiries stopped; this many deliveries expired in all.")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_error_per_episode_then_one_total() {
        let t0 = Instant::now();
        let mut losses = Losses::default();
        assert_eq!(losses.count(Loss::Evicted, 0, t0), None);
        assert_eq!(losses.count(Loss::Evicted, 5, t0), Some(Say::Began(5)));
        for i in 1..40 {
            assert_eq!(losses.count(Loss::Evicted, 3, t0 + Duration::from_secs(i)), None);
        }
        assert_eq!(losses.count(Loss::Expired, 2, t0), Some(Say::Began(2)), "each kind has its own episode");
        assert!(losses.quiet(t0 + Duration::from_secs(70)).iter().all(|(l, _)| *l == Loss::Expired));
        let said = losses.quiet(t0 + Duration::from_secs(39) + QUIET);
        assert_eq!(said, vec![(Loss::Evicted, Say::Ended(5 + 39 * 3))]);
        assert!(losses.quiet(t0 + Duration::from_secs(500)).is_empty());
        assert_eq!(losses.count(Loss::Evicted, 1, t0 + Duration::from_secs(501)), Some(Say::Began(1)));
    }
}
