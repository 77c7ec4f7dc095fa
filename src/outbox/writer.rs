//! The writer thread: owns the read-write connection and group-commits every command that
//! is waiting into one transaction. SQLite calls block, so they live on a std thread of
//! their own rather than on the async runtime.
//!
//! Each turn takes what has arrived and sorts it once: reads are answered at once from
//! committed state; writes (delivery results, repairs, local events, holds) wait for the
//! next transaction; ingest goes to [`Admission`], which says how much of it the next
//! transaction may take. A transaction that fails for want of room is tried again without
//! ingest, after making room; one that keeps failing is given up after a few tries, so the
//! loop always comes back to its channel (and to shutdown). Its callers then hear that it
//! was not recorded.
//!
//! The watchdog beat means progress: the loop beats after a commit, when idle, and while
//! waiting on a full filesystem (reported at ERROR), never while its commits keep failing.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};

use super::disk::{Disk, RealDisk};
use super::fastlog::FastLog;
use super::journal::Journal;
use super::space::{Budget, HIGH, RETENTION_MS};
use super::store::Store;
use super::{Command, Inbound, Outbox, OutboxError, Write};
use crate::clock::sched_ms;
use crate::config::{StorageConfig, Synchronous, WhenFull};
use crate::health::{Beat, Wedge};
use batching::{Applied, Pending, Turn, Upkeep};

mod admission;
mod apply;
mod batching;
mod fast;
mod losses;
mod reads;
mod room;
mod trouble;

use admission::{Admission, Blocked, TIGHT_BYTES};
use fast::{FastPending, recover_fast_log, recover_journal};

#[cfg(test)]
mod tests;

/// At most this many commands go into one transaction.
const MAX_BATCH: usize = 2048;
/// Trim a subscription's audit log after this many new rows.
const AUDIT_TRIM_EVERY: u64 = 256;
/// A batch this large means load: the next batch waits up to [`LINGER`] to grow.
const BUSY_BATCH: usize = 16;
const LINGER: Duration = Duration::from_millis(1);
/// How often finished rows past retention are deleted and free pages returned.
const HOUSEKEEPING: Duration = Duration::from_secs(30);
/// After this many failed attempts in a row the writer continues on a fresh connection.
const REOPEN_AFTER: u32 = 3;
/// After this many failed attempts in a row the writer gives the batch's writes up.
const GIVE_UP_AFTER: u32 = 8;
/// Delivery results nobody waits on are held this long for a commit they can share
/// (docs/decisions.md: "Results share commits").
const RECORD_LINGER: Duration = Duration::from_millis(10);
/// …or until this many are held.
const RECORD_HOLD_MAX: usize = 4096;
/// A far endpoint's results (`Write::lazy`) wait as long as unhurried ingest while fewer
/// than this are held (docs/decisions.md, "Holding the ack").
const RECORD_HOLD_LONG: usize = 256;
/// The schedule clock rides along with a commit at most this often (see `clock`).
const CLOCK_SAVE_EVERY: Duration = Duration::from_secs(10);
/// Messages none of whose endpoints is reachable wait this long at most for company in a
/// commit (docs/decisions.md: "Unhurried ingest")…
const UNHURRIED_LINGER: Duration = Duration::from_secs(3);
/// …or until this many are held, or until they stop coming (the broker's in-flight
/// window is full: see `Admission::unhurried_until`).
const UNHURRIED_BATCH: usize = 512;
/// Messages in a burst (committed, or delivered from memory) before the writer hands
/// free heap back when it ends.
const RELEASE_AFTER: usize = 4096;
/// The running writer; join it after every [`Outbox`] clone is dropped.
pub struct WriterThread {
    handle: Option<JoinHandle<()>>,
    /// One agent per outbox, for as long as this one runs (see `lock`).
    _lock: super::lock::OutboxLock,
}

