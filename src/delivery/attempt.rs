//! One attempt of one delivery: prepare → send → classify, and the consequence for the
//! delivery row. Runs as a task of its own; the dispatcher records what it reports.

use std::sync::Arc;
use std::time::SystemTime;

use super::fast::FastRef;
use super::http;
use super::outcome::{self, Verdict, classify_error, classify_status};
use super::schedule;
use crate::config::{Compression, Subscription};
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
    /// The other members of a batch, by row, with their records.
    pub rest: Vec<(i64, AttemptRecord)>,
    /// Request bytes sent (every request of the attempt), and what was paid for them at
    /// start (`budget::estimate`).
    pub sent_bytes: u64,
    pub estimate: u64,
    /// A fast-path delivery: its event is not stored (or was not when it started).
    pub fast: Option<FastRef>,
    /// Our clock against the endpoint's `Date`, in words, if they differ by seconds.
    pub skew: Option<Option<String>>,
}

impl Done {
    /// How long the attempt took, as its audit row says.
    pub fn took(&self) -> std::time::Duration {
        std::time::Duration::from_millis(u64::try_from(self.record.audit.duration_ms).unwrap_or(0))
    }
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
    /// A batch's members (the first is `due`); empty for one delivery per request.
    pub batch: Vec<Due>,
}

impl Attempt {
    pub async fn run(self) -> Done {
        if !self.batch.is_empty() {
            return self.run_batch().await;
        }
        let started_ms = now_ms();
        let sent = self.send(Request::One(&self.due)).await;
        let verdict = self.verdict(&sent);
        self.metrics.observe(&self.sub.name, result_word(&verdict), sent.duration, sent.last_request_bytes());
        // Retry times are on the schedule clock, which wall-clock steps do not move.
        let next = settle(&self.sub, &self.due, &verdict, sent.status, crate::clock::sched_ms());
        let attempt = self.due.attempts + 1;
        let audit = self.audit(&self.due, started_ms, &sent, &verdict, None);
        tracing::debug!(subscription = %self.sub.name, delivery_id = %self.due.delivery_id, attempt,
            status = ?sent.status, ?next, "Attempt finished.");
        if let NextState::Terminal(Terminal::Failed) = next {
            tracing::warn!(subscription = %self.sub.name, delivery_id = %self.due.delivery_id, event_type = %printable(&self.due.event_type),
                attempt, error = audit.error.as_deref().unwrap_or(""), "Delivery failed for good.");
        }
        // A fast-path delivery has no row yet; if it gets one, it is found by its id.
        let row = self.fast.is_none().then_some(self.due.seq);
        let record = AttemptRecord::new(row, audit, next);
        Done {
            lane: self.lane,
            seq: self.due.seq,
            status: sent.status,
            probe: self.probe,
            record,
            rest: Vec::new(),
            fast: self.fast,
            skew: skew(&sent),
            verdict,
            sent_bytes: sent.sent_bytes,
            estimate: super::budget::estimate(std::slice::from_ref(&self.due)),
        }
    }

    /// A batch: one request for all its members, split in halves on a 413 down to single
    /// deliveries (each half a batch of its own, with its own id). Every member's result
    /// is that of the last request it went in; the members of one request share one next
    /// state, so a retried batch stays together (see `batch`).
    async fn run_batch(&self) -> Done {
        let started_ms = now_ms();
        let mut todo: Vec<&[Due]> = vec![&self.batch];
        let mut records: Vec<(i64, AttemptRecord)> = Vec::with_capacity(self.batch.len());
        let mut lane_verdict: Option<(Verdict, Option<u16>, Option<Option<String>>)> = None;
        let mut sent_bytes = 0;
        while let Some(members) = todo.pop() {
            let id = super::batch::batch_id(members);
            let sent = self.send(Request::Batch(members, &id)).await;
            sent_bytes += sent.sent_bytes;
            if sent.status == Some(413) && members.len() > 1 {
                self.metrics.observe(&self.sub.name, "split", sent.duration, sent.last_request_bytes());
                tracing::info!(subscription = %self.sub.name, batch_id = %id, events = members.len(),
                    "The endpoint refused the batch as too large (413); sending it in halves.");
                let (a, b) = members.split_at(members.len() / 2);
                todo.push(b);
                todo.push(a);
                continue;
            }
            let verdict = self.verdict(&sent);
            self.metrics.observe(&self.sub.name, result_word(&verdict), sent.duration, sent.last_request_bytes());
            // The member that has spent the most retries decides for all.
            let most = members.iter().max_by_key(|d| d.budget_used).unwrap_or(&members[0]);
            let now_ms = crate::clock::sched_ms();
            let next = next_state(&self.sub, most, &verdict, now_ms);
            tracing::debug!(subscription = %self.sub.name, batch_id = %id, events = members.len(),
                status = ?sent.status, ?next, "Batch attempt finished.");
            if let NextState::Terminal(Terminal::Failed) = next {
                let audit = self.audit(&members[0], started_ms, &sent, &verdict, Some(&id));
                tracing::warn!(subscription = %self.sub.name, batch_id = %id, events = members.len(),
                    error = audit.error.as_deref().unwrap_or(""), "Batch failed for good; each delivery in it is failed.");
            }
            for d in members {
                let audit = self.audit(d, started_ms, &sent, &verdict, Some(&id));
                let own = settle_member(&next, &verdict, sent.status, d, now_ms);
                records.push((d.seq, AttemptRecord::new(Some(d.seq), audit, own)));
            }
            // The endpoint learns from the first request that did not deliver, if any.
            let first_bad = !matches!(verdict, Verdict::Delivered)
                && lane_verdict.as_ref().is_none_or(|(v, ..)| matches!(v, Verdict::Delivered));
            if lane_verdict.is_none() || first_bad {
                lane_verdict = Some((verdict, sent.status, skew(&sent)));
            }
        }
        let (verdict, status, skew) = lane_verdict.unwrap_or((Verdict::Delivered, None, None));
        let mut records = records.into_iter();
        let (seq, record) = records.next().expect("a batch has a member");
        Done {
            lane: self.lane,
            seq,
            verdict,
            status,
            probe: self.probe,
            record,
            rest: records.collect(),
            fast: None,
            skew,
            sent_bytes,
            estimate: super::budget::estimate(&self.batch),
        }
    }

