//! What a field tech can do to the queue: put failed deliveries back, replay delivered
//! ones, and hold a subscription (paused, or gone after a 410) across restarts. Every
//! change keeps the counters equal to the rows: a delivery moved back to pending is taken
//! off the count of the state it left.

use rusqlite::params;

use super::HoldState;
use super::store::{Store, bump};

impl Store {
    /// Moves failed deliveries back to pending with a fresh retry budget: those named
    /// (by delivery id or event id), or with `all_failed` every failed one (of
    /// `subscription`, if given). Returns how many.
    pub fn retry(
        &self,
        ids: &[String],
        all_failed: bool,
        subscription: Option<&str>,
        now_ms: i64,
    ) -> rusqlite::Result<u64> {
        let c = self.conn();
        let mut moved = 0;
        let mut select = c.prepare_cached(
            "SELECT d.seq, d.subscription FROM deliveries d JOIN events e ON e.seq = d.event_seq
             WHERE d.state = 'failed' AND (?1 IS NULL OR d.subscription = ?1) AND (?2 OR d.id = ?3 OR e.id = ?3)",
        )?;
        let targets: Vec<Option<&str>> =
            if all_failed { vec![None] } else { ids.iter().map(|s| Some(s.as_str())).collect() };
        let mut rows: Vec<(i64, String)> = Vec::new();
        for id in targets {
            let found = select.query_map(params![subscription, all_failed, id], |r| Ok((r.get(0)?, r.get(1)?)))?;
            for row in found {
                rows.push(row?);
            }
        }
        rows.sort();
        rows.dedup();
        for (seq, sub) in rows {
            let n = c
                .prepare_cached(
                    "UPDATE deliveries SET state = 'pending', budget_used = 0, next_attempt_ms = ?2, updated_ms = ?2
                     WHERE seq = ?1 AND state = 'failed'",
                )?
                .execute(params![seq, now_ms])?;
            bump(c, &sub, "failed", -(n as i64))?;
            moved += n as u64;
        }
        Ok(moved)
    }

    /// Moves a subscription's delivered deliveries of events created in
    /// `[since_ms, until_ms)` back to pending. They keep their delivery ids, so a
    /// receiver that deduplicates sees them as the same deliveries. Returns how many.
    pub fn replay(&self, subscription: &str, since_ms: i64, until_ms: i64, now_ms: i64) -> rusqlite::Result<u64> {
        let c = self.conn();
        let n = c
            .prepare_cached(
                "UPDATE deliveries SET state = 'pending', budget_used = 0, next_attempt_ms = ?4, updated_ms = ?4
                 WHERE subscription = ?1 AND state = 'delivered'
                   AND event_seq IN (SELECT seq FROM events WHERE created_ms >= ?2 AND created_ms < ?3)",
            )?
            .execute(params![subscription, since_ms, until_ms, now_ms])?;
        bump(c, subscription, "delivered", -(n as i64))?;
        Ok(n as u64)
    }

    /// Holds a subscription in `state`, or releases it with `None`.
    pub fn hold(&self, subscription: &str, state: Option<HoldState>, now_ms: i64) -> rusqlite::Result<()> {
        let c = self.conn();
        match state {
            Some(s) => c
                .prepare_cached("INSERT OR REPLACE INTO held (subscription, state, since_ms) VALUES (?1, ?2, ?3)")?
                .execute(params![subscription, s.as_str(), now_ms])?,
            None => c.prepare_cached("DELETE FROM held WHERE subscription = ?1")?.execute([subscription])?,
        };
        Ok(())
    }

    pub fn held(&self) -> rusqlite::Result<Vec<(String, HoldState)>> {
        let mut stmt = self.conn().prepare_cached("SELECT subscription, state FROM held")?;
        stmt.query_map([], |r| Ok((r.get(0)?, HoldState::parse(&r.get::<_, String>(1)?))))?.collect()
    }
}
