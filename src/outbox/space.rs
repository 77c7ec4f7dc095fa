//! Bounded disk: the database file and its WAL together stay under `storage.max_bytes`.
//!
//! The cap is split: the WAL gets an eighth (bounded by checkpoints and
//! `journal_size_limit`), the database the rest, enforced by SQLite itself with
//! `max_page_count` — an insert past it fails with SQLITE_FULL instead of growing the file.
//! Before that happens, when the used pages pass [`HIGH`] of the budget, room is made down
//! to [`LOW`]: first by deleting finished deliveries (and events nobody else needs), then,
//! with `when_full = "drop_oldest"`, by evicting pending deliveries, lowest priority and
//! oldest first. Every eviction is counted and audited.

use rusqlite::params;

use super::store::{Store, bump};

/// Start making room when this share of the page budget is used…
pub const HIGH: f64 = 0.90;
/// …and stop when usage is back under this.
pub const LOW: f64 = 0.75;
/// Finished deliveries are kept this long for `replay`, space permitting.
pub const RETENTION_MS: i64 = 24 * 3600 * 1000;

/// How the cap is split between the database file and its WAL.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    pub max_bytes: u64,
    pub page_size: u64,
    pub wal_bytes: u64,
    pub max_pages: u64,
}

impl Budget {
    pub fn new(max_bytes: u64, page_size: u64) -> Budget {
        let wal_bytes = (max_bytes / 8).clamp(32 * 1024, 16 * 1024 * 1024);
        // Half the WAL's share again is kept free: a checkpoint cannot truncate the WAL
        // while a reader (the status socket) holds an old snapshot.
        let max_pages = (max_bytes.saturating_sub(wal_bytes + wal_bytes / 2) / page_size).max(16);
        Budget { max_bytes, page_size, wal_bytes, max_pages }
    }

    /// WAL pages after which SQLite checkpoints on its own.
    pub fn autocheckpoint_pages(&self) -> u64 {
        (self.wal_bytes / 4 / self.page_size).max(4)
    }

    /// The most payload bytes one transaction may add, so that one batch cannot overrun
    /// the WAL's share.
    pub fn batch_bytes(&self) -> usize {
        // A commit writes about three times its payload into the WAL (rows, indexes,
        // counters), and the WAL is truncated once past a quarter of its share.
        (self.wal_bytes / 8) as usize
    }

    /// Rows handled per step while making room: small steps on a small cap, so that one
    /// step's WAL stays well inside the WAL's share.
    pub fn chunk_rows(&self) -> i64 {
        (self.max_pages / 64).clamp(8, 256) as i64
    }

    /// Audit rows kept per subscription under pressure: fewer on a small cap.
    pub fn audit_rows(&self) -> u64 {
        (self.max_bytes / 4096).clamp(64, 1000)
    }

    /// Dedupe keys held in memory: fewer for a small outbox (a smaller robot).
    pub fn dedupe_keys(&self) -> usize {
        (self.max_bytes / 2048).clamp(256, 100_000) as usize
    }
}

/// What making room did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reclaimed {
    pub deleted: u64,
    pub evicted: u64,
}

impl Store {
    /// Applies the budget's pragmas to the connection.
    pub fn apply_budget(&self, b: &Budget) -> rusqlite::Result<()> {
        let c = self.conn();
        c.pragma_update(None, "journal_size_limit", b.wal_bytes as i64)?;
        c.pragma_update(None, "wal_autocheckpoint", b.autocheckpoint_pages() as i64)?;
        let _: i64 = c.query_row(&format!("PRAGMA max_page_count = {}", b.max_pages), [], |r| r.get(0))?;
        Ok(())
    }

    /// Pages holding data (allocated minus free).
    pub fn used_pages(&self) -> rusqlite::Result<u64> {
        let c = self.conn();
        let pages: i64 = c.query_row("PRAGMA page_count", [], |r| r.get(0))?;
        let free: i64 = c.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
        Ok((pages - free).max(0) as u64)
    }

    pub fn over(&self, b: &Budget, share: f64) -> rusqlite::Result<bool> {
        Ok(self.used_pages()? as f64 > b.max_pages as f64 * share)
    }

