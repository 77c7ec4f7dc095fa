//! Liveness for systemd's watchdog: each long-lived loop beats at least once a second
//! while it is turning (idle or busy), and the watchdog pings systemd only while every
//! loop has beaten since the last ping. A wedged loop stops the pings, and systemd
//! restarts the agent.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// How often an idle loop beats.
pub const BEAT: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
pub struct Liveness {
    pub ingest: AtomicU64,
    pub writer: AtomicU64,
    pub delivery: AtomicU64,
}

/// One loop's heart.
#[derive(Clone, Debug)]
pub struct Beat(Arc<Liveness>, fn(&Liveness) -> &AtomicU64);

impl Beat {
    pub fn beat(&self) {
        (self.1)(&self.0).fetch_add(1, Ordering::Relaxed);
    }
}

impl Liveness {
    pub fn new() -> Arc<Liveness> {
        Arc::new(Liveness::default())
    }

    pub fn ingest(self: &Arc<Self>) -> Beat {
        Beat(self.clone(), |l| &l.ingest)
    }

    pub fn writer(self: &Arc<Self>) -> Beat {
        Beat(self.clone(), |l| &l.writer)
    }

    pub fn delivery(self: &Arc<Self>) -> Beat {
        Beat(self.clone(), |l| &l.delivery)
    }

    fn snapshot(&self) -> [u64; 3] {
        [
            self.ingest.load(Ordering::Relaxed),
            self.writer.load(Ordering::Relaxed),
            self.delivery.load(Ordering::Relaxed),
        ]
    }
}

/// A loop that has not beaten for this long is stalled: idle loops beat once a [`BEAT`],
/// so a short `WatchdogSec` never mistakes an idle agent for a wedged one.
pub const STALL_AFTER: Duration = Duration::from_secs(2 * BEAT.as_secs());

/// When each loop was last seen making progress.
#[derive(Debug)]
pub struct Progress {
    counts: [u64; 3],
    seen: [Instant; 3],
}

impl Progress {
    pub fn new(counts: [u64; 3], now: Instant) -> Progress {
        Progress { counts, seen: [now; 3] }
    }

    /// Takes a new snapshot; names the loops that have not beaten for [`STALL_AFTER`].
    pub fn stalled(&mut self, counts: [u64; 3], now: Instant) -> Vec<&'static str> {
        for ((seen, new), old) in self.seen.iter_mut().zip(counts).zip(self.counts) {
            if new != old {
                *seen = now;
            }
        }
        self.counts = counts;
        ["ingest", "writer", "delivery"]
            .into_iter()
            .zip(self.seen)
            .filter(|(_, seen)| now.duration_since(*seen) >= STALL_AFTER)
            .map(|(name, _)| name)
            .collect()
    }
}

/// Pings systemd's watchdog every `every` while all loops make progress.
pub async fn watchdog(live: Arc<Liveness>, every: Duration, shutdown: CancellationToken) {
    let mut progress = Progress::new(live.snapshot(), Instant::now());
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let stuck = progress.stalled(live.snapshot(), Instant::now());
        if stuck.is_empty() {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
        } else {
            tracing::error!(loops = ?stuck, "A loop is not making progress; withholding the watchdog ping so systemd restarts the agent.");
        }
    }
}

/// Fault injection for tests: `FLEETHOOK_FAULT_WEDGE=writer` (or `ingest`, `delivery`)
/// makes that loop block forever after `FLEETHOOK_FAULT_WEDGE_AFTER` seconds (default 2).
/// Read once when the loop starts, never on its hot path.
#[derive(Debug)]
pub struct Wedge {
    name: &'static str,
    at: Instant,
}

impl Wedge {
    /// The wedge asked for loop `name`, if any.
    pub fn from_env(name: &'static str) -> Option<Wedge> {
        if std::env::var("FLEETHOOK_FAULT_WEDGE").ok().as_deref() != Some(name) {
            return None;
        }
        let after = std::env::var("FLEETHOOK_FAULT_WEDGE_AFTER").ok().and_then(|s| s.parse().ok()).unwrap_or(2);
        Some(Wedge { name, at: Instant::now() + Duration::from_secs(after) })
    }

    /// Blocks the calling thread forever once the wedge's time has come.
    pub fn block_if_due(&self) {
        if Instant::now() >= self.at {
            tracing::warn!(loop_name = self.name, "Fault injection: this loop now blocks forever.");
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_is_stalled_only_after_missing_beats_for_a_while() {
        let live = Liveness::new();
        let t0 = Instant::now();
        let mut progress = Progress::new(live.snapshot(), t0);
        // Idle loops beat once a second; a check between two beats is not a stall.
        assert!(progress.stalled(live.snapshot(), t0 + BEAT / 2).is_empty());
        live.ingest().beat();
        live.writer().beat();
        assert_eq!(progress.stalled(live.snapshot(), t0 + STALL_AFTER), ["delivery"]);
        live.delivery().beat();
        assert!(progress.stalled(live.snapshot(), t0 + STALL_AFTER + BEAT / 2).is_empty());
        assert_eq!(
            progress.stalled(live.snapshot(), t0 + STALL_AFTER * 2),
            ["ingest", "writer"],
            "the ones that stopped since"
        );
    }
}
