//! Bandwidth: `[link] max_rate` over every subscription, each subscription's `max_rate`
//! and `daily_budget`, and the metered profile that changes them. Pure state, no I/O:
//! lanes ask before they start a request and pay after it is sent.
//!
//! A rate is a token bucket of bytes that may run into debt: a request starts while the
//! bucket holds anything, pays an estimate at start (so that eight requests do not all
//! start on one full bucket), and the difference once its real size is known (request
//! line, headers, body as sent, after compression). Over a few requests the rate holds,
//! however big each one is. Waiting for bytes is not a failure and spends no retry.
//!
//! Over its daily budget a subscription sends only high-priority events; the rest stay
//! queued and drain, high then normal then low, once the rolling 24 hours allow again.
//! The metered profile holds low (or normal and low) the same way.

use std::time::{Duration, Instant};

use crate::config::{LinkConfig, Subscription};
use crate::link::Link;
use crate::outbox::Due;

/// The lowest priority (`Priority as i64`) that goes when nothing is held.
pub const ALL: i64 = 2;

/// A token bucket of bytes, refilled at `rate` per second up to one second's worth.
#[derive(Debug)]
pub struct ByteBucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl ByteBucket {
    pub fn new(rate: u64, now: Instant) -> Self {
        ByteBucket { rate: rate as f64, tokens: rate as f64, last: now }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.rate);
        self.last = now;
    }

    /// Ok when a request may start now, else when one may.
    pub fn open(&mut self, now: Instant) -> Result<(), Instant> {
        self.refill(now);
        if self.tokens > 0.0 {
            return Ok(());
        }
        let wait = (-self.tokens + 1.0) / self.rate;
        Err(now + Duration::from_secs_f64(wait.min(3600.0)))
    }

    /// Pays `bytes` (a refund when negative).
    pub fn charge(&mut self, bytes: i64) {
        self.tokens = (self.tokens - bytes as f64).min(self.rate);
    }

    pub fn set_rate(&mut self, rate: u64, now: Instant) {
        self.refill(now);
        self.rate = rate as f64;
        self.tokens = self.tokens.min(self.rate);
    }
}

/// A rate that may not be set: without one nothing is held.
#[derive(Debug, Default)]
struct Cap(Option<ByteBucket>);

impl Cap {
    fn new(rate: Option<u64>, now: Instant) -> Self {
        Cap(rate.map(|r| ByteBucket::new(r, now)))
    }

    /// A new rate (a profile switch); the bytes in the bucket carry over.
    fn set(&mut self, rate: Option<u64>, now: Instant) {
        self.0 = match (rate, self.0.take()) {
            (None, _) => None,
            (Some(r), Some(mut b)) => {
                b.set_rate(r, now);
                Some(b)
            }
            (Some(r), None) => Some(ByteBucket::new(r, now)),
        };
    }

    fn open(&mut self, now: Instant) -> Result<(), Instant> {
        self.0.as_mut().map_or(Ok(()), |b| b.open(now))
    }

    fn charge(&mut self, bytes: i64) {
        if let Some(b) = &mut self.0 {
            b.charge(bytes);
        }
    }
}

/// What a request is expected to cost before it is prepared: its events' bytes and
/// room for the envelope and headers. Compression makes the real cost smaller.
pub fn estimate(members: &[Due]) -> u64 {
    const HEADERS: u64 = 600;
    members.iter().map(|d| (d.data.len() + d.event_type.len() + d.device_id.len()) as u64 + 250).sum::<u64>() + HEADERS
}

/// The dispatcher's view of the link: its profile and the rate over every subscription.
#[derive(Default)]
pub struct LinkGate {
    pub link: Link,
    config: LinkConfig,
    bucket: Cap,
    metered: bool,
}

impl LinkGate {
    pub fn new(config: LinkConfig, link: Link) -> Self {
        let mut gate = LinkGate { link, config, bucket: Cap::default(), metered: false };
        // Seen as the other profile, so that `refresh` sets up the one in force.
        gate.metered = !gate.link.metered();
        gate.refresh(Instant::now());
        gate
    }

