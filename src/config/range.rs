//! The documented range of every number, size and duration in the config. A value that
//! passes `check` must be safe for the arithmetic that uses it: a semaphore's permits, a
//! probe's backoff, a token bucket's refill, an expiry time. The ranges are also written
//! beside each key in `config/fleethook.toml`.

use std::time::Duration;

use super::RateLimit;

const SECOND: Duration = Duration::from_secs(1);
const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);
const MS: Duration = Duration::from_millis(1);

/// `[heartbeat] interval`: 0 (off), or 1 s to 1 d.
pub const HEARTBEAT: (Duration, Duration) = (SECOND, DAY);
/// `[delivery] max_in_flight`.
pub const GLOBAL_IN_FLIGHT: (u64, u64) = (1, 4096);
/// `[delivery] offline_probe_max`.
pub const PROBE_MAX: (Duration, Duration) = (Duration::from_millis(100), HOUR);
/// `[delivery] shutdown_grace`.
pub const SHUTDOWN_GRACE: (Duration, Duration) = (Duration::ZERO, Duration::from_secs(600));
/// `[storage] max_bytes`.
pub const MAX_BYTES: (u64, u64) = (64 << 10, 1 << 40);
/// `[storage] audit_per_subscription`.
pub const AUDIT_ROWS: (u64, u64) = (1, 1_000_000);
/// `[storage] write_behind`: the broker holds that long's messages unacked.
pub const WRITE_BEHIND: (Duration, Duration) = (Duration::ZERO, Duration::from_secs(10));
/// `[ros] type_wait`: the broker holds that long's messages unacked.
pub const TYPE_WAIT: (Duration, Duration) = (Duration::ZERO, MINUTE);
/// `[mqtt] keep_alive`: MQTT carries it in whole seconds, in 16 bits.
pub const KEEP_ALIVE: (Duration, Duration) = (Duration::from_secs(5), Duration::from_secs(65_535));
/// `[mqtt] broker_max_inflight`: MQTT's Receive Maximum is 16 bits.
pub const BROKER_INFLIGHT: (u64, u64) = (1, 65_535);
/// `[mqtt] max_payload`.
pub const MAX_PAYLOAD: (u64, u64) = (1 << 10, 256 << 20);
/// A route's `ttl` and a subscription's `max_age`: up to ten years.
pub const AGE: (Duration, Duration) = (SECOND, Duration::from_secs(3650 * 86_400));
/// A subscription's `max_in_flight`.
pub const SUBSCRIPTION_IN_FLIGHT: (u64, u64) = (1, 1024);
/// Each delay in a subscription's `retry`.
pub const RETRY_DELAY: (Duration, Duration) = (Duration::ZERO, Duration::from_secs(7 * 86_400));
/// How many delays `retry` may list.
pub const RETRY_COUNT: usize = 100;
/// A subscription's `timeout`.
pub const TIMEOUT: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(600));
/// A subscription's `connect_timeout`.
pub const CONNECT_TIMEOUT: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(300));
/// A subscription's `batch.max_events`.
pub const BATCH_EVENTS: (u64, u64) = (1, 10_000);
/// A subscription's `batch.max_bytes`: the body before compression.
pub const BATCH_BYTES: (u64, u64) = (1 << 10, 64 << 20);
/// A subscription's `batch.max_wait`.
pub const BATCH_WAIT: (Duration, Duration) = (Duration::ZERO, Duration::from_secs(3600));
/// `max_rate` (the link's, a subscription's), in bytes per second.
pub const BYTE_RATE: (u64, u64) = (64, 1 << 30);
/// A subscription's `daily_budget`.
pub const DAILY_BUDGET: (u64, u64) = (1 << 10, 1 << 40);
/// A subscription's `rate_limit`, in requests per second: 1/h to 10 000/s.
pub const RATE: (f64, f64) = (1.0 / 3600.0, 10_000.0);

/// A duration string within `(min, max)`.
pub fn duration_in((min, max): (Duration, Duration)) -> impl Fn(&str) -> Result<Duration, String> {
    move |s| {
        let d = humantime::parse_duration(s.trim())
            .map_err(|e| format!("`{s}` is not a duration ({e}); use e.g. \"500ms\", \"5s\", \"7d\""))?;
        if d < min || d > max {
            return Err(format!("`{s}` is out of range: from {} to {}", show(min), show(max)));
        }
        Ok(d)
    }
}

