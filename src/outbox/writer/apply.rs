//! Applying commands in a transaction: what each write does to the store, and the
//! transaction that carries the writes, the admitted ingest and the fast path's rows.

use std::time::Instant;

use super::super::store::{Store, Stored};
use super::super::{Inbound, Repair, Repaired, Write};
use super::{AUDIT_TRIM_EVERY, Applied, CLOCK_SAVE_EVERY, Writer};
use crate::clock::sched_ms;
use crate::config::Synchronous;

impl Writer {
    /// Runs `work` in a transaction of its own: committed if it succeeds, rolled back if
    /// anything fails.
    pub(super) fn in_own_transaction<T>(
        &mut self,
        work: impl FnOnce(&mut Store) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        let result = self.store.begin().and_then(|()| work(&mut self.store)).and_then(|done| {
            self.store.commit()?;
            Ok(done)
        });
        if result.is_err() {
            self.store.rollback();
        }
        result
    }

    /// Counts an audit row written, trimming the subscription's log now and then.
    fn audited(&mut self, subscription: &str) -> rusqlite::Result<()> {
        let added = self.upkeep.audit_added.entry(subscription.to_string()).or_default();
        *added += 1;
        if *added % AUDIT_TRIM_EVERY == 0 {
            self.store.trim_audit(subscription, self.upkeep.audit_per_subscription)?;
        }
        Ok(())
    }

    fn apply_write(&mut self, write: &Write, now: i64) -> rusqlite::Result<Applied> {
        Ok(match write {
            Write::Record { records, .. } => {
                for record in records {
                    self.store.record(record)?;
                    self.audited(&record.audit.subscription)?;
                }
                Applied::Recorded
            }
            Write::Repair { repair, .. } => Applied::Repaired(match repair {
                Repair::Retry { ids, all_failed, subscription } => {
                    Repaired::moved(self.store.retry(ids, *all_failed, subscription.as_deref(), now)?)
                }
                Repair::Replay { subscription, since_ms, until_ms } => {
                    Repaired::moved(self.store.replay(subscription, *since_ms, *until_ms, now)?)
                }
                Repair::Release { seq, event } => match self.store.release(*seq, event, now)? {
                    None => Repaired::moved(0),
                    Some(Stored::Event { delivery_ids }) => Repaired { count: 1, delivery_ids, duplicate: false },
                    Some(stored) => Repaired { duplicate: stored == Stored::Duplicate, ..Repaired::moved(1) },
                },
                Repair::Purge { seqs } => Repaired::moved(self.store.purge_quarantine(seqs.as_deref())?),
                Repair::Requarantine { seq, reason } => Repaired::moved(self.store.requarantine(*seq, reason)?),
            }),
            Write::Emit { event, .. } => match self.store.insert(&Inbound::Event((**event).clone()), now)? {
                Stored::Event { delivery_ids } => Applied::Emitted(delivery_ids),
                _ => Applied::Emitted(Vec::new()),
            },
            Write::Hold { subscription, state, .. } => {
                self.store.hold(subscription, *state, now)?;
                Applied::Held
            }
        })
    }

    /// Applies `writes` and the first `take` held messages in one transaction; says what
    /// each write did and whether new deliveries may be due. A transaction that carries
    /// only what can be rebuilt (the fast log's events, expiry sweeps) is not fsync'd:
    /// the next durable commit or checkpoint syncs it.
    pub(super) fn apply(&mut self, writes: &[Write], take: usize) -> rusqlite::Result<(Vec<Applied>, bool)> {
        let light = writes.is_empty() && take == 0 && self.synchronous == Synchronous::Full;
        if light {
            self.store.conn().pragma_update(None, "synchronous", "NORMAL")?;
        }
        let result = self.apply_in_transaction(writes, take);
        if result.is_err() {
            self.store.rollback();
        }
        if light {
            // The transaction is over (committed, or rolled back by the caller next).
            let restored = self.store.conn().pragma_update(None, "synchronous", "FULL");
            if let (Ok(_), Err(e)) = (&result, restored) {
                return Err(e);
            }
        }
        result
    }

    fn apply_in_transaction(&mut self, writes: &[Write], take: usize) -> rusqlite::Result<(Vec<Applied>, bool)> {
        let now = sched_ms();
        self.store.begin()?;
        for subscription in &self.upkeep.to_sweep {
            self.store.sweep_expired(subscription, now)?;
        }
        let mut applied = Vec::with_capacity(writes.len());
        let mut new_work = false;
        for write in writes {
            let done = self.apply_write(write, now)?;
            new_work |= match &done {
                Applied::Repaired(r) => r.count > 0,
                Applied::Emitted(ids) => !ids.is_empty(),
                Applied::Recorded | Applied::Held => false,
            };
            applied.push(done);
        }
        let mut audited = Vec::new();
        for (inbound, then) in self.admission.peek(take) {
            if let Stored::Event { delivery_ids } = self.store.insert(inbound, now)? {
                new_work |= !delivery_ids.is_empty();
            }
            for record in then.map(|t| t.records.as_slice()).unwrap_or_default() {
                self.store.record(record)?;
                audited.push(record.audit.subscription.clone());
            }
        }
        audited.iter().try_for_each(|s| self.audited(s))?;
        // The fast path's events ride along with a commit that writes anyway, or go when
        // due; never with a sweep that writes nothing (every few seconds on an idle robot).
        let carry = !writes.is_empty() || take > 0 || self.fast.due(Instant::now());
        let fast = if carry { std::mem::take(&mut self.fast.done) } else { Vec::new() };
        self.fast.carried = carry.then_some(fast.len());
        // Only with a commit that writes anyway: a transaction of its own would cost a
        // page of flash every few seconds on an idle robot.
        let writes_anyway = !writes.is_empty() || take > 0 || !fast.is_empty();
        if writes_anyway && self.clock_saved.is_none_or(|t| t.elapsed() >= CLOCK_SAVE_EVERY) {
            self.store.save_clock(&crate::clock::here())?;
            self.clock_saved = Some(Instant::now());
        }
        let written = fast
            .iter()
            .try_for_each(|done| {
                self.store.record_fast(done)?;
                done.audits.iter().try_for_each(|a| self.audited(&a.subscription))
            })
            .and_then(|()| fast.last().map_or(Ok(()), |d| self.store.set_fast_applied(d.l)));
        if carry {
            self.fast.done = fast;
        }
        written?;
        self.store.commit()?;
        Ok((applied, new_work))
    }
}