impl WriterThread {
    /// Opens the outbox and starts its writer.
    pub fn start(cfg: &StorageConfig, beat: Beat) -> Result<(Outbox, WriterThread), OutboxError> {
        let lock = super::lock::acquire(&cfg.path)?;
        let (outbox, writer) = Writer::open(cfg, beat, Box::new(RealDisk { path: cfg.path.clone() }))?;
        let handle = std::thread::Builder::new()
            .name("outbox-writer".into())
            .spawn(move || writer.run())
            .map_err(|source| OutboxError::Io { path: "outbox writer thread".into(), source })?;
        Ok((outbox, WriterThread { handle: Some(handle), _lock: lock }))
    }

    /// Waits for the writer to commit what it holds and stop (all senders dropped).
    pub fn join(mut self) {
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

struct Writer {
    store: Store,
    rx: mpsc::Receiver<Command>,
    committed: watch::Sender<u64>,
    new_work: Arc<Notify>,
    budget: Budget,
    path: PathBuf,
    synchronous: Synchronous,
    evict: bool,
    disk: Box<dyn Disk>,
    admission: Admission,
    pending: Pending,
    fast: FastPending,
    fast_log: Arc<std::sync::Mutex<FastLog>>,
    journal: Journal,
    upkeep: Upkeep,
    beat: Beat,
    /// The last batch was large: the next one lingers.
    busy: bool,
    /// When the schedule clock was last saved with a commit.
    clock_saved: Option<Instant>,
    losses: losses::Losses,
}

impl Writer {
    /// Opens the outbox at `cfg.path`, seeing its filesystem through `disk`.
    fn open(cfg: &StorageConfig, beat: Beat, disk: Box<dyn Disk>) -> Result<(Outbox, Writer), OutboxError> {
        let conn = super::schema::open(cfg)?;
        let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        let budget = Budget::new(cfg.max_bytes, page_size as u64);
        let mut store = Store::with_dedupe_window(conn, budget.dedupe_keys())?;
        store.apply_budget(&budget)?;
        crate::clock::start(store.saved_clock()?.as_ref());
        let (fast_log, delivered) = recover_fast_log(&mut store, &cfg.path)?;
        let fast_log = Arc::new(std::sync::Mutex::new(fast_log));
        let journal = recover_journal(&mut store, &cfg.path, &delivered, cfg.synchronous == Synchronous::Full)?;
        let keys = store.keys();
        let (tx, rx) = mpsc::channel();
        let (committed_tx, committed) = watch::channel(0u64);
        let new_work = Arc::new(Notify::new());
        let writer = Writer {
            store,
            rx,
            committed: committed_tx,
            new_work: new_work.clone(),
            budget,
            path: cfg.path.clone(),
            synchronous: cfg.synchronous,
            evict: cfg.when_full == WhenFull::DropOldest,
            disk,
            admission: Admission::new(),
            pending: Pending::default(),
            fast: FastPending::default(),
            fast_log: fast_log.clone(),
            journal,
            upkeep: Upkeep::new(cfg.audit_per_subscription),
            beat,
            busy: false,
            clock_saved: None,
            losses: losses::Losses::default(),
        };
        Ok((Outbox { tx, committed, new_work, keys, fast_log }, writer))
    }

    fn run(mut self) {
        let wedge = Wedge::from_env("writer");
        // The samples behind `status`'s daily rate, a minute apart; the first a minute in,
        // so that start-up's writes stay out of it. The loop wakes at least once a second.
        let mut sample_at = Instant::now() + super::disk::SAMPLE_EVERY;
        loop {
            if let Some(w) = &wedge {
                w.block_if_due();
            }
            if Instant::now() >= sample_at {
                super::disk::sample_written();
                sample_at = Instant::now() + super::disk::SAMPLE_EVERY;
            }
            for (loss, say) in self.losses.quiet(Instant::now()) {
                losses::log(loss, say, self.budget.max_bytes);
            }
            if self.pending.since.is_none() && self.admission.is_empty() {
                let sweeps = self.store.sweeps_due(sched_ms());
                if !sweeps.is_empty() {
                    sweeps.into_iter().for_each(|s| self.upkeep.sweep_later(s));
                    self.commit_pending(0);
                }
            }
            let first = match self.rx.recv_timeout(self.wait()) {
                Ok(c) => Some(c),
                Err(RecvTimeoutError::Timeout) => {
                    self.release_heap_after_burst();
                    None
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let batch = self.gather(first);
            if self.turn(batch) != Turn::Failing {
                self.beat.beat();
            }
        }
        // From here on the fast path's events stay unacked (the broker sends them again).
        self.take_handed_then(true);
        if !self.fast.done.is_empty() {
            // Written to the tables at stop (the fast log would give them back anyway).
            self.fast.waiters.push(tokio::sync::oneshot::channel().0);
        }
        // Messages held for company are committed too: acked now, not sent again.
        if !self.pending.writes.is_empty() || !self.fast.done.is_empty() || !self.admission.is_empty() {
            let take = self.ingest_to_take();
            self.commit_pending(take);
        }
        // What the last commits stored of the held journal's events need not come back.
        self.journal.write_retired();
        // The clock's last reading, so that a restart in this boot continues exactly.
        let clock = crate::clock::here();
        if let Err(e) = self.in_own_transaction(|store| store.save_clock(&clock)) {
            tracing::debug!(error = %e, "Could not save the schedule clock at stop.");
        }
        if !self.admission.is_empty() {
            tracing::warn!(
                held = self.admission.len(),
                "Stopping with unacked messages held for room; the broker sends them again."
            );
        }
        tracing::debug!("outbox writer stopped");
    }

    /// How long the loop may wait for the next command.
    fn wait(&self) -> Duration {
        let now = Instant::now();
        let mut wait = if self.admission.is_empty() {
            crate::health::BEAT
        } else if self.admission.blocked().is_some() {
            admission::RETRY_BLOCKED
        } else if let Some(until) = self.admission.unhurried_until(UNHURRIED_LINGER, UNHURRIED_BATCH) {
            until.saturating_duration_since(now)
        } else {
            Duration::ZERO
        };
        if let Some(until) = self.pending.until() {
            wait = wait.min(until.saturating_duration_since(now));
        }
        if let Some(at) = self.fast.flush_at() {
            wait = wait.min(at.saturating_duration_since(now));
        }
        wait
    }

    /// The first command and whatever else is waiting. Under load, lingers a moment so
    /// that one commit (one fsync, one rewrite of the hot pages) carries more work; when
    /// idle, commits at once for latency.
    fn gather(&mut self, first: Option<Command>) -> Vec<Command> {
        let mut batch: Vec<Command> = first.into_iter().collect();
        let mut bytes: usize = batch.iter().map(command_bytes).sum();
        let linger_until = self.busy.then(|| Instant::now() + LINGER);
        while batch.len() < MAX_BATCH && bytes < self.budget.batch_bytes() {
            let next = match linger_until.and_then(|until| until.checked_duration_since(Instant::now())) {
                Some(left) => self.rx.recv_timeout(left).ok(),
                None => self.rx.try_recv().ok(),
            };
            let Some(c) = next else { break };
            bytes += command_bytes(&c);
            batch.push(c);
        }
        self.busy = batch.len() >= BUSY_BATCH;
        batch
    }

    /// Sorts a batch (reads answered, writes and ingest queued) and commits unless the
    /// writes may wait for company.
    fn turn(&mut self, batch: Vec<Command>) -> Turn {
        // Before the batch: a flush asked for after an event was handed carries it.
        self.take_handed();
        let mut to_journal = Vec::new();
        for cmd in batch {
            match cmd {
                Command::Ingest { seq, inbound, linger } => self.admission.hold(seq, inbound, linger),
                Command::Persist { mut event, then } => {
                    // Its dedupe key was checked when the fast path took it.
                    event.dedupe_check = false;
                    self.admission.hold_persist(Box::new(Inbound::Event(*event)), then);
                }
                // Answered on their own, so that `status` works while a full disk stops
                // every write.
                Command::Read(read) => self.answer(read),
                Command::Write(write) => {
                    self.pending.since.get_or_insert_with(Instant::now);
                    self.pending.writes.push(write);
                }
                // Taken at the start of this turn, with whatever else was handed.
                Command::FastHanded => {}
                Command::Hurry => self.admission.hurry(),
                Command::Journal { events, reply } => to_journal.push((events, reply)),
                Command::FlushFast(reply) => self.fast.waiters.push(reply),
            }
        }
        self.journal_now(to_journal);
        self.journal.write_retired();
        let fast_due = self.fast.due(Instant::now());
        if self.pending.writes.is_empty() && self.admission.is_empty() && self.upkeep.to_sweep.is_empty() && !fast_due {
            return Turn::Progress;
        }
        // Results that may wait (a probe's, a far endpoint's) wait with unhurried ingest,
        // and an expiry sweep is never urgent: all ride along with the unhurried commit
        // (within `UNHURRIED_LINGER`) instead of forcing one each.
        if self.writes_may_linger()
            && !fast_due
            && self.admission.unhurried_until(UNHURRIED_LINGER, UNHURRIED_BATCH).is_some_and(|t| Instant::now() < t)
        {
            return Turn::Progress;
        }
        // Asked once per turn: at the cap the answer costs a look at the page count.
        let take = self.ingest_to_take();
        if self.writes_may_wait(take) {
            return Turn::Progress;
        }
        self.commit_pending(take)
    }

    /// Whether the pending writes (if any) may still wait for a commit to share.
    fn writes_may_linger(&self) -> bool {
        if self.pending.writes.is_empty() {
            return true;
        }
        let weight: usize = self.pending.writes.iter().map(Write::weight).sum();
        self.pending.writes.iter().all(Write::may_wait)
            && self.pending.until().is_some_and(|until| Instant::now() < until)
            && weight < RECORD_HOLD_MAX
    }

    /// Results nobody waits on are held for a shared commit while nothing urgent, no
    /// ingest ready (`take` is what admission lets in now), and the hold neither old nor
    /// large.
    fn writes_may_wait(&mut self, take: usize) -> bool {
        if self.pending.writes.is_empty() {
            return false;
        }
        self.writes_may_linger() && take == 0 && !self.fast.due(Instant::now())
    }

    /// Commits the pending writes and the first `take` held messages; tries again
    /// (asking admission anew) after making room, and gives the writes up after
    /// [`GIVE_UP_AFTER`] tries.
    fn commit_pending(&mut self, mut take: usize) -> Turn {
        let writes = std::mem::take(&mut self.pending.writes);
        self.pending.since = None;
        let mut backoff = Duration::from_millis(100);
        let mut failures = 0;
        loop {
            let e = match self.apply(&writes, take) {
                Ok((applied, new_work)) => {
                    let had_writes = !writes.is_empty();
                    writes.into_iter().zip(applied).for_each(|(w, a)| w.settle(a));
                    self.committed_fast();
                    self.committed_ingest(take, had_writes);
                    // Ingest that created nothing (a duplicate) still moved the watermark:
                    // a lane waiting to see it committed looks again, and may take the
                    // fast path again.
                    if new_work || take > 0 {
                        self.new_work.notify_one();
                    }
                    self.after_commit();
                    return Turn::Progress;
                }
                Err(e) => e,
            };
            self.store.rollback();
            failures += 1;
            if failures % REOPEN_AFTER == 0 {
                self.reopen();
            }
            if failures >= GIVE_UP_AFTER {
                return self.give_up(writes, &e);
            }
            if !self.on_failure(&e, take) {
                // Waiting on a full filesystem is a reported wait, not a stall.
                if self.admission.blocked() == Some(Blocked::FilesystemFull) {
                    self.beat.beat();
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
            take = self.ingest_to_take();
        }
    }

    /// How many held messages the next transaction takes. At the cap it first checks
    /// that usage is back under the mark: ingest never takes the room that delivery
    /// results need to commit.
    fn ingest_to_take(&mut self) -> usize {
        let now = Instant::now();
        if self.admission.is_empty() || !self.admission.retry_due(now) {
            return 0;
        }
        if self.admission.blocked() == Some(Blocked::AtCap) {
            if self.store.over(&self.budget, HIGH).unwrap_or(true) && !self.relieve(self.evict) {
                self.admission.block(Blocked::AtCap, now);
                return 0;
            }
            self.admit_again();
        }
        self.admission.to_take(now, self.filesystem_room(), self.budget.batch_bytes())
    }

    /// After a commit that took `taken` held messages: acks may go out, and a commit
    /// proves room again after a full filesystem.
    fn committed_ingest(&mut self, taken: usize, had_writes: bool) {
        let filesystem = self.admission.blocked() == Some(Blocked::FilesystemFull);
        if taken > 0 || (filesystem && had_writes && self.admission.is_empty()) {
            self.admit_again();
            if filesystem {
                let _ = self.store.checkpoint_truncate();
            }
        }
        let mut retired = Vec::new();
        let committed = self.admission.committed(taken, &mut retired);
        self.journal.retire(retired);
        if let Some(seq) = committed {
            self.committed.send_if_modified(|c| {
                let moved = seq > *c;
                *c = (*c).max(seq);
                moved
            });
        }
        if !self.admission.is_empty() {
            // More is held than one batch takes: come back for it without waiting.
            self.admission.retry_now(Instant::now());
        }
        self.upkeep.to_sweep.clear();
        self.upkeep.ingested_since_release += taken;
        if taken == 0 {
            self.release_heap_after_burst();
        }
    }

    /// Once a burst is over (a commit without ingest, or an idle beat), what it held —
    /// messages received ahead of their commits, the MQTT client's read buffers — is free,
    /// and glibc would keep it for the next burst. A flood of 100 000 messages left
    /// 42 MiB resident; 16 MiB once handed back.
    fn release_heap_after_burst(&mut self) {
        if self.admission.is_empty() && self.upkeep.ingested_since_release >= RELEASE_AFTER {
            crate::memory::release_free_heap();
            self.upkeep.ingested_since_release = 0;
        }
    }

    /// Keeps the files inside the budget and the tables tidy.
    fn after_commit(&mut self) {
        let expired = self.store.take_expired();
        self.count_loss(losses::Loss::Expired, expired);
        if self.store.over(&self.budget, HIGH).unwrap_or(false) && !self.relieve(self.evict) && !self.evict {
            self.block(Blocked::AtCap);
        }
        self.keep_the_filesystem_reserve();
        if self.admission.tight(Instant::now()) && self.disk.wal_bytes() > TIGHT_BYTES as u64 * 4 {
            let _ = self.store.checkpoint_truncate();
        }
        self.checkpoint_if_large();
        if Instant::now() >= self.upkeep.housekeeping_at {
            self.upkeep.housekeeping_at = Instant::now() + HOUSEKEEPING;
            let now = sched_ms();
            let keep_keys = self.budget.dedupe_keys();
            let result = self.in_own_transaction(|store| {
                while store.delete_finished(now - RETENTION_MS, 256)? > 0 {}
                store.trim_delivered_keys(keep_keys)?;
                store.shrink()
            });
            if let Err(e) = result {
                tracing::debug!(error = %e, "Housekeeping deferred.");
            }
        }
    }

    fn count_loss(&mut self, loss: losses::Loss, n: u64) {
        if let Some(say) = self.losses.count(loss, n, Instant::now()) {
            losses::log(loss, say, self.budget.max_bytes);
        }
    }

    /// Truncates the WAL to nothing once it has grown past a quarter of its share.
    fn checkpoint_if_large(&mut self) {
        if self.disk.wal_bytes() > self.budget.wal_bytes / 4
            && let Err(e) = self.store.checkpoint_truncate()
        {
            tracing::debug!(error = %e, "WAL checkpoint deferred.");
        }
    }
}

/// What an ingest command adds to a batch, for the batch's byte budget.
fn command_bytes(c: &Command) -> usize {
    match c {
        Command::Ingest { inbound, .. } => admission::weight(inbound),
        _ => 0,
    }
}
