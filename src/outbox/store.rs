//! The SQL: synchronous operations on the read-write connection, run by the writer thread
//! inside the transaction it holds open for a batch. Tests drive a `Store` directly.

use rusqlite::{Connection, OptionalExtension, params};

use super::dedupe::SharedKeys;
use super::{Due, DueBatch, Inbound, NewEvent, Quarantined, Stats};
use crate::event::Priority;
use expiry::EXPIRE_SWEEP_MS;
#[cfg(test)]
use expiry::EXPIRE_WINDOW;

mod expiry;
mod results;

/// How many dedupe keys are remembered at most: those of the newest events.
const DEDUPE_KEYS: usize = 100_000;

/// What storing one inbound message did.
#[derive(Debug, PartialEq, Eq)]
pub enum Stored {
    Event { delivery_ids: Vec<String> },
    Duplicate,
    Quarantined,
    Nothing,
}

pub struct Store {
    conn: Connection,
    duplicates: u64,
    /// When each subscription was last swept for expired deliveries.
    expired_at: std::collections::HashMap<String, i64>,
    /// Deliveries expired since the writer last asked (for its loss log).
    expired_count: u64,
    expire_sweep_ms: i64,
    /// The dedupe keys of the newest events (see `dedupe`), shared with the fast path.
    keys: SharedKeys,
    /// Counter increments of the open transaction, per (subscription, outcome): written
    /// once at commit rather than with an upsert per event or attempt.
    counts: Vec<(String, &'static str, i64)>,
    /// Where each subscription's next expiry sweep starts (a delivery seq).
    expire_from: std::collections::HashMap<String, i64>,
    /// FIFO subscriptions whose head index exists, with its fetch query.
    fifo: std::collections::HashMap<String, String>,
}

/// Due deliveries of a parallel lane at one priority (`?4`), in due order: a lane reads
/// high, then normal, then low, so after an outage the important events go first.
pub(super) const DUE_SQL: &str =
    "SELECT d.seq, d.id, d.attempts, d.budget_used, e.id, e.type, e.device_id, e.created_ms, e.data, d.next_attempt_ms,
            e.clock_boot_id, e.clock_boottime_ms, d.priority
     FROM deliveries d INDEXED BY deliveries_due JOIN events e ON e.seq = d.event_seq
     WHERE d.subscription = ?1 AND d.priority = ?4 AND d.state = 'pending' AND d.next_attempt_ms <= ?2
       AND d.expires_ms > ?2
     ORDER BY d.next_attempt_ms, d.seq LIMIT ?3";

/// The priorities a parallel lane reads, in order (`Priority as i64`).
const PRIORITIES: [i64; 3] = [0, 1, 2];

/// The head of a FIFO lane, in event order, through the subscription's own partial
/// index (see [`fifo_index`]). Named index: left to itself the planner takes the expiry
/// index for `expires_ms > ?` and sorts the whole backlog. The subscription is a literal
/// as well as `?1`: SQLite uses a partial index only for a query that names its terms.
pub(super) fn due_fifo_sql(index: &str, subscription: &str) -> String {
    format!(
        "SELECT d.seq, d.id, d.attempts, d.budget_used, e.id, e.type, e.device_id, e.created_ms, e.data, d.next_attempt_ms,
                e.clock_boot_id, e.clock_boottime_ms, d.priority
         FROM deliveries d INDEXED BY {index} JOIN events e ON e.seq = d.event_seq
         WHERE d.subscription = ?1 AND d.subscription = {} AND d.state = 'pending' AND d.expires_ms > ?2
         ORDER BY d.seq LIMIT ?3",
        sql_text(subscription)
    )
}

/// `s` as an SQL string literal.
fn sql_text(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Creates, if it is not there, the index a FIFO subscription reads its head through:
/// its pending deliveries in event order. One per FIFO subscription, made the first time
/// its lane fetches, so the deliveries of every other subscription write one index less
/// (docs/decisions.md: "The durable path's indexes"). Returns its name.
pub(super) fn fifo_index(conn: &Connection, subscription: &str) -> rusqlite::Result<String> {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(subscription.as_bytes());
    let name = format!("deliveries_fifo_{}", digest[..8].iter().map(|b| format!("{b:02x}")).collect::<String>());
    conn.execute_batch(&format!(
        "CREATE INDEX IF NOT EXISTS {name} ON deliveries (seq) WHERE state = 'pending' AND subscription = {}",
        sql_text(subscription)
    ))?;
    Ok(name)
}

pub(super) fn bump(conn: &Connection, subscription: &str, outcome: &str, n: i64) -> rusqlite::Result<()> {
    if n == 0 {
        return Ok(());
    }
    conn.prepare_cached(
        "INSERT INTO counters (subscription, outcome, n) VALUES (?1, ?2, ?3)
         ON CONFLICT (subscription, outcome) DO UPDATE SET n = n + excluded.n",
    )?
    .execute(params![subscription, outcome, n])?;
    Ok(())
}

/// What one read of due deliveries may carry of event data: a lane reads ahead (128
/// rows), and rows of 250 KiB events would otherwise hold 32 MiB in memory per lane.
const FETCH_BYTES_MAX: usize = 2 << 20;

/// Reads due rows from `q` into `rows` until `limit`, or until they carry
/// [`FETCH_BYTES_MAX`] of data (then `more` is set), passing over `skip` (sorted). A row
/// not yet due ends the read (only a FIFO query returns one: its head) and is returned.
fn read_due(
    mut q: rusqlite::Rows<'_>,
    subscription: &str,
    now_ms: i64,
    limit: usize,
    skip: &[i64],
    rows: &mut Vec<Due>,
    more: &mut bool,
) -> rusqlite::Result<Option<i64>> {
    let mut bytes: usize = rows.iter().map(|d| d.data.len()).sum();
    while rows.len() < limit
        && let Some(r) = q.next()?
    {
        if bytes >= FETCH_BYTES_MAX {
            *more = true;
            break;
        }
        let seq: i64 = r.get(0)?;
        if skip.binary_search(&seq).is_ok() {
            continue;
        }
        let next_attempt_ms: i64 = r.get(9)?;
        if next_attempt_ms > now_ms {
            // FIFO: the queue waits behind its head until the head is due.
            return Ok(Some(next_attempt_ms));
        }
        let due = Due {
            seq,
            delivery_id: r.get(1)?,
            subscription: subscription.to_string(),
            attempts: r.get(2)?,
            budget_used: r.get(3)?,
            event_id: r.get(4)?,
            event_type: r.get(5)?,
            device_id: r.get(6)?,
            created_ms: r.get(7)?,
            data: r.get(8)?,
            clock: match (r.get::<_, Option<i64>>(10)?, r.get::<_, Option<i64>>(11)?) {
                (Some(boot_id), Some(boottime_ms)) => Some(crate::clock::Taken { boot_id, boottime_ms }),
                _ => None,
            },
            priority: r.get(12)?,
            next_attempt_ms,
        };
        bytes += due.data.len();
        rows.push(due);
    }
    Ok(None)
}

impl Store {
    /// Takes the read-write connection of an opened outbox, with the largest dedupe window.
    pub fn new(conn: Connection) -> rusqlite::Result<Self> {
        Self::with_dedupe_window(conn, DEDUPE_KEYS)
    }

    /// Takes the read-write connection of an opened outbox and fills a dedupe window of
    /// `capacity` keys from its newest events.
    pub fn with_dedupe_window(conn: Connection, capacity: usize) -> rusqlite::Result<Self> {
        let keys = SharedKeys::new(capacity);
        // Stored events and events delivered from memory each keep their newest keys.
        for sql in [
            "SELECT dedupe_key FROM events WHERE dedupe_key IS NOT NULL ORDER BY seq DESC LIMIT ?1",
            "SELECT key FROM delivered_keys ORDER BY seq DESC LIMIT ?1",
        ] {
            let mut newest: Vec<i64> =
                conn.prepare(sql)?.query_map([capacity as i64], |r| r.get(0))?.collect::<Result<_, _>>()?;
            newest.reverse();
            keys.lock().recent.extend(newest);
        }
        Ok(Store {
            conn,
            duplicates: 0,
            expired_at: std::collections::HashMap::new(),
            expired_count: 0,
            expire_sweep_ms: EXPIRE_SWEEP_MS,
            keys,
            counts: Vec::new(),
            fifo: std::collections::HashMap::new(),
            expire_from: std::collections::HashMap::new(),
        })
    }

    /// The dedupe window, for the fast path.
    pub fn keys(&self) -> SharedKeys {
        self.keys.clone()
    }

    /// Continues on a new connection to the same file; the old one is closed.
    pub fn replace_conn(&mut self, conn: Connection) {
        self.conn = conn;
    }

    /// Sweeps for expired deliveries on every `due` (tests that step time by hand).
    pub fn sweep_expiry_always(mut self) -> Self {
        self.expire_sweep_ms = 0;
        self
    }

    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    pub fn begin(&self) -> rusqlite::Result<()> {
        self.conn.execute_batch("BEGIN IMMEDIATE")
    }

    pub fn commit(&mut self) -> rusqlite::Result<()> {
        for (subscription, outcome, n) in std::mem::take(&mut self.counts) {
            bump(&self.conn, &subscription, outcome, n)?;
        }
        self.conn.execute_batch("COMMIT")?;
        self.keys.lock().recent.commit();
        Ok(())
    }

    pub fn rollback(&mut self) {
        self.keys.lock().recent.discard();
        self.counts.clear();
        if !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }

    pub fn insert(&mut self, inbound: &Inbound, now_ms: i64) -> rusqlite::Result<Stored> {
        match inbound {
            Inbound::Event(e) => self.insert_event(e, now_ms),
            Inbound::Quarantine(q) => self.insert_quarantine(q, now_ms).map(|_| Stored::Quarantined),
            Inbound::Nothing => Ok(Stored::Nothing),
        }
    }

    fn insert_event(&mut self, e: &NewEvent, now_ms: i64) -> rusqlite::Result<Stored> {
        if let Some(key) = e.retained_key
            && self.retained_before(&e.topic, key)?
        {
            self.duplicates += 1;
            return Ok(Stored::Duplicate);
        }
        if let Some(key) = e.dedupe_key
            && e.dedupe_check
            && self.keys.lock().contains(key)
        {
            self.duplicates += 1;
            return Ok(Stored::Duplicate);
        }
        if e.deliveries.is_empty() {
            return Ok(Stored::Nothing);
        }
        let c = &self.conn;
        // An id fixed by the payload's own id may be stored already (its key had left the
        // window): that is a duplicate too, never a failed transaction.
        let inserted = c
            .prepare_cached(
                "INSERT INTO events (id, type, device_id, created_ms, topic, data, dedupe_key, clock_boot_id, clock_boottime_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT (id) DO NOTHING",
            )?
            .execute(params![
                e.id,
                e.event_type,
                e.device_id,
                e.created_ms,
                e.topic,
                e.data,
                e.dedupe_key,
                e.clock.map(|c| c.boot_id),
                e.clock.map(|c| c.boottime_ms)
            ])?;
        if inserted == 0 {
            self.duplicates += 1;
            return Ok(Stored::Duplicate);
        }
        let event_seq = c.last_insert_rowid();
        let collapse_key = e.collapse.then(|| format!("{}\u{1f}{}", e.event_type, e.device_id));
        let mut delivery_ids = Vec::with_capacity(e.deliveries.len());
        let (mut first_delivery, mut last_delivery) = (None::<i64>, None::<i64>);
        for d in &e.deliveries {
            if let Some(key) = &collapse_key {
                self.supersede(&d.subscription, key, now_ms)?;
            }
            let delivery_id = d.id.clone();
            self.conn
                .prepare_cached(
                    "INSERT INTO deliveries (id, event_seq, subscription, priority, next_attempt_ms, expires_ms, collapse_key, updated_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )?
                .execute(params![
                    delivery_id,
                    event_seq,
                    d.subscription,
                    e.priority as i64,
                    e.taken_ms.min(now_ms),
                    d.expires_ms,
                    collapse_key,
                    now_ms
                ])?;
            last_delivery = Some(self.conn.last_insert_rowid());
            first_delivery = first_delivery.or(last_delivery);
            self.count(&d.subscription, "created", 1)?;
            delivery_ids.push(delivery_id);
        }
        // The event row is on a page this commit writes anyway.
        self.conn
            .prepare_cached("UPDATE events SET first_delivery = ?2, last_delivery = ?3 WHERE seq = ?1")?
            .execute(params![event_seq, first_delivery, last_delivery])?;
        if let Some(key) = e.dedupe_key {
            let mut keys = self.keys.lock();
            keys.recent.stage(key);
            if self.conn.is_autocommit() {
                keys.recent.commit();
            }
        }
        Ok(Stored::Event { delivery_ids })
    }

    /// Ends the pending deliveries an incoming collapsing event replaces.
    fn supersede(&self, subscription: &str, collapse_key: &str, now_ms: i64) -> rusqlite::Result<()> {
        let c = &self.conn;
        c.prepare_cached(
            "INSERT INTO attempts (subscription, delivery_id, event_type, attempt, started_ms, duration_ms, error_kind, error, outcome)
             SELECT d.subscription, d.id, e.type, d.attempts, ?3, 0, 'superseded', 'a newer event of the same type and device replaced it', 'superseded'
             FROM deliveries d JOIN events e ON e.seq = d.event_seq
             WHERE d.subscription = ?1 AND d.collapse_key = ?2 AND d.state = 'pending'",
        )?
        .execute(params![subscription, collapse_key, now_ms])?;
        let n = c
            .prepare_cached(
                "UPDATE deliveries SET state = 'superseded', updated_ms = ?3
                 WHERE subscription = ?1 AND collapse_key = ?2 AND state = 'pending'",
            )?
            .execute(params![subscription, collapse_key, now_ms])?;
        bump(c, subscription, "superseded", n as i64)
    }

    fn insert_quarantine(&self, q: &Quarantined, now_ms: i64) -> rusqlite::Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO quarantine (received_ms, topic, reason, size, payload) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![now_ms, q.topic, q.reason, q.size as i64, q.payload])?;
        Ok(())
    }

    /// Expires what is past its age, then lists due deliveries (see `Outbox::due`).
    pub fn due(&mut self, subscription: &str, now_ms: i64, limit: usize, fifo: bool) -> rusqlite::Result<DueBatch> {
        self.sweep_expired(subscription, now_ms)?;
        self.due_rows(subscription, now_ms, limit, fifo, &[], Priority::Low as i64)
    }

    /// Reads up to `limit` due deliveries, oldest first, leaving out any past its
    /// max_age that no sweep has ended yet and, unless `fifo`, those in `skip` (sorted)
    /// and priorities below `lowest` (`Priority::Low`: none): they are passed over before
    /// any of their columns is copied. It writes nothing (but for a FIFO subscription's
    /// first read, which creates its head index, see [`fifo_index`]), so it may run
    /// outside a transaction.
    pub fn due_rows(
        &mut self,
        subscription: &str,
        now_ms: i64,
        limit: usize,
        fifo: bool,
        skip: &[i64],
        lowest: i64,
    ) -> rusqlite::Result<DueBatch> {
        let mut rows = Vec::new();
        let mut next_due_ms = None;
        let mut more = false;
        if fifo {
            if !self.fifo.contains_key(subscription) {
                let index = fifo_index(&self.conn, subscription)?;
                self.fifo.insert(subscription.to_string(), due_fifo_sql(&index, subscription));
            }
            let mut stmt = self.conn.prepare_cached(&self.fifo[subscription])?;
            let q = stmt.query(params![subscription, now_ms, limit as i64])?;
            next_due_ms = read_due(q, subscription, now_ms, limit, &[], &mut rows, &mut more)?;
        } else {
            let mut stmt = self.conn.prepare_cached(DUE_SQL)?;
            for priority in PRIORITIES.into_iter().filter(|p| *p <= lowest) {
                if rows.len() >= limit || more {
                    break;
                }
                let q =
                    stmt.query(params![subscription, now_ms, (limit - rows.len() + skip.len()) as i64, priority])?;
                read_due(q, subscription, now_ms, limit, skip, &mut rows, &mut more)?;
            }
        }
        if !fifo && rows.len() < limit && !more {
            next_due_ms = self
                .conn
                .prepare_cached(
                    "SELECT MIN(m) FROM (
                       SELECT MIN(next_attempt_ms) AS m FROM deliveries
                       WHERE subscription = ?1 AND priority = 0 AND state = 'pending' AND next_attempt_ms > ?2
                       UNION ALL SELECT MIN(next_attempt_ms) FROM deliveries
                       WHERE subscription = ?1 AND priority = 1 AND state = 'pending' AND next_attempt_ms > ?2
                       UNION ALL SELECT MIN(next_attempt_ms) FROM deliveries
                       WHERE subscription = ?1 AND priority = 2 AND state = 'pending' AND next_attempt_ms > ?2)",
                )?
                .query_row(params![subscription, now_ms], |r| r.get(0))?;
        }
        Ok(DueBatch { rows, next_due_ms, committed: 0, more })
    }