/// `[heartbeat] interval`: 0 turns it off, anything else within `HEARTBEAT`.
pub fn heartbeat(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s.trim()) {
        Ok(d) if d.is_zero() => Ok(d),
        _ => duration_in(HEARTBEAT)(s).map_err(|e| format!("{e} (or \"0s\" for no heartbeat)")),
    }
}

/// A size string (`"256MiB"`) within `(min, max)` bytes.
pub fn size_in((min, max): (u64, u64)) -> impl Fn(&str) -> Result<u64, String> {
    move |s| {
        let n = s
            .trim()
            .parse::<bytesize::ByteSize>()
            .map(|b| b.as_u64())
            .map_err(|e| format!("`{s}` is not a size ({e}); use e.g. \"256MiB\""))?;
        if n < min || n > max {
            let (lo, hi) = (bytesize::ByteSize(min).display().iec(), bytesize::ByteSize(max).display().iec());
            return Err(format!("`{s}` is out of range: from {lo} to {hi}"));
        }
        Ok(n)
    }
}

/// A byte rate, `"32KiB/s"`, `"100MB/h"`, in bytes per second within `BYTE_RATE`.
pub fn byte_rate(s: &str) -> Result<u64, String> {
    let err = || format!("`{s}` is not a byte rate; use e.g. \"32KiB/s\", \"50MiB/h\"");
    let (size, unit) = s.rsplit_once('/').ok_or_else(err)?;
    let per = match unit.trim() {
        "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => return Err(err()),
    };
    let bytes = size.trim().parse::<bytesize::ByteSize>().map_err(|_| err())?.as_u64();
    let rate = (bytes as f64 / per).round() as u64;
    if rate < BYTE_RATE.0 || rate > BYTE_RATE.1 {
        return Err(format!("`{s}` is out of range: from 64 B/s to 1 GiB/s"));
    }
    Ok(rate)
}

/// A count within `(min, max)`.
pub fn count_in(n: u64, (min, max): (u64, u64)) -> Result<u64, String> {
    if n < min || n > max {
        return Err(format!("{n} is out of range: from {min} to {max}"));
    }
    Ok(n)
}

/// `"5/s"`, `"100/m"`, `"1000/h"`, within `RATE`.
pub fn parse_rate(s: &str) -> Result<RateLimit, String> {
    let err = || format!("`{s}` is not a rate; use e.g. \"5/s\", \"100/m\"");
    let (n, unit) = s.split_once('/').ok_or_else(err)?;
    let n: f64 = n.trim().parse().map_err(|_| err())?;
    let per = match unit.trim() {
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(err()),
    };
    let per_second = n / per;
    if !per_second.is_finite() || per_second < RATE.0 * (1.0 - 1e-9) || per_second > RATE.1 {
        return Err(format!("`{s}` is out of range: from 1/h to 10000/s"));
    }
    Ok(RateLimit { per_second, burst: per_second.max(1.0) })
}

fn show(d: Duration) -> String {
    if d.is_zero() {
        return "0s".into();
    }
    for (unit, name) in [(DAY, "d"), (HOUR, "h"), (MINUTE, "m"), (SECOND, "s"), (MS, "ms")] {
        if d >= unit && d.as_nanos() % unit.as_nanos() == 0 {
            return format!("{}{name}", d.as_nanos() / unit.as_nanos());
        }
    }
    humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_issues_values_are_refused_and_the_edges_taken() {
        assert!(parse_rate("1e-300/h").is_err());
        assert!(parse_rate("NaN/s").is_err() && parse_rate("inf/s").is_err() && parse_rate("-1/s").is_err());
        assert!(parse_rate("1/h").is_ok() && parse_rate("10000/s").is_ok() && parse_rate("10001/s").is_err());
        assert!(duration_in(AGE)("300000000y").is_err());
        assert!(duration_in(AGE)("3650d").is_ok());
        assert!(heartbeat("1ns").unwrap_err().contains("from 1s to 1d"));
        assert_eq!(heartbeat("0s"), Ok(Duration::ZERO));
        assert!(duration_in(PROBE_MAX)("0s").unwrap_err().contains("from 100ms to 1h"));
        assert!(count_in(9_223_372_036_854_775_807, GLOBAL_IN_FLIGHT).is_err());
        assert_eq!(count_in(4096, GLOBAL_IN_FLIGHT), Ok(4096));
        assert!(size_in(MAX_BYTES)("1KiB").unwrap_err().contains("64.0 KiB"));
    }
}
