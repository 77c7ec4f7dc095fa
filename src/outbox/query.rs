//! Read-only queries for the status socket: each request opens its own read-only
//! connection (WAL lets it read while the writer commits), so a slow `queue` listing never
//! holds up ingest.

use std::path::Path;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use serde::Serialize;

pub use super::AuditRow;
pub use super::disk::bytes_on_disk;
use super::{Stats, SubscriptionStats};

pub fn stats(c: &Connection) -> rusqlite::Result<Stats> {
    let mut subs: Vec<SubscriptionStats> = Vec::new();
    fn entry<'a>(subs: &'a mut Vec<SubscriptionStats>, name: &str) -> &'a mut SubscriptionStats {
        if let Some(i) = subs.iter().position(|s| s.name == name) {
            return &mut subs[i];
        }
        subs.push(SubscriptionStats { name: name.to_string(), ..Default::default() });
        subs.last_mut().expect("just pushed")
    }
    // One pass over the pending index, without visiting the events: the oldest pending
    // delivery is the one queued first (lowest seq), and only its event is read. With a
    // million queued this is about half the work of joining every row to its event.
    let mut stmt = c.prepare_cached(
        "SELECT subscription, COUNT(*), MIN(seq), MIN(next_attempt_ms) FROM deliveries
         WHERE state = 'pending' GROUP BY subscription",
    )?;
    let mut q = stmt.query([])?;
    let mut oldest = Vec::new();
    while let Some(r) = q.next()? {
        let name: String = r.get(0)?;
        let s = entry(&mut subs, &name);
        s.pending = r.get::<_, i64>(1)? as u64;
        s.next_attempt_ms = r.get(3)?;
        oldest.push((name, r.get::<_, i64>(2)?));
    }
    let mut created = c.prepare_cached(
        "SELECT e.created_ms FROM deliveries d JOIN events e ON e.seq = d.event_seq WHERE d.seq = ?1",
    )?;
    for (name, seq) in oldest {
        entry(&mut subs, &name).oldest_pending_ms = created.query_row([seq], |r| r.get(0)).optional()?;
    }
    let mut stmt = c.prepare_cached("SELECT subscription, outcome, n FROM counters")?;
    let mut q = stmt.query([])?;
    while let Some(r) = q.next()? {
        let name: String = r.get(0)?;
        let outcome: String = r.get(1)?;
        let n = r.get::<_, i64>(2)?.max(0) as u64;
        let s = entry(&mut subs, &name);
        match outcome.as_str() {
            "created" => s.created = n,
            "delivered" => s.delivered = n,
            "failed" => s.failed = n,
            "expired" => s.expired = n,
            "evicted" => s.evicted = n,
            "superseded" => s.superseded = n,
            _ => {}
        }
    }
    subs.sort_by(|a, b| a.name.cmp(&b.name));
    let count = |sql: &str| -> rusqlite::Result<u64> { c.query_row(sql, [], |r| r.get::<_, i64>(0)).map(|n| n as u64) };
    Ok(Stats {
        events: count("SELECT COUNT(*) FROM events")?,
        quarantined: count("SELECT COUNT(*) FROM quarantine")?,
        duplicates: 0,
        subscriptions: subs,
    })
}

#[derive(Clone, Debug, Serialize)]
pub struct QueueRow {
    pub delivery_id: String,
    pub event_id: String,
    pub subscription: String,
    pub event_type: String,
    pub device_id: String,
    pub state: String,
    /// Attempts the endpoint saw (answered, or timed out after connecting): what its
    /// `Attempt` header said last.
    pub attempts: u32,
    /// Offline probes: attempts that never reached it.
    pub probes: u32,
    pub created_ms: i64,
    /// When it goes next (wall clock once `queue` has explained it); none for a delivery
    /// that is not pending.
    pub next_attempt_ms: i64,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    /// The route's priority as stored (0 high, 1 normal, 2 low).
    #[serde(skip)]
    pub priority: i64,
    /// Why a pending delivery whose time has come does not go (the dispatcher's view,
    /// filled in by the status socket): paused, offline, a budget, a metered link.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waits: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Shown {
    pub event_id: String,
    pub event_type: String,
    pub device_id: String,
    pub created_ms: i64,
    pub topic: String,
    pub data: serde_json::Value,
    pub deliveries: Vec<QueueRow>,
    pub attempts: Vec<AuditRow>,
}

/// A batch, found by its id (the `webhook-id` a receiver saw): the attempts that carried
/// it, one row per delivery in it.
#[derive(Clone, Debug, Serialize)]
pub struct ShownBatch {
    pub batch_id: String,
    pub attempts: Vec<AuditRow>,
}

pub struct Reader {
    conn: Connection,
}

const QUEUE_COLUMNS: &str = "d.id, e.id, d.subscription, e.type, e.device_id, d.state, d.attempts, e.created_ms,
     d.next_attempt_ms, d.last_status, d.last_error, d.priority, d.budget_used";

fn queue_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<QueueRow> {
    let state: String = r.get(5)?;
    let all: u32 = r.get(6)?;
    // Charged answers (a retry spent), and the answer that ended it (2xx, 4xx, the last
    // retry): never an offline probe.
    let seen = r.get::<_, u32>(12)? + u32::from(matches!(state.as_str(), "delivered" | "failed"));
    Ok(QueueRow {
        delivery_id: r.get(0)?,
        event_id: r.get(1)?,
        subscription: r.get(2)?,
        event_type: r.get(3)?,
        device_id: r.get(4)?,
        state,
        attempts: seen,
        probes: all.saturating_sub(seen),
        created_ms: r.get(7)?,
        next_attempt_ms: r.get(8)?,
        last_status: r.get(9)?,
        last_error: r.get(10)?,
        priority: r.get(11)?,
        waits: None,
    })
}