    /// Follows the profile `fleethook link` sets; says whether it changed.
    pub fn refresh(&mut self, now: Instant) -> bool {
        let metered = self.link.metered();
        if metered == self.metered {
            return false;
        }
        self.metered = metered;
        self.bucket.set(self.config.max_rate_in(metered), now);
        true
    }

    pub fn metered(&self) -> bool {
        self.metered
    }

    /// The lowest priority the profile lets go.
    pub fn lowest(&self) -> i64 {
        if self.metered { self.config.metered.hold.lowest_sent() } else { ALL }
    }

    /// Whether anything here may hold a request back (then nothing goes from memory).
    pub fn limits(&self) -> bool {
        self.bucket.0.is_some() || self.lowest() < ALL
    }

    pub fn open(&mut self, now: Instant) -> Result<(), Instant> {
        self.bucket.open(now)
    }

    pub fn charge(&mut self, bytes: i64) {
        self.bucket.charge(bytes);
    }
}

/// One subscription's rate and daily budget, in the profile in force.
#[derive(Debug, Default)]
pub struct LaneBudget {
    bucket: Cap,
    rates: [Option<u64>; 2],
    daily: [Option<u64>; 2],
    metered: bool,
}

impl LaneBudget {
    pub fn new(sub: &Subscription) -> Self {
        let m = sub.metered.as_ref();
        let rates = [sub.max_rate, m.and_then(|m| m.max_rate).or(sub.max_rate)];
        let daily = [sub.daily_budget, m.and_then(|m| m.daily_budget).or(sub.daily_budget)];
        let now = Instant::now();
        LaneBudget { bucket: Cap::new(rates[0], now), rates, daily, metered: false }
    }

    pub fn set_metered(&mut self, metered: bool, now: Instant) {
        self.metered = metered;
        self.bucket.set(self.rates[usize::from(metered)], now);
    }

    pub fn daily(&self) -> Option<u64> {
        self.daily[usize::from(self.metered)]
    }

    pub fn max_rate(&self) -> Option<u64> {
        self.rates[usize::from(self.metered)]
    }

    /// Whether this subscription has a rate or a budget in any profile.
    pub fn limits(&self) -> bool {
        self.rates.iter().chain(&self.daily).any(Option::is_some)
    }

    pub fn open(&mut self, now: Instant) -> Result<(), Instant> {
        self.bucket.open(now)
    }

    pub fn charge(&mut self, bytes: i64) {
        self.bucket.charge(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_runs_into_debt_and_opens_when_it_is_paid() {
        let t0 = Instant::now();
        let mut b = ByteBucket::new(1000, t0);
        assert!(b.open(t0).is_ok());
        b.charge(3000);
        let at = b.open(t0).unwrap_err();
        let wait = at - t0;
        assert!(wait > Duration::from_millis(1990) && wait < Duration::from_millis(2100), "{wait:?}");
        assert!(b.open(t0 + Duration::from_millis(1500)).is_err());
        assert!(b.open(t0 + Duration::from_millis(2100)).is_ok());
        // A refund when the request was smaller than its estimate.
        b.charge(-10_000);
        assert!(b.tokens <= 1000.0, "never more than a second's worth");
    }

    #[test]
    fn the_metered_profile_changes_rates_and_budgets_and_holds_priorities() {
        let mut config = LinkConfig { max_rate: Some(10_000), ..Default::default() };
        config.metered.max_rate = Some(1_000);
        let gate_link = Link::default();
        let mut gate = LinkGate::new(config, gate_link.clone());
        assert_eq!((gate.metered(), gate.lowest()), (false, ALL));
        gate_link.set_metered(true);
        assert!(gate.refresh(Instant::now()));
        assert_eq!(gate.lowest(), 1, "low is held by default");
        assert_eq!(gate.bucket.0.as_ref().map(|b| b.rate), Some(1000.0));
        assert!(!gate.refresh(Instant::now()), "no change, nothing to do");
    }
}
