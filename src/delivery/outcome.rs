//! What an attempt's result means (docs/receivers.md, "What the agent does with your answers"). Pure: the rule table as a function.

use std::time::{Duration, SystemTime};

/// `Retry-After` is honoured up to this long.
pub const RETRY_AFTER_MAX: Duration = Duration::from_secs(3600);

/// How a request failed before any HTTP answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportError {
    /// Refused, unreachable, reset before a response.
    Connect,
    Dns,
    ConnectTimeout,
    /// Connected, but no complete answer within the request timeout.
    Timeout,
    /// The certificate did not verify (or another TLS failure).
    Tls,
    /// Anything else (a broken response, a body error).
    Other,
    /// The OAuth2 token endpoint could not give a token: like an unreachable endpoint.
    Token,
}

impl TransportError {
    pub fn as_str(self) -> &'static str {
        match self {
            TransportError::Connect => "connect",
            TransportError::Dns => "dns",
            TransportError::ConnectTimeout => "connect_timeout",
            TransportError::Timeout => "timeout",
            TransportError::Tls => "tls",
            TransportError::Other => "other",
            TransportError::Token => "token",
        }
    }
}

/// The decision for one attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    /// The endpoint answered but could not take it now: spend one retry. `after`
    /// overrides the schedule (a clamped `Retry-After`).
    Retry {
        after: Option<Duration>,
        reason: String,
    },
    /// The endpoint could not be reached at all: mark it offline, keep the budget. With
    /// `tls`, it was reached but its certificate did not verify: a configuration fault,
    /// probed the same way (state `tls`) until an operator fixes it.
    Offline {
        reason: String,
        tls: bool,
    },
    /// Will never succeed as sent. `gone` pauses the subscription (410).
    Failed {
        reason: String,
        gone: bool,
    },
}

/// The rule table for an HTTP answer.
pub fn classify_status(status: u16, retry_after: Option<&str>, location: Option<&str>, now: SystemTime) -> Verdict {
    match status {
        200..=299 => Verdict::Delivered,
        408 | 425 | 429 | 500..=599 => Verdict::Retry {
            after: retry_after.and_then(|v| parse_retry_after(v, now)),
            reason: format!("HTTP {status}"),
        },
        300..=399 => Verdict::Failed {
            reason: format!(
                "HTTP {status} redirect not followed (Location: {}); point the subscription at the final URL",
                location.unwrap_or("none")
            ),
            gone: false,
        },
        410 => Verdict::Failed { reason: "HTTP 410 Gone: subscription paused until resumed".into(), gone: true },
        _ => Verdict::Failed { reason: format!("HTTP {status}"), gone: false },
    }
}

/// The rule table for a request that got no HTTP answer.
pub fn classify_error(error: TransportError, detail: &str) -> Verdict {
    let reason = format!("{}: {detail}", error.as_str());
    match error {
        TransportError::Connect | TransportError::Dns | TransportError::ConnectTimeout | TransportError::Token => {
            Verdict::Offline { reason, tls: false }
        }
        TransportError::Tls => Verdict::Offline { reason, tls: true },
        TransportError::Timeout | TransportError::Other => Verdict::Retry { after: None, reason },
    }
}

/// `Retry-After` as seconds or an HTTP date, clamped to [`RETRY_AFTER_MAX`].
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    let d = if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        // Seconds of any length: past u64 it is still a number of seconds, only larger.
        v.parse::<u64>().map(Duration::from_secs).unwrap_or(RETRY_AFTER_MAX)
    } else if let Some(secs) = v.parse::<f64>().ok().filter(|s| s.is_finite() && *s >= 0.0) {
        // Not the RFC's form (`1e9`, `2.5`), but plainly a number of seconds.
        Duration::try_from_secs_f64(secs).unwrap_or(RETRY_AFTER_MAX)
    } else {
        let at = httpdate::parse_http_date(v).ok()?;
        at.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(d.min(RETRY_AFTER_MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    #[test]
    fn two_hundreds_deliver() {
        assert_eq!(classify_status(200, None, None, now()), Verdict::Delivered);
        assert_eq!(classify_status(204, None, None, now()), Verdict::Delivered);
    }

    #[test]
    fn throttles_and_server_errors_retry() {
        for s in [408, 425, 429, 500, 502, 503, 599] {
            assert!(matches!(classify_status(s, None, None, now()), Verdict::Retry { after: None, .. }), "{s}");
        }
    }

    #[test]
    fn retry_after_seconds_and_dates_are_clamped() {
        let v = classify_status(429, Some("2"), None, now());
        assert!(matches!(v, Verdict::Retry { after: Some(d), .. } if d == Duration::from_secs(2)));
        let date = httpdate::fmt_http_date(now() + Duration::from_secs(90));
        assert_eq!(parse_retry_after(&date, now()), Some(Duration::from_secs(90)));
        assert_eq!(parse_retry_after("86400", now()), Some(RETRY_AFTER_MAX));
        assert_eq!(parse_retry_after("soon", now()), None);
        // Past u64, and numbers that are not the RFC's digits, hold the maximum too.
        assert_eq!(parse_retry_after(&"9".repeat(29), now()), Some(RETRY_AFTER_MAX));
        assert_eq!(parse_retry_after(&"1".repeat(7000), now()), Some(RETRY_AFTER_MAX));
        assert_eq!(parse_retry_after("1e9", now()), Some(RETRY_AFTER_MAX));
        assert_eq!(parse_retry_after("2.5", now()), Some(Duration::from_millis(2500)));
    }

    #[test]
    fn redirects_fail_naming_the_location() {
        match classify_status(301, None, Some("https://new.example/hook"), now()) {
            Verdict::Failed { reason, gone: false } => assert!(reason.contains("https://new.example/hook")),
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn gone_pauses_and_other_client_errors_fail() {
        assert!(matches!(classify_status(410, None, None, now()), Verdict::Failed { gone: true, .. }));
        for s in [400, 401, 403, 404, 413, 422] {
            assert!(matches!(classify_status(s, None, None, now()), Verdict::Failed { gone: false, .. }), "{s}");
        }
    }

    #[test]
    fn unreachable_is_offline_and_a_certificate_that_does_not_verify_is_tls() {
        for e in [TransportError::Connect, TransportError::Dns, TransportError::ConnectTimeout, TransportError::Token] {
            assert!(matches!(classify_error(e, "x"), Verdict::Offline { tls: false, .. }), "{e:?}");
        }
        assert!(matches!(classify_error(TransportError::Timeout, "x"), Verdict::Retry { .. }));
        assert!(matches!(classify_error(TransportError::Tls, "x"), Verdict::Offline { tls: true, .. }));
    }

    proptest::proptest! {
        /// Any `Retry-After` (seconds of any size, dates of any year, junk) is clamped
        /// or ignored, never a panic.
        #[test]
        fn any_retry_after_is_clamped(v in prop_oneof![
            any::<u64>().prop_map(|n| n.to_string()),
            proptest::string::string_regex("[0-9]{1,40}").unwrap(),
            proptest::string::string_regex("[A-Za-z0-9 ,:]{0,40}").unwrap(),
            any::<u32>().prop_map(|s| httpdate::fmt_http_date(std::time::UNIX_EPOCH + Duration::from_secs(u64::from(s) * 8))),
        ]) {
            if let Some(d) = parse_retry_after(&v, now()) {
                proptest::prop_assert!(d <= RETRY_AFTER_MAX);
            }
        }
    }
}
