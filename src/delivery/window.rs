//! How many requests an answering endpoint may have at once: a congestion window, as TCP
//! keeps one. Pure; the endpoint feeds it answers and their times.
//!
//! After a return from offline, and after a 429 or 503, a subscription starts small and
//! grows on 2xx answers that come as fast as usual: one more per answer (doubling per
//! round trip) up to the threshold, then one more per window's worth. A 429 or 503 drops
//! it to one and halves the threshold; a timeout after connect halves it. The window never
//! exceeds the subscription's `max_in_flight`. See docs/decisions.md, "A fleet comes back".

use std::time::Duration;

/// Where a window starts after a return.
pub const AFTER_RETURN: f64 = 2.0;

/// An answer slower than this many times the usual does not grow the window.
const SLOW: f64 = 2.0;

/// Answers faster than this are fast whatever the usual (a loopback endpoint's 1 ms
/// doubling to 2 ms is noise).
const FAST_ENOUGH: Duration = Duration::from_millis(50);

#[derive(Debug, Clone)]
pub struct Window {
    size: f64,
    threshold: f64,
    /// The smoothed time of 2xx answers.
    usual: Option<Duration>,
}

/// What an answer says about the endpoint's load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// A 2xx, and how long it took.
    Answered(Duration),
    /// 429 or 503: the endpoint says it is over its capacity.
    Overloaded,
    /// No answer within the timeout, after connecting.
    TimedOut,
    /// Anything else: says nothing about load.
    Neutral,
}

impl Default for Window {
    /// A fresh start trusts the endpoint: the window is as large as `max_in_flight`
    /// allows until an answer says otherwise.
    fn default() -> Self {
        Window { size: f64::MAX, threshold: f64::MAX, usual: None }
    }
}

impl Window {
    /// Requests that may be in flight, at most `limit`.
    pub fn allows(&self, limit: usize) -> usize {
        (self.size.floor().max(1.0) as usize).min(limit.max(1))
    }

    /// The endpoint answered again after being unreachable: start small.
    pub fn restart(&mut self) {
        self.size = AFTER_RETURN;
    }

    /// The smoothed time of its 2xx answers, once there has been one.
    pub fn usual(&self) -> Option<Duration> {
        self.usual
    }

    pub fn learn(&mut self, signal: Signal, limit: usize) {
        let limit = limit.max(1) as f64;
        self.size = self.size.min(limit);
        match signal {
            Signal::Answered(took) => {
                let fast =
                    took <= FAST_ENOUGH || self.usual.is_none_or(|u| took.as_secs_f64() <= SLOW * u.as_secs_f64());
                self.usual = Some(match self.usual {
                    None => took,
                    Some(u) => u.mul_f64(0.875) + took.mul_f64(0.125),
                });
                if fast {
                    let step = if self.size < self.threshold { 1.0 } else { 1.0 / self.size };
                    self.size = (self.size + step).min(limit);
                }
            }
            Signal::Overloaded => {
                self.threshold = (self.size / 2.0).max(AFTER_RETURN);
                self.size = 1.0;
            }
            Signal::TimedOut => {
                self.size = (self.size / 2.0).max(1.0);
                self.threshold = self.size;
            }
            Signal::Neutral => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_window_grows_after_fast_answers_and_shrinks_after_a_503() {
        let mut w = Window::default();
        assert_eq!(w.allows(8), 8, "a fresh start trusts the endpoint");
        w.restart();
        assert_eq!(w.allows(8), 2);
        for _ in 0..3 {
            w.learn(Signal::Answered(MS), 8);
        }
        assert_eq!(w.allows(8), 5, "one more per fast answer");
        w.learn(Signal::Overloaded, 8);
        assert_eq!(w.allows(8), 1, "a 503 drops it to one");
        w.learn(Signal::Answered(MS), 8);
        w.learn(Signal::Answered(MS), 8);
        assert_eq!(w.allows(8), 3, "slow start again up to the halved threshold");
        for _ in 0..3 {
            w.learn(Signal::Answered(MS), 8);
        }
        assert_eq!(w.allows(8), 3, "past the threshold it grows by one per window");
        for _ in 0..60 {
            w.learn(Signal::Answered(MS), 8);
        }
        assert_eq!(w.allows(8), 8, "never beyond max_in_flight");
        w.learn(Signal::TimedOut, 8);
        assert_eq!(w.allows(8), 4, "a timeout halves it");
    }

    #[test]
    fn a_slow_answer_does_not_grow_it() {
        let mut w = Window::default();
        w.restart();
        w.learn(Signal::Answered(Duration::from_millis(100)), 8);
        assert_eq!(w.allows(8), 3);
        w.learn(Signal::Answered(Duration::from_millis(900)), 8);
        assert_eq!(w.allows(8), 3, "nine times the usual: the endpoint is struggling");
    }
}