    /// The rule table's verdict on what one request got back.
    fn verdict(&self, sent: &http::Sent) -> Verdict {
        match (&sent.status, &sent.error) {
            (Some(status), _) => {
                let verdict =
                    classify_status(*status, sent.retry_after.as_deref(), sent.location.as_deref(), SystemTime::now());
                refused_for_our_clock(verdict, *status, sent.snippet.as_deref(), crate::clock::quality())
            }
            // A TLS failure is said at ERROR once per episode, by the lane (state `tls`).
            (None, Some((kind, text))) => classify_error(*kind, text),
            (None, None) => classify_error(outcome::TransportError::Other, "no response"),
        }
    }

    /// The audit row of `due`'s part in a request.
    fn audit(&self, due: &Due, started_ms: i64, sent: &http::Sent, verdict: &Verdict, batch: Option<&str>) -> AuditRow {
        let (error_kind, error) = match (&sent.error, verdict) {
            (Some((kind, text)), _) => (Some(kind.as_str().to_string()), Some(text.clone())),
            (None, Verdict::Failed { reason, .. } | Verdict::Retry { reason, .. }) => {
                (Some("http".into()), Some(reason.clone()))
            }
            _ => (None, None),
        };
        AuditRow {
            subscription: self.sub.name.clone(),
            delivery_id: due.delivery_id.clone(),
            event_type: due.event_type.clone(),
            attempt: due.attempts + 1,
            started_ms,
            duration_ms: sent.duration.as_millis() as i64,
            status: sent.status,
            error_kind,
            error,
            snippet: sent.snippet.clone(),
            outcome: String::new(),
            batch_id: batch.map(str::to_string),
        }
    }
}

/// The word `fleethook_attempts_total` counts a verdict under.
fn result_word(verdict: &Verdict) -> &'static str {
    match verdict {
        Verdict::Delivered => "delivered",
        Verdict::Retry { .. } => "retry",
        Verdict::Offline { tls: false, .. } => "offline",
        Verdict::Offline { tls: true, .. } => "tls",
        Verdict::Failed { .. } => "failed",
    }
}

/// Our clock against the endpoint's `Date`, in words (HTTP dates have whole seconds:
/// within a few, the clocks agree).
fn skew(sent: &http::Sent) -> Option<Option<String>> {
    sent.date
        .as_deref()
        .and_then(|d| httpdate::parse_http_date(d).ok())
        .map(|theirs| crate::clock::skew_words(now_ms(), crate::clock::unix_s(theirs) * 1000))
}

/// What one request carries: one delivery, or a batch under its id.
#[derive(Clone, Copy)]
enum Request<'a> {
    One(&'a Due),
    Batch(&'a [Due], &'a str),
}

