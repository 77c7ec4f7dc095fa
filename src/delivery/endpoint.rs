//! The state of one subscription's endpoint, as attempts reveal it, and how much it may
//! be sent right now. No I/O: the dispatcher feeds it verdicts and the clock.

use std::time::{Duration, Instant};

use super::outcome::Verdict;
use super::schedule::probe_delay;
use super::window::{Signal, Window};
use crate::config::RateLimit;

/// After this many 5xx or timeouts in a row an endpoint gets one request at a time.
pub const DEGRADED_AFTER: u32 = 5;

pub use crate::live::EndpointState as State;

#[derive(Debug)]
pub struct Endpoint {
    pub state: State,
    failed_probes: u32,
    probe_at: Option<Instant>,
    consecutive_errors: u32,
    probe_max: Duration,
    bucket: Option<TokenBucket>,
    /// How many may be in flight while it answers (see `window`).
    window: Window,
    /// A 429 or 503 with `Retry-After` holds the whole subscription until then.
    held_until: Option<Instant>,
}

impl Endpoint {
    pub fn new(probe_max: Duration, rate: Option<RateLimit>, enabled: bool) -> Self {
        Endpoint {
            state: if enabled { State::Online } else { State::Disabled },
            failed_probes: 0,
            probe_at: None,
            consecutive_errors: 0,
            probe_max,
            bucket: rate.map(TokenBucket::new),
            window: Window::default(),
            held_until: None,
        }
    }

    /// How many more requests may start now, given `in_flight` and the per-subscription
    /// `limit`; and if none, when to look again (None: on the next completion or wake).
    pub fn capacity(&mut self, now: Instant, in_flight: usize, limit: usize) -> (usize, Option<Instant>) {
        let stopped = matches!(self.state, State::Paused | State::Gone | State::Clock | State::Disabled);
        if let Some(until) = self.held_until(now).filter(|_| !stopped) {
            return (0, Some(until));
        }
        let by_state = match self.state {
            State::Paused | State::Gone | State::Clock | State::Disabled => return (0, None),
            State::Offline | State::Tls => match self.probe_at {
                // One probe at a time, when its backoff has passed.
                Some(at) if at > now => return (0, Some(at)),
                _ if in_flight > 0 => return (0, None),
                _ => 1,
            },
            State::Degraded => 1usize.saturating_sub(in_flight),
            State::Online => self.window.allows(limit).saturating_sub(in_flight),
        };
        match &mut self.bucket {
            Some(b) if by_state > 0 => {
                let tokens = b.available(now);
                if tokens == 0 { (0, Some(b.next_token_at(now))) } else { (by_state.min(tokens), None) }
            }
            _ => (by_state, None),
        }
    }

    /// Spends rate-limit tokens for requests about to start.
    pub fn started(&mut self, n: usize) {
        if let Some(b) = &mut self.bucket {
            b.take(n);
        }
    }

    /// Learns from one attempt's verdict; `status` is the HTTP status if there was one,
    /// `probe` whether the attempt was sent as an offline probe, `took` how long it took,
    /// `limit` the subscription's `max_in_flight`.
    #[allow(clippy::too_many_arguments)]
    pub fn observe(
        &mut self,
        verdict: &Verdict,
        status: Option<u16>,
        probe: bool,
        took: Duration,
        limit: usize,
        now: Instant,
        jitter_unit: f64,
    ) {
        if matches!(self.state, State::Paused | State::Gone | State::Disabled) {
            return;
        }
        // An answer after being unreachable: the window starts small, then learns from it.
        let answered = !matches!(verdict, Verdict::Offline { .. } | Verdict::Failed { gone: true, .. });
        if answered && matches!(self.state, State::Offline | State::Tls) {
            self.window.restart();
        }
        self.window.learn(signal(verdict, status, took), limit);
        if let (Verdict::Retry { after: Some(after), .. }, Some(429 | 503)) = (verdict, status) {
            // Jitter on top, so that a fleet told the same `Retry-After` does not come
            // back in the same second.
            let until = now + *after + after.mul_f64(0.2 * jitter_unit.clamp(0.0, 1.0));
            self.held_until = Some(self.held_until.map_or(until, |h| h.max(until)));
        }
        match verdict {
            Verdict::Offline { tls, .. } => {
                if probe {
                    self.failed_probes = self.failed_probes.saturating_add(1);
                } else if matches!(self.state, State::Offline | State::Tls) {
                    // A request started before the endpoint went offline: old news.
                    return;
                }
                self.state = if *tls { State::Tls } else { State::Offline };
                self.probe_at = Some(now + probe_delay(self.failed_probes, self.probe_max, jitter_unit));
            }
            Verdict::Failed { gone: true, .. } => self.state = State::Gone,
            _ => {
                // Any HTTP answer means the endpoint is reachable again.
                self.failed_probes = 0;
                self.probe_at = None;
                // A 5xx, or a timeout after connect (a retry without an answer): both
                // mean the endpoint is struggling, and a hanging one must not keep
                // `limit` requests tied up.
                let struggling =
                    status.is_some_and(|s| s >= 500) || (status.is_none() && matches!(verdict, Verdict::Retry { .. }));
                if struggling {
                    self.consecutive_errors += 1;
                } else {
                    self.consecutive_errors = 0;
                }
                self.state = if self.consecutive_errors >= DEGRADED_AFTER { State::Degraded } else { State::Online };
            }
        }
    }