fn audit_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AuditRow> {
    Ok(AuditRow {
        subscription: r.get(0)?,
        delivery_id: r.get(1)?,
        event_type: r.get(2)?,
        attempt: r.get(3)?,
        started_ms: r.get(4)?,
        duration_ms: r.get(5)?,
        status: r.get(6)?,
        error_kind: r.get(7)?,
        error: r.get(8)?,
        snippet: r.get(9)?,
        outcome: r.get(10)?,
        batch_id: r.get(11)?,
    })
}

const AUDIT_COLUMNS: &str = "subscription, delivery_id, event_type, attempt, started_ms, duration_ms, status, error_kind, error, snippet, outcome, batch_id";

impl Reader {
    pub fn open(path: &Path) -> rusqlite::Result<Reader> {
        let conn =
            Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
        conn.busy_timeout(std::time::Duration::from_secs(2))?;
        // A short-lived reader needs little cache; the writer's is the one that matters.
        conn.pragma_update(None, "cache_size", -256)?;
        Ok(Reader { conn })
    }

    pub fn stats(&self) -> rusqlite::Result<Stats> {
        stats(&self.conn)
    }

    pub(super) fn conn(&self) -> &Connection {
        &self.conn
    }

    /// Deliveries not yet delivered (pending and failed by default), oldest first.
    pub fn queue(
        &self,
        subscription: Option<&str>,
        state: Option<&str>,
        limit: u32,
    ) -> rusqlite::Result<Vec<QueueRow>> {
        let sql = format!(
            "SELECT {QUEUE_COLUMNS} FROM deliveries d JOIN events e ON e.seq = d.event_seq
             WHERE (?1 IS NULL OR d.subscription = ?1)
               AND (CASE WHEN ?2 IS NULL THEN d.state IN ('pending', 'failed') ELSE d.state = ?2 END)
             ORDER BY d.seq LIMIT ?3"
        );
        let mut stmt = self.conn.prepare(&sql)?;
        stmt.query_map(params![subscription, state, limit], queue_row)?.collect()
    }

    /// The audit log, newest first.
    pub fn log(
        &self,
        subscription: Option<&str>,
        outcome: Option<&str>,
        limit: u32,
    ) -> rusqlite::Result<Vec<AuditRow>> {
        let sql = format!(
            "SELECT {AUDIT_COLUMNS} FROM attempts
             WHERE (?1 IS NULL OR subscription = ?1) AND (?2 IS NULL OR outcome = ?2)
             ORDER BY seq DESC LIMIT ?3"
        );
        let mut stmt = self.conn.prepare(&sql)?;
        stmt.query_map(params![subscription, outcome, limit], audit_row)?.collect()
    }

    /// One event, found by its id or one of its delivery ids, with its deliveries and attempts.
    pub fn show(&self, id: &str) -> rusqlite::Result<Option<Shown>> {
        let found = self
            .conn
            .query_row(
                "SELECT e.seq, e.id, e.type, e.device_id, e.created_ms, e.topic, e.data FROM events e
                 WHERE e.id = ?1 OR e.seq = (SELECT event_seq FROM deliveries WHERE id = ?1)",
                [id],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, i64>(4)?,
                        r.get::<_, String>(5)?,
                        r.get::<_, String>(6)?,
                    ))
                },
            )
            .optional()?;
        let Some((seq, event_id, event_type, device_id, created_ms, topic, data)) = found else { return Ok(None) };
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {QUEUE_COLUMNS} FROM events e JOIN deliveries d
               ON d.seq BETWEEN e.first_delivery AND e.last_delivery AND d.event_seq = e.seq
             WHERE e.seq = ?1 ORDER BY d.seq"
        ))?;
        let deliveries: Vec<QueueRow> = stmt.query_map([seq], queue_row)?.collect::<Result<_, _>>()?;
        let mut attempts = Vec::new();
        let mut stmt =
            self.conn.prepare(&format!("SELECT {AUDIT_COLUMNS} FROM attempts WHERE delivery_id = ?1 ORDER BY seq"))?;
        for d in &deliveries {
            attempts.extend(stmt.query_map([&d.delivery_id], audit_row)?.collect::<Result<Vec<_>, _>>()?);
        }
        Ok(Some(Shown {
            event_id,
            event_type,
            device_id,
            created_ms,
            topic,
            data: serde_json::from_str(&data).unwrap_or(serde_json::Value::Null),
            deliveries,
            attempts,
        }))
    }

    /// A batch by its id, if the audit log still has an attempt of it. The log is bounded
    /// (`storage.audit_per_subscription`), so the scan is too; no index is kept for it.
    pub fn show_batch(&self, batch_id: &str) -> rusqlite::Result<Option<ShownBatch>> {
        let mut stmt =
            self.conn.prepare(&format!("SELECT {AUDIT_COLUMNS} FROM attempts WHERE batch_id = ?1 ORDER BY seq"))?;
        let attempts: Vec<AuditRow> = stmt.query_map([batch_id], audit_row)?.collect::<Result<_, _>>()?;
        Ok((!attempts.is_empty()).then(|| ShownBatch { batch_id: batch_id.to_string(), attempts }))
    }

    /// The newest attempt of a delivery, if any.
    pub fn last_attempt(&self, delivery_id: &str) -> rusqlite::Result<Option<AuditRow>> {
        self.conn
            .query_row(
                &format!("SELECT {AUDIT_COLUMNS} FROM attempts WHERE delivery_id = ?1 ORDER BY seq DESC LIMIT 1"),
                [delivery_id],
                audit_row,
            )
            .optional()
    }
}