impl Attempt {
    /// Prepares and sends; with OAuth2, with a token, and once more with a new token if
    /// the endpoint refuses the first with a 401; compressed, and once more uncompressed
    /// (from then on) if the endpoint refuses that with a 415.
    async fn send(&self, what: Request<'_>) -> http::Sent {
        // Offline: knock first. A refused connection costs the endpoint nothing more,
        // and no request is made until it answers.
        if self.probe
            && let Some((host, port)) = &self.client.probe_at
        {
            let started = std::time::Instant::now();
            if let Err(error) = http::connect_probe(host, *port, self.sub.connect_timeout).await {
                return http::Sent { error: Some(error), duration: started.elapsed(), ..Default::default() };
            }
        }
        let mut token = None;
        if let Some(tokens) = &self.client.token {
            match tokens.token().await {
                Ok(t) => token = Some(t),
                Err(e) => return token_failed(&self.sub, e),
            }
        }
        let (mut sent, compressed) = self.send_once(what, token.as_deref()).await;
        if sent.status == Some(415) && compressed {
            // Concurrent requests may all get the 415; one of them says so.
            if self.client.compress.swap(false, std::sync::atomic::Ordering::Relaxed) {
                tracing::warn!(subscription = %self.sub.name, compression = self.sub.compression.map_or("", Compression::as_str),
                    "The endpoint refused a compressed body (415); this subscription sends uncompressed until a restart or reload.");
            }
            self.metrics.observe(&self.sub.name, "resent", sent.duration, sent.sent_bytes);
            sent = sent.then(self.send_once(what, token.as_deref()).await.0);
        }
        if let (Some(401), Some(tokens), Some(stale)) = (sent.status, &self.client.token, &token) {
            tracing::info!(subscription = %self.sub.name, "The endpoint refused the OAuth2 token (401); fetching a new one.");
            self.metrics.observe(&self.sub.name, "resent", sent.duration, sent.last_request_bytes());
            match tokens.refresh(stale).await {
                Ok(fresh) => sent = sent.then(self.send_once(what, Some(&fresh)).await.0),
                Err(e) => return token_failed(&self.sub, e),
            }
        }
        sent
    }

    /// One request; says whether its body was compressed.
    async fn send_once(&self, what: Request<'_>, token: Option<&str>) -> (http::Sent, bool) {
        let compression =
            self.sub.compression.filter(|_| self.client.compress.load(std::sync::atomic::Ordering::Relaxed));
        let now = SystemTime::now();
        let prepared = match what {
            Request::One(due) => http::prepare(&self.sub, &self.client.names, due, now, token, compression),
            Request::Batch(members, id) => {
                http::prepare_batch(&self.sub, &self.client.names, members, id, now, token, compression)
            }
        };
        (http::send(&self.client.http, &self.sub, prepared).await, compression.is_some())
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

/// What an attempt's answer makes of its delivery row: the rule table's consequence,
/// with a held delivery keeping its place (see [`keep_place_when_held`]).
pub fn settle(sub: &Subscription, due: &Due, verdict: &Verdict, status: Option<u16>, now_ms: i64) -> NextState {
    keep_place_when_held(next_state(sub, due, verdict, now_ms), verdict, status, due)
}

/// One member of a batch: the batch's consequence (its member with the most retries
/// decides), except that a place kept (an unreachable endpoint, a `Retry-After` hold) is
/// each member's own. Given the earliest member's, a member that became due later would
/// go ahead of rows that waited longer (the lane model found it).
pub fn settle_member(
    batch: &NextState,
    verdict: &Verdict,
    status: Option<u16>,
    member: &Due,
    now_ms: i64,
) -> NextState {
    match (batch, verdict) {
        (NextState::Retry { charge, .. }, Verdict::Offline { .. }) => {
            NextState::Retry { at_ms: member.next_attempt_ms.min(now_ms), charge: *charge }
        }
        _ => keep_place_when_held(batch.clone(), verdict, status, member),
    }
}

/// A 429 or 503 with `Retry-After` holds the whole subscription (see `endpoint`), so the
/// delivery need not be scheduled past the hold: it keeps the time it first became due.
/// When the hold ends, what was held goes first, in event order, before anything that
/// arrived meanwhile, however long a rate limit lasts. (After a restart the hold is gone
/// and the held deliveries are due at once: one request finds the limit again.)
fn keep_place_when_held(next: NextState, verdict: &Verdict, status: Option<u16>, due: &Due) -> NextState {
    match (next, verdict, status) {
        (NextState::Retry { at_ms, charge }, Verdict::Retry { after: Some(_), .. }, Some(429 | 503)) => {
            NextState::Retry { at_ms: at_ms.min(due.next_attempt_ms), charge }
        }
        (next, ..) => next,
    }
}

/// The rule table's consequence for the delivery row.
pub fn next_state(sub: &Subscription, due: &Due, verdict: &Verdict, now_ms: i64) -> NextState {
    match verdict {
        Verdict::Delivered => NextState::Terminal(Terminal::Delivered),
        Verdict::Failed { .. } => NextState::Terminal(Terminal::Failed),
        // Unreachable: stays due, in its place in the queue (offline is not failure); the
        // endpoint's probe decides when it is tried again.
        Verdict::Offline { .. } => NextState::Retry { at_ms: due.next_attempt_ms.min(now_ms), charge: false },
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