    /// How long its 2xx answers usually take (smoothed), once it has given one.
    pub fn usual_answer(&self) -> Option<Duration> {
        self.window.usual()
    }

    pub fn mark_gone(&mut self) {
        if self.state != State::Disabled {
            self.state = State::Gone;
        }
    }

    pub fn pause(&mut self) {
        if self.state != State::Disabled {
            self.state = State::Paused;
        }
    }

    pub fn resume(&mut self) {
        if self.state == State::Disabled {
            return;
        }
        self.state = State::Online;
        self.failed_probes = 0;
        self.probe_at = None;
        self.consecutive_errors = 0;
    }

    pub fn next_probe(&self) -> Option<Instant> {
        self.probe_at
    }

    /// Until when a `Retry-After` holds the subscription, if it still does.
    pub fn held_until(&self, now: Instant) -> Option<Instant> {
        self.held_until.filter(|&u| u > now)
    }
}

/// What an attempt's outcome says about the endpoint's load.
fn signal(verdict: &Verdict, status: Option<u16>, took: Duration) -> Signal {
    match (verdict, status) {
        (Verdict::Delivered, _) => Signal::Answered(took),
        (_, Some(429 | 503)) => Signal::Overloaded,
        (Verdict::Retry { .. }, None) => Signal::TimedOut,
        _ => Signal::Neutral,
    }
}

/// A token bucket refilled continuously at `per_second`.
#[derive(Debug)]
struct TokenBucket {
    per_second: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    fn new(rate: RateLimit) -> Self {
        TokenBucket { per_second: rate.per_second, burst: rate.burst, tokens: rate.burst, at: Instant::now() }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        self.at = now;
    }

    fn available(&mut self, now: Instant) -> usize {
        self.refill(now);
        self.tokens.floor() as usize
    }

    fn take(&mut self, n: usize) {
        self.tokens -= n as f64;
    }

