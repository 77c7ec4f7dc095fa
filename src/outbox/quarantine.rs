//! The quarantine: MQTT messages that could not become events (not JSON, too large, a
//! template that cannot render), kept so a field tech can see why and, once a route is
//! fixed, take them in after all.
//!
//! A row's life:
//!
//! ```text
//! ingest ──> quarantine row (reason, topic, size, payload: whole when within
//!            │                mqtt.max_payload, else its first QUARANTINE_KEEP bytes)
//!            ├─> released: routed again with today's config; the event is stored and
//!            │   the row deleted in one transaction
//!            ├─> purged by a field tech
//!            └─> trimmed when the outbox needs room: the newest QUARANTINE_ROWS rows
//!                within 1/16 of storage.max_bytes stay
//! ```
//!
//! The message was acked when its row was committed, so the broker no longer has it:
//! this table is the only copy.

use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use super::query::Reader;
use super::store::{Store, Stored};
use super::{Inbound, NewEvent};

/// Rows kept when the outbox trims to make room.
pub const QUARANTINE_ROWS: i64 = 1000;

/// One quarantined message, as `quarantine` lists it.
#[derive(Clone, Debug, Serialize)]
pub struct QuarantineRow {
    pub seq: i64,
    /// When it arrived, on the schedule clock (see `clock`).
    pub received_ms: i64,
    pub topic: String,
    pub reason: String,
    /// The payload's size as it arrived.
    pub size: u64,
    /// How many of its bytes are kept: less than `size` only for an oversize payload.
    pub kept: u64,
}

/// One quarantined message with its payload, as `quarantine show` and `release` need it.
#[derive(Clone, Debug)]
pub struct QuarantinedMessage {
    pub row: QuarantineRow,
    pub payload: Vec<u8>,
}

impl QuarantinedMessage {
    /// Whether the whole payload is kept, so that it can be taken in again.
    pub fn complete(&self) -> bool {
        self.row.kept == self.row.size
    }
}

const COLUMNS: &str = "seq, received_ms, topic, reason, size, length(payload)";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<QuarantineRow> {
    Ok(QuarantineRow {
        seq: r.get(0)?,
        received_ms: r.get(1)?,
        topic: r.get(2)?,
        reason: r.get(3)?,
        size: r.get::<_, i64>(4)?.max(0) as u64,
        kept: r.get::<_, i64>(5)?.max(0) as u64,
    })
}

impl Reader {
    /// Quarantined messages, newest first.
    pub fn quarantine(&self, limit: u32) -> rusqlite::Result<Vec<QuarantineRow>> {
        let sql = format!("SELECT {COLUMNS} FROM quarantine ORDER BY seq DESC LIMIT ?1");
        let mut stmt = self.conn().prepare(&sql)?;
        stmt.query_map([limit], row)?.collect()
    }

    /// One quarantined message with its payload.
    pub fn quarantined(&self, seq: i64) -> rusqlite::Result<Option<QuarantinedMessage>> {
        let sql = format!("SELECT {COLUMNS}, payload FROM quarantine WHERE seq = ?1");
        self.conn().query_row(&sql, [seq], |r| Ok(QuarantinedMessage { row: row(r)?, payload: r.get(6)? })).optional()
    }

    /// Every quarantined message's number, oldest first.
    pub fn quarantine_seqs(&self) -> rusqlite::Result<Vec<i64>> {
        let mut stmt = self.conn().prepare("SELECT seq FROM quarantine ORDER BY seq")?;
        stmt.query_map([], |r| r.get(0))?.collect()
    }
}

impl Store {
    /// Takes in a quarantined message as `event` (routed again by the caller) and deletes
    /// its row, in the caller's transaction. `None` if the row is gone (purged, trimmed,
    /// or released by another request meanwhile): nothing is stored then.
    pub fn release(&mut self, seq: i64, event: &NewEvent, now_ms: i64) -> rusqlite::Result<Option<Stored>> {
        if self.purge_quarantine(Some(&[seq]))? == 0 {
            return Ok(None);
        }
        self.insert(&Inbound::Event(event.clone()), now_ms).map(Some)
    }

    /// Gives a quarantined message the reason it fails for now (a release that failed
    /// again, after a route change). Returns 1, or 0 if the row is gone.
    pub fn requarantine(&self, seq: i64, reason: &str) -> rusqlite::Result<u64> {
        let mut update = self.conn().prepare_cached("UPDATE quarantine SET reason = ?2 WHERE seq = ?1")?;
        Ok(update.execute(rusqlite::params![seq, reason])? as u64)
    }

    /// Deletes the named quarantined messages, or every one with `None`. Returns how many.
    pub fn purge_quarantine(&self, seqs: Option<&[i64]>) -> rusqlite::Result<u64> {
        let c = self.conn();
        let Some(seqs) = seqs else {
            return Ok(c.execute("DELETE FROM quarantine", [])? as u64);
        };
        let mut delete = c.prepare_cached("DELETE FROM quarantine WHERE seq = ?1")?;
        let mut n = 0;
        for seq in seqs {
            n += delete.execute([seq])? as u64;
        }
        Ok(n)
    }

    /// Keeps the newest quarantined messages: at most `keep_rows` of them, whose payloads
    /// add up to at most `keep_bytes`.
    pub fn trim_quarantine(&self, keep_rows: i64, keep_bytes: u64) -> rusqlite::Result<u64> {
        let n = self
            .conn()
            .prepare_cached(
                "DELETE FROM quarantine WHERE seq IN (
                    SELECT seq FROM (
                        SELECT seq,
                               ROW_NUMBER() OVER newest AS n,
                               SUM(length(payload)) OVER newest AS total
                        FROM quarantine
                        WINDOW newest AS (ORDER BY seq DESC ROWS UNBOUNDED PRECEDING))
                    WHERE n > ?1 OR total > ?2)",
            )?
            .execute(params![keep_rows, keep_bytes as i64])?;
        Ok(n as u64)
    }
}
