//! Expiry: deliveries past their max_age end as `expired`. A sweep reads a bounded
//! stretch of the deliveries table by seq (no index on `expires_ms`), at most every
//! [`EXPIRE_SWEEP_MS`] per subscription, riding along with other commits.

use rusqlite::{OptionalExtension, params};

use super::{Store, bump};

/// Expiry is swept at most this often per subscription (a sweep reads a bounded stretch
/// of the table; the interval keeps it off the path of every fetch).
pub(super) const EXPIRE_SWEEP_MS: i64 = 5_000;
/// How many delivery seqs one expiry sweep reads: a few milliseconds of reading, and a
/// backlog of a million is swept through in about four minutes.
pub(super) const EXPIRE_WINDOW: i64 = 20_000;
/// Windows one sweep may read while each finds expired deliveries.
const EXPIRE_WINDOWS_AT_ONCE: usize = 16;

impl Store {
    /// Ends what passed its max_age as `expired`, at most once per sweep interval.
    pub fn sweep_expired(&mut self, subscription: &str, now_ms: i64) -> rusqlite::Result<()> {
        let last = self.expired_at.get(subscription).copied().unwrap_or(i64::MIN);
        if now_ms.saturating_sub(last) >= self.expire_sweep_ms || now_ms < last {
            self.expired_count += self.expire(subscription, now_ms)?;
            self.expired_at.insert(subscription.to_string(), now_ms);
        }
        Ok(())
    }

    /// Subscriptions already swept once whose next sweep is due: expiry goes on while
    /// nothing fetches (a lane that found only expired rows has nothing to fetch).
    pub fn sweeps_due(&self, now_ms: i64) -> Vec<String> {
        self.expired_at
            .iter()
            .filter(|(_, last)| now_ms.saturating_sub(**last) >= self.expire_sweep_ms || now_ms < **last)
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Deliveries expired since the last call.
    pub fn take_expired(&mut self) -> u64 {
        std::mem::take(&mut self.expired_count)
    }

    /// Ends as `expired` what passed its max_age among the next [`EXPIRE_WINDOW`]
    /// deliveries (by seq) of the subscription's sweep, which wraps around at the end.
    /// No index on `expires_ms`: a sweep reads a bounded stretch of the table, so a
    /// backlog of a million is swept through in minutes, and a queued delivery writes
    /// one index less. What expired and is not swept yet is never sent: the due queries
    /// pass over it (docs/decisions.md: "The durable path's indexes"). A window that
    /// found expired deliveries is followed at once by the next (a backlog that expires
    /// together goes quickly), up to [`EXPIRE_WINDOWS_AT_ONCE`].
    pub(super) fn expire(&mut self, subscription: &str, now_ms: i64) -> rusqlite::Result<u64> {
        let mut total = 0;
        for _ in 0..EXPIRE_WINDOWS_AT_ONCE {
            let n = self.expire_window(subscription, now_ms)?;
            total += n;
            if n == 0 {
                break;
            }
        }
        Ok(total)
    }

    /// One window of [`Store::expire`]: how many expired.
    fn expire_window(&mut self, subscription: &str, now_ms: i64) -> rusqlite::Result<u64> {
        let from = self.expire_from.get(subscription).copied().unwrap_or(0);
        let to = from.saturating_add(EXPIRE_WINDOW);
        let c = &self.conn;
        let last: i64 =
            c.prepare_cached("SELECT coalesce(max(seq), 0) FROM deliveries")?.query_row([], |r| r.get(0))?;
        let window = params![subscription, now_ms, from, to];
        let any: Option<i64> = c
            .prepare_cached(
                "SELECT seq FROM deliveries WHERE seq > ?3 AND seq <= ?4
                   AND subscription = ?1 AND state = 'pending' AND expires_ms <= ?2 LIMIT 1",
            )?
            .query_row(window, |r| r.get(0))
            .optional()?;
        let n = match any {
            None => 0,
            Some(_) => {
                c.prepare_cached(
                    "INSERT INTO attempts (subscription, delivery_id, event_type, attempt, started_ms, duration_ms, error_kind, error, outcome)
                     SELECT d.subscription, d.id, e.type, d.attempts, ?2, 0, 'expired', 'not delivered within its max_age', 'expired'
                     FROM deliveries d JOIN events e ON e.seq = d.event_seq
                     WHERE d.seq > ?3 AND d.seq <= ?4
                       AND d.subscription = ?1 AND d.state = 'pending' AND d.expires_ms <= ?2",
                )?
                .execute(window)?;
                let n = c
                    .prepare_cached(
                        "UPDATE deliveries SET state = 'expired', updated_ms = ?2
                         WHERE seq > ?3 AND seq <= ?4 AND subscription = ?1 AND state = 'pending' AND expires_ms <= ?2",
                    )?
                    .execute(window)?;
                bump(c, subscription, "expired", n as i64)?;
                n as u64
            }
        };
        self.expire_from.insert(subscription.to_string(), if to >= last { 0 } else { to });
        Ok(n)
    }
}