    fn next_token_at(&self, now: Instant) -> Instant {
        let missing = (1.0 - self.tokens).max(0.0);
        now + Duration::from_secs_f64(missing / self.per_second)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn offline() -> Verdict {
        Verdict::Offline { reason: "connect".into(), tls: false }
    }

    #[test]
    fn offline_probes_one_at_a_time_with_backoff() {
        let t0 = Instant::now();
        let mut e = Endpoint::new(Duration::from_secs(60), None, true);
        assert_eq!(e.capacity(t0, 0, 8).0, 8);
        e.observe(&offline(), None, false, MS, 8, t0, 0.5);
        e.observe(&offline(), None, false, MS, 8, t0, 0.5);
        assert_eq!(e.state, State::Offline);
        let (n, wake) = e.capacity(t0, 0, 8);
        assert_eq!((n, wake), (0, Some(t0 + Duration::from_secs(1))));
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(e.capacity(t1, 0, 8).0, 1);
        assert_eq!(e.capacity(t1, 1, 8).0, 0, "only one probe in flight");
        e.observe(&offline(), None, true, MS, 8, t1, 0.5);
        assert_eq!(e.next_probe(), Some(t1 + Duration::from_secs(2)));
        e.observe(&Verdict::Delivered, Some(200), true, MS, 8, t1, 0.5);
        assert_eq!(
            (e.state, e.capacity(t1, 0, 8).0),
            (State::Online, 3),
            "back with a small window: 2, +1 for this answer"
        );
    }

    #[test]
    fn repeated_server_errors_degrade_until_a_success() {
        let t = Instant::now();
        let mut e = Endpoint::new(Duration::from_secs(60), None, true);
        let retry = Verdict::Retry { after: None, reason: "HTTP 503".into() };
        for _ in 0..DEGRADED_AFTER {
            e.observe(&retry, Some(503), false, MS, 8, t, 0.5);
        }
        assert_eq!((e.state, e.capacity(t, 0, 8).0), (State::Degraded, 1));
        e.observe(&Verdict::Delivered, Some(200), false, MS, 8, t, 0.5);
        assert_eq!(e.state, State::Online);
        // Timeouts after connect count the same: a hanging endpoint gets one at a time.
        let timeout = Verdict::Retry { after: None, reason: "operation timed out".into() };
        for _ in 0..DEGRADED_AFTER {
            e.observe(&timeout, None, false, MS, 8, t, 0.5);
        }
        assert_eq!(e.state, State::Degraded);
    }

    #[test]
    fn gone_and_paused_send_nothing() {
        let t = Instant::now();
        let mut e = Endpoint::new(Duration::from_secs(60), None, true);
        e.observe(&Verdict::Failed { reason: "410".into(), gone: true }, Some(410), false, MS, 8, t, 0.5);
        assert_eq!((e.state, e.capacity(t, 0, 8).0), (State::Gone, 0));
        e.resume();
        assert_eq!(e.state, State::Online);
        assert_eq!(Endpoint::new(Duration::from_secs(1), None, false).state, State::Disabled);
    }

    #[test]
    fn rate_limit_caps_starts() {
        let t = Instant::now();
        let mut e = Endpoint::new(Duration::from_secs(60), Some(RateLimit { per_second: 5.0, burst: 5.0 }), true);
        let (n, _) = e.capacity(t, 0, 8);
        assert_eq!(n, 5);
        e.started(5);
        let (n, wake) = e.capacity(t, 0, 8);
        assert_eq!(n, 0);
        assert!(wake.unwrap() > t);
    }

    #[test]
    fn retry_after_holds_the_whole_subscription_with_jitter_on_top() {
        let t = Instant::now();
        let mut e = Endpoint::new(Duration::from_secs(5), None, true);
        let busy = Verdict::Retry { after: Some(Duration::from_secs(5)), reason: "HTTP 503".into() };
        e.observe(&busy, Some(503), false, MS, 8, t, 1.0);
        let until = t + Duration::from_secs(6);
        assert_eq!(e.capacity(t, 0, 8), (0, Some(until)), "5 s and 20 % of it");
        assert_eq!(e.capacity(t + Duration::from_secs(5), 0, 8).0, 0, "nothing inside the Retry-After");
        assert_eq!(e.capacity(until, 0, 8).0, 1, "then one at a time: the window dropped to one");
        // A 429 without Retry-After holds nothing, but shrinks the window.
        let mut e = Endpoint::new(Duration::from_secs(5), None, true);
        e.observe(&Verdict::Retry { after: None, reason: "HTTP 429".into() }, Some(429), false, MS, 8, t, 0.5);
        assert_eq!(e.capacity(t, 0, 8), (1, None));
    }

    #[test]
    fn a_503_to_the_probe_that_finds_the_endpoint_back_leaves_one_at_a_time() {
        let t = Instant::now();
        let mut e = Endpoint::new(Duration::from_secs(5), None, true);
        e.observe(&offline(), None, false, MS, 8, t, 0.5);
        let busy = Verdict::Retry { after: None, reason: "HTTP 503".into() };
        e.observe(&busy, Some(503), true, MS, 8, t, 0.5);
        assert_eq!((e.state, e.capacity(t, 0, 8).0), (State::Online, 1));
    }
}
