//! An attempt's result, in the transaction the writer holds: its audit row, the
//! delivery's next state, and its counter, only from `pending` (see the outbox's
//! invariant 3).

use rusqlite::{OptionalExtension, params};

use super::Store;
use crate::outbox::{AttemptRecord, AuditRow, FastDone, NextState, Terminal};

impl Store {
    /// Audits an attempt and moves its delivery on, only if it is still pending (a result
    /// for a row already ended is audited but changes and counts nothing).
    pub fn record(&mut self, record: &AttemptRecord) -> rusqlite::Result<()> {
        let r = &record.audit;
        self.audit(r, record.next.outcome())?;
        let c = &self.conn;
        // An attempt sent from memory before its event was stored names its delivery by id.
        let (row, key): (&str, rusqlite::types::Value) = match record.delivery_seq {
            Some(seq) => ("seq", seq.into()),
            None => ("id", r.delivery_id.clone().into()),
        };
        // An offline attempt never moves its delivery later: the endpoint's probe decides
        // when the queue is tried again, and it drains in event order.
        let changed = match &record.next {
            NextState::Retry { at_ms, charge } => c
                .prepare_cached(&format!(
                    "UPDATE deliveries SET attempts = ?2, budget_used = budget_used + ?3,
                        next_attempt_ms = CASE WHEN ?3 THEN ?4 ELSE MIN(next_attempt_ms, ?4) END,
                        updated_ms = ?5, last_status = ?6, last_error = ?7
                     WHERE {row} = ?1 AND state = 'pending'"
                ))?
                .execute(params![
                    key,
                    r.attempt,
                    *charge as i64,
                    at_ms,
                    r.started_ms + r.duration_ms,
                    r.status,
                    r.error
                ])?,
            NextState::Terminal(t) => c
                .prepare_cached(&format!(
                    "UPDATE deliveries SET state = ?2, attempts = ?3, updated_ms = ?4, last_status = ?5, last_error = ?6
                     WHERE {row} = ?1 AND state = 'pending'"
                ))?
                .execute(params![key, t.as_str(), r.attempt, r.started_ms + r.duration_ms, r.status, r.error])?,
        };
        if let NextState::Terminal(t) = &record.next {
            self.count(&r.subscription, t.as_str(), changed as i64)?;
            if changed == 0 && *t == Terminal::Delivered {
                self.revive_superseded(&r.delivery_id, row, key)?;
            }
        }
        Ok(())
    }

    /// A newer collapsing event supersedes what is pending on disk, which includes
    /// attempts already out. If one of those lands, the receiver has it: it is
    /// `delivered`, and its `superseded` audit row and count are withdrawn.
    fn revive_superseded(&mut self, delivery_id: &str, row: &str, key: rusqlite::types::Value) -> rusqlite::Result<()> {
        let c = &self.conn;
        let Some(subscription) = c
            .prepare_cached(&format!(
                "UPDATE deliveries SET state = 'delivered' WHERE {row} = ?1 AND state = 'superseded' RETURNING subscription"
            ))?
            .query_row(params![key], |r| r.get::<_, String>(0))
            .optional()?
        else {
            return Ok(());
        };
        c.prepare_cached(
            "DELETE FROM attempts WHERE subscription = ?1 AND delivery_id = ?2 AND outcome = 'superseded'",
        )?
        .execute(params![subscription, delivery_id])?;
        self.count(&subscription, "superseded", -1)?;
        self.count(&subscription, "delivered", 1)
    }

    pub(super) fn audit(&self, r: &AuditRow, outcome: &str) -> rusqlite::Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO attempts (subscription, delivery_id, event_type, attempt, started_ms, duration_ms, status, error_kind, error, snippet, outcome, batch_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )?
            .execute(params![
                r.subscription,
                r.delivery_id,
                r.event_type,
                r.attempt,
                r.started_ms,
                r.duration_ms,
                r.status,
                r.error_kind,
                r.error,
                r.snippet,
                outcome,
                r.batch_id
            ])?;
        Ok(())
    }

    /// Writes what the fast path delivered from memory: each delivery's audit row and
    /// counts (created and delivered at once), and the event's dedupe key, so that a
    /// redelivery after a restart is recognised. The caller marks the log applied
    /// ([`Store::set_fast_applied`]) once per transaction.
    pub fn record_fast(&mut self, done: &FastDone) -> rusqlite::Result<()> {
        for audit in &done.audits {
            self.audit(audit, "delivered")?;
            self.count(&audit.subscription, "created", 1)?;
            self.count(&audit.subscription, "delivered", 1)?;
        }
        if let Some(key) = done.key {
            self.conn.prepare_cached("INSERT INTO delivered_keys (key) VALUES (?1)")?.execute([key])?;
        }
        Ok(())
    }
}
