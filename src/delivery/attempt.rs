//! One attempt of one delivery: prepare → send → classify, and the consequence for the
//! delivery row. Runs as a task of its own; the dispatcher records what it reports.

use std::sync::Arc;
use std::time::SystemTime;

use super::fast::FastRef;
use super::http;
use super::outcome::{self, Verdict, classify_error, classify_status, needs_operator};
use super::schedule;
use crate::config::Subscription;
use crate::event::now_ms;
use crate::outbox::{AttemptRecord, AuditRow, Due, NextState, Terminal};
use crate::text::printable;

/// One finished attempt, reported back to the loop before its record is committed.
pub struct Done {
    pub lane: usize,
    pub seq: i64,
    pub verdict: Verdict,
    pub status: Option<u16>,
    pub probe: bool,
    /// What the outbox must record; the dispatcher commits a wave of these at once.
    pub record: AttemptRecord,
    /// A fast-path delivery: its event is not stored (or was not when it started).
    pub fast: Option<FastRef>,
    /// Our clock against the endpoint's `Date`, in words, if they differ by seconds.
    pub skew: Option<Option<String>>,
}

/// One attempt of one delivery, run as its own task.
pub struct Attempt {
    pub lane: usize,
    pub sub: Arc<Subscription>,
    pub client: http::Client,
    pub due: Due,
    pub probe: bool,
    pub fast: Option<FastRef>,
    pub metrics: crate::live::AttemptMetrics,
}

impl Attempt {
    pub async fn run(self) -> Done {
        let started_ms = now_ms();
        let (attempt, sent) = self.send().await;
        let verdict = match (&sent.status, &sent.error) {
            (Some(status), _) => {
                let verdict =
                    classify_status(*status, sent.retry_after.as_deref(), sent.location.as_deref(), SystemTime::now());
                refused_for_our_clock(verdict, *status, sent.snippet.as_deref(), crate::clock::quality())
            }
            (None, Some((kind, text))) => {
                if needs_operator(*kind) {
                    tracing::error!(subscription = %self.sub.name, url = %self.sub.url, error = %text,
                        "TLS failure talking to the endpoint; retrying, but an operator must fix the certificate or ca_file.");
                }
                classify_error(*kind, text)
            }
            (None, None) => classify_error(outcome::TransportError::Other, "no response"),
        };
        let result = match &verdict {
            Verdict::Delivered => "delivered",
            Verdict::Retry { .. } => "retry",
            Verdict::Offline { .. } => "offline",
            Verdict::Failed { .. } => "failed",
        };
        self.metrics.observe(&self.sub.name, result, sent.duration, sent.sent_bytes);
        // Retry times are on the schedule clock, which wall-clock steps do not move.
        let next = next_state(&self.sub, &self.due, &verdict, crate::clock::sched_ms());
        let (error_kind, error) = match (&sent.error, &verdict) {
            (Some((kind, text)), _) => (Some(kind.as_str().to_string()), Some(text.clone())),
            (None, Verdict::Failed { reason, .. } | Verdict::Retry { reason, .. }) => {
                (Some("http".into()), Some(reason.clone()))
            }
            _ => (None, None),
        };
        tracing::debug!(subscription = %self.sub.name, delivery_id = %self.due.delivery_id, attempt,
            status = ?sent.status, ?next, "Attempt finished.");
        if let NextState::Terminal(Terminal::Failed) = next {
            tracing::warn!(subscription = %self.sub.name, delivery_id = %self.due.delivery_id, event_type = %printable(&self.due.event_type),
                attempt, error = error.as_deref().unwrap_or(""), "Delivery failed for good.");
        }
        let audit = AuditRow {
            subscription: self.sub.name.clone(),
            delivery_id: self.due.delivery_id.clone(),
            event_type: self.due.event_type.clone(),
            attempt,
            started_ms,
            duration_ms: sent.duration.as_millis() as i64,
            status: sent.status,
            error_kind,
            error,
            snippet: sent.snippet,
            outcome: String::new(),
        };
        // A fast-path delivery has no row yet; if it gets one, it is found by its id.
        let row = self.fast.is_none().then_some(self.due.seq);
        let record = AttemptRecord::new(row, audit, next);
        // HTTP dates have whole seconds: within a few, the clocks agree.
        let skew = sent
            .date
            .as_deref()
            .and_then(|d| httpdate::parse_http_date(d).ok())
            .map(|theirs| crate::clock::skew_words(now_ms(), crate::clock::unix_s(theirs) * 1000));
        Done {
            lane: self.lane,
            seq: self.due.seq,
            verdict,
            status: sent.status,
            probe: self.probe,
            record,
            fast: self.fast,
            skew,
        }
    }
}

