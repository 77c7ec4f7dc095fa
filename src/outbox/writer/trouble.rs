//! When a commit fails: a full disk or our own cap (blocking ingest, making room), a
//! connection to reopen, writes to give up. The loop that tries again is the writer's
//! `commit_pending`.

use std::time::Instant;

use super::super::Write;
use super::super::disk::Disk;
use super::{Blocked, HIGH, Turn, Writer};

/// SQLITE_FULL, or an I/O error while the filesystem has (next to) no room left: a full
/// disk surfaces as either, depending on which file SQLite was growing.
fn is_full(e: &rusqlite::Error, disk: &dyn Disk) -> bool {
    match e {
        rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DiskFull => true,
        rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::SystemIoFailure => {
            disk.free_bytes().is_some_and(|free| free < 256 * 1024)
        }
        _ => false,
    }
}

impl Writer {
    /// Reacts to a failed transaction; says whether to try again at once (room was made,
    /// or ingest is now held back from the next try).
    pub(super) fn on_failure(&mut self, e: &rusqlite::Error, took: usize) -> bool {
        if !is_full(e, self.disk.as_ref()) {
            tracing::error!(error = %e, free_bytes = self.disk.free_bytes(), wal_bytes = self.disk.wal_bytes(),
                "The outbox cannot commit; nothing is acked until it can.");
            let _ = self.store.checkpoint_truncate();
            return false;
        }
        if self.store.over(&self.budget, HIGH).unwrap_or(false) {
            // Our own cap: make room (finished rows, audit, and with drop_oldest pending
            // deliveries); ingest waits unless that brought usage back under the mark.
            let room = self.relieve(self.evict);
            if !room {
                self.block(Blocked::AtCap);
            }
            return room || took > 0;
        }
        // A full filesystem is waited out, never answered by evicting.
        self.block(Blocked::FilesystemFull);
        let _ = self.store.checkpoint_truncate();
        took > 0
    }

    /// Drops writes that cannot commit: their callers hear so (a result not recorded is
    /// sent again), and the loop goes back to its channel instead of retrying forever.
    pub(super) fn give_up(&mut self, writes: Vec<Write>, e: &rusqlite::Error) -> Turn {
        let waiting = self.admission.blocked() == Some(Blocked::FilesystemFull);
        if !writes.is_empty() {
            tracing::warn!(error = %e, writes = writes.len(),
                "Gave up committing these writes; delivery results not recorded are sent again.");
        }
        drop(writes);
        if waiting { Turn::Waiting } else { Turn::Failing }
    }

    pub(super) fn block(&mut self, why: Blocked) {
        if !self.admission.block(why, Instant::now()) {
            return;
        }
        let held = self.admission.len();
        match why {
            Blocked::FilesystemFull => tracing::error!(held, free_bytes = self.disk.free_bytes(),
                path = %self.path.display(), reason = why.reason(),
                "The filesystem holding the outbox is full: MQTT messages are not acked (the broker holds them) and delivery results wait until there is room."),
            _ => tracing::warn!(
                held,
                reason = why.reason(),
                "The outbox is full: MQTT messages are not acked (the broker holds them) until there is room."
            ),
        }
    }

    pub(super) fn admit_again(&mut self) {
        if self.admission.open().is_some() {
            tracing::info!("The outbox has room again; ingest resumes.");
        }
    }

    /// Continues on a fresh connection: SQLite's pager can keep an I/O error (a full
    /// disk) after its cause is gone, until the connection is closed.
    pub(super) fn reopen(&mut self) {
        match super::super::schema::reopen(&self.path, self.synchronous) {
            Ok(conn) => {
                self.store.replace_conn(conn);
                if let Err(e) = self.store.apply_budget(&self.budget) {
                    tracing::debug!(error = %e, "Could not apply the storage budget to the new connection.");
                }
                tracing::debug!("The outbox writer reopened its connection after repeated failures.");
            }
            Err(e) => tracing::debug!(error = %e, "Could not reopen the outbox; trying the old connection again."),
        }
    }
}
