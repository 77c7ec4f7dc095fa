//! The rows as delivery sees them: what is due, and what an attempt writes back (its
//! audit row and the delivery's next state).

use serde::Serialize;

/// A delivery that is due, with what is needed to send it.
#[derive(Clone, Debug, Default)]
pub struct Due {
    pub seq: i64,
    pub delivery_id: String,
    pub subscription: String,
    /// Attempts made so far, all kinds (the next one is `attempts + 1`).
    pub attempts: u32,
    /// Retries spent: only answers from the endpoint count.
    pub budget_used: u32,
    pub event_id: String,
    pub event_type: String,
    pub device_id: String,
    pub created_ms: i64,
    pub data: String,
    /// Where it was taken on the boot's clock, if the wall clock was not good then.
    pub clock: Option<crate::clock::Taken>,
    /// `Priority as i64`: 0 high, 1 normal, 2 low.
    pub priority: i64,
    /// When it became due, on the schedule clock: the deliveries of a batch that is
    /// retried share it, which keeps them together (`delivery::batch`).
    pub next_attempt_ms: i64,
}

#[derive(Clone, Debug, Default)]
pub struct DueBatch {
    pub rows: Vec<Due>,
    /// When the next not-yet-due delivery of the subscription becomes due.
    pub next_due_ms: Option<i64>,
    /// The commit watermark when this was read: every message ingested up to it is in
    /// the answer's view.
    pub committed: u64,
    /// The read stopped at its byte budget, not at the end of what is due: fewer rows
    /// than asked do not mean the queue is empty.
    pub more: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Terminal {
    Delivered,
    Failed,
    Expired,
    Evicted,
    Superseded,
}

impl Terminal {
    pub fn as_str(self) -> &'static str {
        match self {
            Terminal::Delivered => "delivered",
            Terminal::Failed => "failed",
            Terminal::Expired => "expired",
            Terminal::Evicted => "evicted",
            Terminal::Superseded => "superseded",
        }
    }
}

/// Where a delivery goes after an attempt.
#[derive(Clone, Debug, PartialEq)]
pub enum NextState {
    /// Back to pending; `charge` spends one retry from the budget.
    Retry {
        at_ms: i64,
        charge: bool,
    },
    Terminal(Terminal),
}

impl NextState {
    /// The `outcome` its audit row names.
    pub fn outcome(&self) -> &'static str {
        match self {
            NextState::Terminal(t) => t.as_str(),
            NextState::Retry { charge: true, .. } => "retry",
            NextState::Retry { charge: false, .. } => "offline",
        }
    }
}

/// One attempt as the audit log keeps it: written by the dispatcher, read by `log`/`show`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AuditRow {
    pub subscription: String,
    pub delivery_id: String,
    pub event_type: String,
    pub attempt: u32,
    pub started_ms: i64,
    pub duration_ms: i64,
    pub status: Option<u16>,
    pub error_kind: Option<String>,
    pub error: Option<String>,
    pub snippet: Option<String>,
    pub outcome: String,
    /// The batch the attempt went in (batched subscriptions only).
    pub batch_id: Option<String>,
}

/// One finished attempt: its audit row and where its delivery goes next.
#[derive(Clone, Debug)]
pub struct AttemptRecord {
    /// The delivery's row; None for an attempt sent from memory before its event was
    /// stored (the row is then found by `audit.delivery_id`).
    pub delivery_seq: Option<i64>,
    pub audit: AuditRow,
    pub next: NextState,
}

impl AttemptRecord {
    /// The audit row's `outcome` is taken from `next`.
    pub fn new(delivery_seq: Option<i64>, mut audit: AuditRow, next: NextState) -> AttemptRecord {
        audit.outcome = next.outcome().to_string();
        AttemptRecord { delivery_seq, audit, next }
    }
}

/// An event the fast path delivered from memory, every delivery `delivered`: what the
/// outbox keeps of it (see `fastlog`). `l` numbers it in the fast log.
#[derive(Clone, Debug, Default)]
pub struct FastDone {
    pub l: u64,
    /// The event's dedupe key, if it has one.
    pub key: Option<i64>,
    /// One per delivery, each with outcome `delivered`.
    pub audits: Vec<AuditRow>,
    /// Its entry in the held journal, which this retires.
    pub j: Option<u64>,
}
