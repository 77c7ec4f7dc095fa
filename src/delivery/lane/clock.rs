//! A lane and the wall clock: signatures that carry a timestamp wait while the clock is
//! not good enough to sign with (`clock_policy`), and the endpoint's `Date` tells how far
//! our clock is from its own.

use std::time::{Duration, Instant};

use super::Lane;

/// How long at most deliveries wait for a good clock before they are signed anyway (an
/// ERROR says so): a robot whose clock never syncs must not hold its events for ever.
const CLOCK_WAIT_MAX: Duration = Duration::from_secs(6 * 3600);

/// Whether a lane waits for the wall clock: its signatures carry a timestamp, its policy
/// is `wait`, and the clock is not synced. The clock's state is read at most once a
/// second.
#[derive(Debug, Default)]
pub(super) struct ClockHold {
    /// None: this lane's signatures carry no timestamp, or its policy is `sign`.
    policy: Option<crate::config::ClockPolicy>,
    checked: Option<Instant>,
    pub(super) holding: bool,
    since: Option<Instant>,
    pub(super) gave_up: bool,
}

impl ClockHold {
    pub(super) fn holds(&mut self, now: Instant, name: &str) -> bool {
        let Some(policy) = self.policy else { return false };
        if self.checked.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1)) {
            self.checked = Some(now);
            let quality = crate::clock::quality();
            let bad = policy.holds(quality);
            if bad && !self.holding {
                tracing::warn!(subscription = %name, clock = quality.as_str(),
                    "The wall clock is not good enough to sign with; deliveries signed with a timestamp wait for it (clock_policy).");
                self.since.get_or_insert(now);
            }
            if !bad && self.holding {
                tracing::info!(subscription = %name, "The wall clock is good again; deliveries resume.");
                self.since = None;
                self.gave_up = false;
            }
            self.holding = bad;
        }
        if self.holding && !self.gave_up && self.since.is_some_and(|t| now.duration_since(t) >= CLOCK_WAIT_MAX) {
            tracing::error!(subscription = %name, waited_s = CLOCK_WAIT_MAX.as_secs(),
                "The wall clock never became good; signing with it anyway. Receivers that check timestamps will refuse these: fix the robot's time source.");
            self.gave_up = true;
        }
        self.holding && !self.gave_up
    }
}

impl Lane {
    pub(super) fn with_clock_policy(mut self) -> Lane {
        use crate::sign::Scheme;
        let timestamped = matches!(self.sub.signature, Scheme::Standard | Scheme::Stripe);
        self.clock.policy =
            Some(self.sub.clock_policy).filter(|p| timestamped && *p != crate::config::ClockPolicy::Sign);
        self
    }

    /// What the endpoint's `Date` said of our clock (None: it sent none).
    pub fn skew(&mut self, skew: Option<Option<String>>) {
        let Some(skew) = skew else { return };
        if let Some(words) = &skew
            && self.clock_skew.is_none()
        {
            tracing::warn!(subscription = %self.sub.name, skew = %words, "The endpoint's clock disagrees with ours (by its Date header).");
        }
        self.clock_skew = skew;
    }
}