impl Attempt {
    /// Prepares and sends; with OAuth2, with a token, and once more with a new token if
    /// the endpoint refuses the first with a 401; compressed, and once more uncompressed
    /// (from then on) if the endpoint refuses that with a 415.
    async fn send(&self) -> (u32, http::Sent) {
        let mut token = None;
        if let Some(tokens) = &self.client.token {
            match tokens.token().await {
                Ok(t) => token = Some(t),
                Err(e) => return (self.due.attempts + 1, token_failed(&self.sub, e)),
            }
        }
        let (attempt, mut sent, compressed) = self.send_once(token.as_deref()).await;
        if sent.status == Some(415) && compressed {
            self.client.compress.store(false, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(subscription = %self.sub.name, compression = ?self.sub.compression,
                "The endpoint refused a compressed body (415); this subscription sends uncompressed until a restart or reload.");
            sent = sent.then(self.send_once(token.as_deref()).await.1);
        }
        if let (Some(401), Some(tokens), Some(stale)) = (sent.status, &self.client.token, &token) {
            tracing::info!(subscription = %self.sub.name, "The endpoint refused the OAuth2 token (401); fetching a new one.");
            match tokens.refresh(stale).await {
                Ok(fresh) => sent = sent.then(self.send_once(Some(&fresh)).await.1),
                Err(e) => return (attempt, token_failed(&self.sub, e)),
            }
        }
        (attempt, sent)
    }

    /// One request; says whether its body was compressed.
    async fn send_once(&self, token: Option<&str>) -> (u32, http::Sent, bool) {
        let compression =
            self.sub.compression.filter(|_| self.client.compress.load(std::sync::atomic::Ordering::Relaxed));
        let prepared = http::prepare(&self.sub, &self.due, SystemTime::now(), token, compression);
        (prepared.attempt, http::send(&self.client.http, &self.sub, prepared).await, compression.is_some())
    }
}

/// No token, so no request: the attempt ends as if the endpoint were unreachable.
fn token_failed(sub: &Subscription, (kind, text): (outcome::TransportError, String)) -> http::Sent {
    tracing::warn!(subscription = %sub.name, error = %text,
        "Cannot get an OAuth2 token; the endpoint is treated as offline (no retry budget spent) and probed with backoff.");
    http::Sent { error: Some((kind, text)), ..Default::default() }
}

/// A 400 or 401 whose body blames the timestamp, while our clock is not known good, is
/// our clock's fault, not the event's: retried, not failed.
pub fn refused_for_our_clock(
    verdict: Verdict,
    status: u16,
    body: Option<&str>,
    clock: crate::clock::Quality,
) -> Verdict {
    let blames_time = body.is_some_and(|b| {
        let b = b.to_ascii_lowercase();
        b.contains("timestamp") || b.contains("tolerance") || b.contains("too old") || b.contains("clock")
    });
    match verdict {
        Verdict::Failed { reason, gone: false }
            if matches!(status, 400 | 401) && blames_time && clock != crate::clock::Quality::Synced =>
        {
            Verdict::Retry {
                after: None,
                reason: format!("{reason} (the receiver refused our timestamp; our clock is {})", clock.as_str()),
            }
        }
        other => other,
    }
}

/// The rule table's consequence for the delivery row.
pub fn next_state(sub: &Subscription, due: &Due, verdict: &Verdict, now_ms: i64) -> NextState {
    match verdict {
        Verdict::Delivered => NextState::Terminal(Terminal::Delivered),
        Verdict::Failed { .. } => NextState::Terminal(Terminal::Failed),
        // Unreachable: stays due; the endpoint's probe decides when it is tried again.
        Verdict::Offline { .. } => NextState::Retry { at_ms: now_ms, charge: false },
        Verdict::Retry { after, .. } => {
            let used = due.budget_used + 1;
            match schedule::retry_delay(&sub.retry, used, fastrand::f64()) {
                None => NextState::Terminal(Terminal::Failed),
                Some(delay) => {
                    let delay = after.unwrap_or(delay);
                    NextState::Retry { at_ms: now_ms + delay.as_millis() as i64, charge: true }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Quality;

    #[test]
    fn a_timestamp_refusal_while_our_clock_is_bad_is_retried() {
        let failed = || Verdict::Failed { reason: "HTTP 401".into(), gone: false };
        let body = Some("message timestamp too old");
        assert!(matches!(refused_for_our_clock(failed(), 401, body, Quality::Unsynced), Verdict::Retry { .. }));
        assert!(matches!(refused_for_our_clock(failed(), 401, body, Quality::Synced), Verdict::Failed { .. }));
        assert!(matches!(
            refused_for_our_clock(failed(), 401, Some("bad key"), Quality::Wrong),
            Verdict::Failed { .. }
        ));
        assert!(matches!(refused_for_our_clock(failed(), 403, body, Quality::Wrong), Verdict::Failed { .. }));
    }
}