    /// Whether `key` is the retained payload last taken on `topic`; if not, it is now.
    fn retained_before(&self, topic: &str, key: i64) -> rusqlite::Result<bool> {
        let last: Option<i64> = self
            .conn
            .prepare_cached("SELECT key FROM retained WHERE topic = ?1")?
            .query_row(params![topic], |r| r.get(0))
            .optional()?;
        if last == Some(key) {
            return Ok(true);
        }
        self.conn
            .prepare_cached(
                "INSERT INTO retained (topic, key) VALUES (?1, ?2) ON CONFLICT (topic) DO UPDATE SET key = ?2",
            )?
            .execute(params![topic, key])?;
        Ok(false)
    }

    /// Adds to a counter: at commit inside a transaction (one upsert per subscription and
    /// outcome per commit), at once outside one.
    fn count(&mut self, subscription: &str, outcome: &'static str, n: i64) -> rusqlite::Result<()> {
        if self.conn.is_autocommit() {
            return bump(&self.conn, subscription, outcome, n);
        }
        match self.counts.iter_mut().find(|(s, o, _)| s == subscription && *o == outcome) {
            Some((_, _, total)) => *total += n,
            None => self.counts.push((subscription.to_string(), outcome, n)),
        }
        Ok(())
    }

    fn meta(&self, name: &str) -> rusqlite::Result<Option<i64>> {
        self.conn.prepare_cached("SELECT value FROM meta WHERE name = ?1")?.query_row([name], |r| r.get(0)).optional()
    }

