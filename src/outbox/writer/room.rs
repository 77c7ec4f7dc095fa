//! Making room: under the cap (`storage.max_bytes`), and on a filesystem that is nearly
//! full whatever the cap says.

use super::losses::Loss;
use super::{Blocked, Writer};
use crate::clock::sched_ms;
use crate::outbox::space::{HIGH, Reclaimed};

/// Ingest never takes the filesystem's last this many bytes: delivery results, the
/// deletes that make room and the checkpoints that hand it back all need a little space
/// to commit, and an outbox that filled the disk itself could otherwise never recover.
const FILESYSTEM_RESERVE: u64 = 512 * 1024;

impl Writer {
    /// Makes room, one small transaction per step so that no step overruns the WAL's
    /// share; says whether ingest may go on.
    pub(super) fn relieve(&mut self, evict: bool) -> bool {
        let now = sched_ms();
        let mut total = Reclaimed::default();
        let budget = self.budget;
        loop {
            match self.in_own_transaction(|store| store.room_step(&budget, evict, now)) {
                Ok(done) if done.deleted == 0 && done.evicted == 0 => break,
                Ok(done) => {
                    total.deleted += done.deleted;
                    total.evicted += done.evicted;
                    self.checkpoint_if_large();
                }
                Err(e) => {
                    tracing::debug!(error = %e, "Could not make room.");
                    break;
                }
            }
        }
        self.count_loss(Loss::Evicted, total.evicted);
        !self.store.over(&self.budget, HIGH).unwrap_or(true)
    }

    /// Free bytes above the reserve on the outbox's filesystem, if known, less what the
    /// WAL holds: a checkpoint needs that much again to write it into the database.
    pub(super) fn filesystem_room(&self) -> Option<u64> {
        Some(room_above_reserve(self.disk.free_bytes()?, self.disk.wal_bytes()))
    }

    /// After each commit: near a full filesystem the WAL is checkpointed while that can
    /// still be done, and ingest that reached the reserve waits while finished deliveries
    /// make room.
    pub(super) fn keep_the_filesystem_reserve(&mut self) {
        let Some(free) = self.disk.free_bytes() else { return };
        let wal = self.disk.wal_bytes();
        let mut room = room_above_reserve(free, wal);
        if wal > 0 && room < 4 * wal {
            let _ = self.store.checkpoint_truncate();
            room = self.filesystem_room().unwrap_or(room);
        }
        if room == 0 && !self.admission.is_empty() {
            self.block(Blocked::NearlyFull);
            self.reclaim_finished();
        }
    }

    /// Ingest waits on a filesystem down to its reserve: finished deliveries (kept only
    /// for `replay`, space permitting) are deleted and their pages handed back to the
    /// filesystem, in small steps that fit the reserve.
    fn reclaim_finished(&mut self) {
        let chunk = self.budget.chunk_rows();
        let mut deleted = 0;
        loop {
            match self.in_own_transaction(|store| store.delete_finished(i64::MAX, chunk)) {
                Ok(0) => break,
                Ok(n) => deleted += n,
                Err(e) => {
                    tracing::debug!(error = %e, "Could not delete finished deliveries.");
                    break;
                }
            }
            let _ = self.store.checkpoint_truncate();
        }
        if deleted > 0 {
            if let Err(e) = self.store.vacuum_free_pages() {
                tracing::debug!(error = %e, "Could not hand free pages back to the filesystem.");
            }
            let _ = self.store.checkpoint_truncate();
            tracing::info!(deleted, "The filesystem is nearly full: deleted finished deliveries to make room.");
        }
    }
}

fn room_above_reserve(free: u64, wal: u64) -> u64 {
    free.saturating_sub(FILESYSTEM_RESERVE + wal)
}
