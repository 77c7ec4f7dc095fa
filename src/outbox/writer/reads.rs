//! Reads answered by the writer from committed state, outside any write transaction,
//! with what it holds in memory added.

use super::super::Read;
use super::Writer;

impl Writer {
    /// Answers a read-only command outside any write transaction. One that fails gets no
    /// answer: its caller sees the outbox as unavailable.
    pub(super) fn answer(&mut self, read: Read) {
        match read {
            Read::Due { subscription, now_ms, limit, fifo, skip, lowest, reply } => {
                match self.store.due_rows(&subscription, now_ms, limit, fifo, &skip, lowest) {
                    Ok(mut d) => {
                        d.committed = *self.committed.borrow();
                        drop(reply.send(d))
                    }
                    Err(e) => tracing::debug!(error = %e, "Could not read due deliveries."),
                }
                self.upkeep.sweep_later(subscription);
            }
            Read::Stats { reply } => match self.store.stats() {
                Ok(mut s) => {
                    s.add_fast(&self.fast_pending());
                    s.add_held(&self.journal.pending());
                    drop(reply.send(s))
                }
                Err(e) => tracing::debug!(error = %e, "Could not read the outbox stats."),
            },
            Read::InMemory { reply } => {
                let duplicates = self.store.duplicates();
                drop(reply.send(super::super::InMemory {
                    fast: self.fast_pending(),
                    held: self.journal.pending(),
                    duplicates,
                }))
            }
            Read::Held { reply } => match self.store.held() {
                Ok(h) => drop(reply.send(h)),
                Err(e) => tracing::debug!(error = %e, "Could not read the held subscriptions."),
            },
        }
    }
}
