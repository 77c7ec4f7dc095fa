//! A lane under the link's profile and its own bandwidth budget (`super::super::budget`):
//! how many requests it may start now, and which priorities wait.

use std::time::{Duration, Instant};

use super::super::budget::{ALL, LinkGate};
use super::Lane;
use crate::outbox::Due;

/// How often a subscription over its daily budget looks whether the rolling 24 hours
/// let it send again.
const RECHECK: Duration = Duration::from_secs(60);

impl Lane {
    /// `room` as the link and the budget allow it, and when to look again if they hold
    /// it back. Also follows the profile and the daily budget into which priorities go.
    pub(super) fn budget_room(
        &mut self,
        now: Instant,
        room: usize,
        wake: Option<Instant>,
        link: &mut LinkGate,
    ) -> (usize, Option<Instant>) {
        if link.metered() != self.metered {
            self.metered = link.metered();
            self.budget.set_metered(self.metered, now);
        }
        let over = self.budget.daily().is_some_and(|d| link.link.sent_24h(&self.sub.name) >= d);
        let lowest = if over { 0 } else { link.lowest() };
        self.set_lowest(lowest, over);
        let later = |wake: Option<Instant>, at: Instant| Some(wake.map_or(at, |w| w.min(at)));
        let wake = if over { later(wake, now + RECHECK) } else { wake };
        if room == 0 {
            return (0, wake);
        }
        // A FIFO lane keeps its order: a held head holds everything behind it.
        if self.is_fifo() && self.prefetched.front().is_some_and(|d| d.priority > self.lowest) {
            return (0, later(wake, now + Duration::from_secs(1)));
        }
        match self.rates_open(now, link) {
            Ok(()) => (room, wake),
            Err(at) => (0, later(wake, at)),
        }
    }

    /// Whether the subscription's rate and then the link's let a request start now;
    /// if not, when they will.
    fn rates_open(&mut self, now: Instant, link: &mut LinkGate) -> Result<(), Instant> {
        self.budget.open(now).and_then(|()| link.open(now))
    }

    fn set_lowest(&mut self, lowest: i64, over: bool) {
        if lowest < self.lowest && !self.is_fifo() {
            self.prefetched.retain(|d| d.priority <= lowest);
        }
        if lowest > self.lowest {
            if self.lowest < ALL || over != self.over_budget {
                tracing::info!(subscription = %self.sub.name, "Held priorities go again; they drain high, then normal, then low.");
            }
            self.poke();
        }
        if over && !self.over_budget {
            tracing::warn!(subscription = %self.sub.name, daily_budget = ?self.budget.daily(),
                "The subscription has sent its daily budget; only high-priority events go until the rolling 24 hours allow more. The rest wait, their retries untouched.");
        }
        self.over_budget = over;
        self.lowest = lowest;
    }

    /// Whether a request of `members` may start now; if so, it pays its estimate (the
    /// rest once it is sent). If not, the lane wakes when the rates allow.
    pub(super) fn afford(&mut self, now: Instant, members: &[Due], link: &mut LinkGate) -> bool {
        let open = self.may_start(now, link);
        if open {
            self.pay_estimate(members, link);
        }
        open
    }

    /// Whether the rates let a request start now; if not, the lane wakes when they do.
    pub(super) fn may_start(&mut self, now: Instant, link: &mut LinkGate) -> bool {
        match self.rates_open(now, link) {
            Ok(()) => true,
            Err(at) => {
                self.wake_at = Some(self.wake_at.map_or(at, |w| w.min(at)));
                false
            }
        }
    }

    /// Pays the estimate of a request about to start.
    pub(super) fn pay_estimate(&mut self, members: &[Due], link: &mut LinkGate) {
        let cost = super::super::budget::estimate(members) as i64;
        self.budget.charge(cost);
        link.charge(cost);
    }

    /// A request was sent: `sent` bytes, against the `estimate` paid at start.
    pub fn paid(&mut self, sent: u64, estimate: u64, link: &mut LinkGate) {
        let diff = sent as i64 - estimate as i64;
        self.budget.charge(diff);
        link.charge(diff);
        link.link.add(&self.sub.name, sent);
    }

    /// What `status` shows of the budget: the daily budget and the rate in force, and
    /// which priorities wait.
    pub(super) fn held_words(&self) -> Option<String> {
        match (self.lowest, self.over_budget) {
            (ALL, _) => None,
            (0, true) => Some("normal and low wait: daily budget spent".into()),
            (0, false) => Some("normal and low wait: metered link".into()),
            _ => Some("low waits: metered link".into()),
        }
    }
}
