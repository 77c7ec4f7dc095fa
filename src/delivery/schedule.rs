//! Retry and probe timing. Pure functions; the jitter source is passed in.

use std::time::Duration;

/// ±20 % jitter, so a fleet coming back online does not retry in lockstep.
pub const JITTER: f64 = 0.2;

/// Scales `d` by a factor in `[1 - JITTER, 1 + JITTER]`; `unit` is uniform in `[0, 1)`.
pub fn jittered(d: Duration, unit: f64) -> Duration {
    d.mul_f64(1.0 - JITTER + 2.0 * JITTER * unit.clamp(0.0, 1.0))
}

/// The delay before the next try after `budget_used` retries have been spent (counting
/// the one that just failed), or `None` when the schedule is exhausted.
pub fn retry_delay(schedule: &[Duration], budget_used: u32, unit: f64) -> Option<Duration> {
    let idx = budget_used.checked_sub(1)? as usize;
    schedule.get(idx).map(|d| jittered(*d, unit))
}

/// Offline probes: 1 s doubling per failed probe up to `max`, with jitter.
pub fn probe_delay(failed_probes: u32, max: Duration, unit: f64) -> Duration {
    let base = Duration::from_secs(1).saturating_mul(1u32 << failed_probes.min(20));
    jittered(base.min(max), unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_is_followed_then_exhausted() {
        let s = [Duration::from_secs(5), Duration::from_secs(30)];
        assert_eq!(retry_delay(&s, 1, 0.5), Some(Duration::from_secs(5)));
        assert_eq!(retry_delay(&s, 2, 0.5), Some(Duration::from_secs(30)));
        assert_eq!(retry_delay(&s, 3, 0.5), None);
        assert_eq!(retry_delay(&[], 1, 0.5), None);
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        let d = Duration::from_secs(100);
        assert_eq!(jittered(d, 0.0), Duration::from_secs(80));
        assert_eq!(jittered(d, 1.0), Duration::from_secs(120));
    }

    #[test]
    fn probes_double_up_to_the_cap() {
        let max = Duration::from_secs(60);
        let plain: Vec<u64> = (0..9).map(|n| probe_delay(n, max, 0.5).as_secs()).collect();
        assert_eq!(plain, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }
}