    /// Deletes up to `chunk` finished deliveries (older than `before_ms`), and the
    /// events left without deliveries. Returns how many deliveries went.
    pub fn delete_finished(&self, before_ms: i64, chunk: i64) -> rusqlite::Result<u64> {
        let c = self.conn();
        let rows: Vec<(i64, i64)> = c
            .prepare_cached(
                "SELECT seq, event_seq FROM deliveries WHERE state != 'pending' AND updated_ms < ?1 ORDER BY seq LIMIT ?2",
            )?
            .query_map(params![before_ms, chunk], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        for (seq, _) in &rows {
            c.prepare_cached("DELETE FROM deliveries WHERE seq = ?1")?.execute([seq])?;
        }
        let mut events: Vec<i64> = rows.iter().map(|r| r.1).collect();
        events.dedup();
        for e in events {
            c.prepare_cached(
                "DELETE FROM events WHERE seq = ?1 AND NOT EXISTS (
                     SELECT 1 FROM deliveries d
                     WHERE d.seq BETWEEN coalesce(events.first_delivery, 0) AND coalesce(events.last_delivery, 9223372036854775807)
                       AND d.event_seq = ?1)",
            )?
            .execute([e])?;
        }
        Ok(rows.len() as u64)
    }

    /// Evicts up to `chunk` pending deliveries, lowest priority and oldest first.
    pub fn evict_pending(&self, now_ms: i64, chunk: i64) -> rusqlite::Result<u64> {
        let c = self.conn();
        let rows: Vec<(i64, String)> = c
            .prepare_cached(
                "SELECT seq, subscription FROM deliveries WHERE state = 'pending' ORDER BY priority DESC, seq LIMIT ?1",
            )?
            .query_map([chunk], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        for (seq, subscription) in &rows {
            c.prepare_cached(
                "INSERT INTO attempts (subscription, delivery_id, event_type, attempt, started_ms, duration_ms, error_kind, error, outcome)
                 SELECT d.subscription, d.id, e.type, d.attempts, ?2, 0, 'evicted', 'the outbox reached storage.max_bytes', 'evicted'
                 FROM deliveries d JOIN events e ON e.seq = d.event_seq WHERE d.seq = ?1",
            )?
            .execute(params![seq, now_ms])?;
            c.prepare_cached("UPDATE deliveries SET state = 'evicted', updated_ms = ?2 WHERE seq = ?1")?
                .execute(params![seq, now_ms])?;
            bump(c, subscription, "evicted", 1)?;
        }
        Ok(rows.len() as u64)
    }

    /// One step of making room (inside the caller's transaction), while usage is over
    /// [`LOW`]: finished deliveries first, then, if `evict`, pending ones. Returns nothing
    /// done when there is room or nothing left to take.
    pub fn room_step(&self, b: &Budget, evict: bool, now_ms: i64) -> rusqlite::Result<Reclaimed> {
        let mut done = Reclaimed::default();
        if !self.over(b, LOW)? {
            return Ok(done);
        }
        self.trim_quarantine(super::quarantine::QUARANTINE_ROWS, b.max_bytes / 16)?;
        self.trim_all_audit(b.audit_rows())?;
        let chunk = b.chunk_rows();
        done.deleted = self.delete_finished(i64::MAX, chunk)?;
        if done.deleted == 0 && evict {
            done.evicted = self.evict_pending(now_ms, chunk)?;
            done.deleted = self.delete_finished(i64::MAX, chunk)?;
        }
        Ok(done)
    }

    /// Trims every subscription's audit log to its newest `keep` rows.
    pub fn trim_all_audit(&self, keep: u64) -> rusqlite::Result<()> {
        let subs: Vec<String> = self
            .conn()
            .prepare_cached("SELECT DISTINCT subscription FROM attempts")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        for s in subs {
            self.trim_audit(&s, keep)?;
        }
        Ok(())
    }

    /// Returns free pages to the filesystem when a good share of the file is free.
    pub fn shrink(&self) -> rusqlite::Result<()> {
        let c = self.conn();
        let pages: i64 = c.query_row("PRAGMA page_count", [], |r| r.get(0))?;
        let free: i64 = c.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
        if free > 64 && free * 4 > pages {
            c.execute_batch("PRAGMA incremental_vacuum")?;
        }
        Ok(())
    }

    /// Hands every free page back to the filesystem, whatever their share of the file.
    pub fn vacuum_free_pages(&self) -> rusqlite::Result<()> {
        self.conn().execute_batch("PRAGMA incremental_vacuum")
    }

    /// Checkpoints everything and truncates the WAL to nothing.
    pub fn checkpoint_truncate(&mut self) -> rusqlite::Result<()> {
        self.rollback();
        let _: (i64, i64, i64) =
            self.conn().query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_splits_the_cap() {
        let b = Budget::new(1 << 20, 4096);
        assert_eq!(b.wal_bytes, 128 * 1024);
        assert_eq!(b.max_pages, (1024 - 192) / 4);
        assert!(b.max_pages * 4096 + b.wal_bytes * 3 / 2 <= 1 << 20);
        assert_eq!(b.dedupe_keys(), 512);
        assert_eq!(Budget::new(256 << 20, 4096).wal_bytes, 16 << 20);
    }
}