    fn set_meta(&self, name: &str, value: i64) -> rusqlite::Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO meta (name, value) VALUES (?1, ?2) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            )?
            .execute(params![name, value])?;
        Ok(())
    }

    /// Saves the schedule clock's reading (see `clock`), in the open transaction.
    pub fn save_clock(&self, c: &crate::clock::Saved) -> rusqlite::Result<()> {
        self.set_meta("clock_sched_ms", c.sched_ms)?;
        self.set_meta("clock_boot_id", c.boot_id)?;
        self.set_meta("clock_boottime_ms", c.boottime_ms)?;
        self.set_meta("clock_wall_ms", c.wall_ms)?;
        self.set_meta("clock_synced", c.synced as i64)
    }

    /// The schedule clock's last saved reading, if any.
    pub fn saved_clock(&self) -> rusqlite::Result<Option<crate::clock::Saved>> {
        let (Some(sched_ms), Some(boot_id), Some(boottime_ms), Some(wall_ms), Some(synced)) = (
            self.meta("clock_sched_ms")?,
            self.meta("clock_boot_id")?,
            self.meta("clock_boottime_ms")?,
            self.meta("clock_wall_ms")?,
            self.meta("clock_synced")?,
        ) else {
            return Ok(None);
        };
        Ok(Some(crate::clock::Saved { sched_ms, boot_id, boottime_ms, wall_ms, synced: synced != 0 }))
    }

    /// The last fast-log entry already written to the tables.
    pub fn fast_applied(&self) -> rusqlite::Result<u64> {
        Ok(self.meta("fast_applied")?.unwrap_or(0).max(0) as u64)
    }

    /// Fast-log entries up to `l` are in the tables (in the open transaction). Entries
    /// are written in log order, so `l` only grows.
    pub fn set_fast_applied(&self, l: u64) -> rusqlite::Result<()> {
        self.set_meta("fast_applied", l as i64)
    }

    /// Keeps the newest `keep` keys of events delivered from memory.
    pub fn trim_delivered_keys(&self, keep: usize) -> rusqlite::Result<usize> {
        self.conn
            .prepare_cached("DELETE FROM delivered_keys WHERE seq <= (SELECT MAX(seq) FROM delivered_keys) - ?1")?
            .execute([keep as i64])
    }

    /// Keeps the newest `keep` audit rows of a subscription.
    pub fn trim_audit(&self, subscription: &str, keep: u64) -> rusqlite::Result<usize> {
        self.conn
            .prepare_cached(
                "DELETE FROM attempts WHERE subscription = ?1 AND seq <= (
                    SELECT seq FROM attempts WHERE subscription = ?1 ORDER BY seq DESC LIMIT 1 OFFSET ?2)",
            )?
            .execute(params![subscription, keep as i64])
    }

    /// Redeliveries recognised since start, on either path.
    pub fn duplicates(&self) -> u64 {
        self.duplicates + self.keys.lock().fast_duplicates
    }

    pub fn stats(&self) -> rusqlite::Result<Stats> {
        let mut stats = super::query::stats(&self.conn)?;
        stats.duplicates = self.duplicates();
        Ok(stats)
    }

    /// The terminal state a delivery reached, for tests and `show`.
    pub fn delivery_state(&self, delivery_id: &str) -> rusqlite::Result<Option<String>> {
        self.conn.query_row("SELECT state FROM deliveries WHERE id = ?1", [delivery_id], |r| r.get(0)).optional()
    }
}

#[cfg(test)]
mod tests;
