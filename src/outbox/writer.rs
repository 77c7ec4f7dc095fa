//! The writer thread: owns the read-write connection and group-commits every command that
//! is waiting into one transaction. SQLite calls block, so they live on a std thread of
//! their own rather than on the async runtime.
//!
//! Ingest commands are committed strictly in receive order, because the commit watermark
//! (what ingest acks up to) is the last committed sequence number. When they cannot be
//! committed — the disk cap with `when_full = "backpressure"`, or a full filesystem —
//! they are *held*, unacked, while everything else (delivery results, reads) goes on; the
//! broker keeps the rest. Held ingest is retried until it fits.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};

use super::space::{Budget, HIGH, RETENTION_MS};
use super::store::{Store, Stored};
use super::{Command, Inbound, Outbox, OutboxError, Repair, Repaired};
use crate::config::{StorageConfig, Synchronous, WhenFull};
use crate::event::now_ms;
use crate::health::Beat;

mod room;

/// At most this many commands go into one transaction.
const MAX_BATCH: usize = 2048;
/// Trim a subscription's audit log after this many new rows.
const AUDIT_TRIM_EVERY: u64 = 256;
/// A batch this large means load: the next batch waits up to [`LINGER`] to grow.
const BUSY_BATCH: usize = 16;
const LINGER: Duration = Duration::from_millis(1);
/// After a full filesystem, transactions stay this small…
const TIGHT_BYTES: usize = 64 * 1024;
/// …for this long.
const TIGHT_FOR: Duration = Duration::from_secs(600);
/// How often finished rows past retention are deleted and free pages returned.
const HOUSEKEEPING: Duration = Duration::from_secs(30);
const FILESYSTEM_FULL: &str = "the filesystem is full";
/// After this many failed attempts in a row the writer continues on a fresh connection.
const REOPEN_AFTER: u32 = 3;
/// Delivery results nobody waits on are held this long for a commit they can share: each
/// commit rewrites whole pages (the tables' last pages, every index's), so fewer commits
/// mean fewer bytes written to the robot's flash.
const RECORD_LINGER: Duration = Duration::from_millis(10);
/// …or until this many are held.
const RECORD_HOLD_MAX: usize = 4096;

/// The running writer; join it after every [`Outbox`] clone is dropped.
pub struct WriterThread {
    handle: Option<JoinHandle<()>>,
}

impl WriterThread {
    /// Opens the outbox and starts its writer.
    pub fn start(cfg: &StorageConfig, beat: Beat) -> Result<(Outbox, WriterThread), OutboxError> {
        let conn = super::schema::open(cfg)?;
        let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        let budget = Budget::new(cfg.max_bytes, page_size as u64);
        let store = Store::with_dedupe_window(conn, budget.dedupe_keys())?;
        store.apply_budget(&budget)?;
        let (tx, rx) = mpsc::channel();
        let (committed_tx, committed) = watch::channel(0u64);
        let new_work = Arc::new(Notify::new());
        let writer = Writer {
            store,
            rx,
            committed: committed_tx,
            new_work: new_work.clone(),
            audit_per_subscription: cfg.audit_per_subscription,
            audit_added: HashMap::new(),
            budget,
            path: cfg.path.clone(),
            synchronous: cfg.synchronous,
            evict: cfg.when_full == WhenFull::DropOldest,
            held: VecDeque::new(),
            full: false,
            retry_held_at: Instant::now(),
            tight_until: None,
            housekeeping_at: Instant::now() + HOUSEKEEPING,
            beat,
            started: Instant::now(),
            busy: false,
            deferred: Vec::new(),
            deferred_until: None,
            to_sweep: Vec::new(),
        };
        let handle = std::thread::Builder::new()
            .name("outbox-writer".into())
            .spawn(move || writer.run())
            .map_err(|source| OutboxError::Io { path: "outbox writer thread".into(), source })?;
        Ok((Outbox { tx, committed, new_work }, WriterThread { handle: Some(handle) }))
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
    audit_per_subscription: u64,
    audit_added: HashMap<String, u64>,
    budget: Budget,
    path: PathBuf,
    synchronous: Synchronous,
    evict: bool,
    /// Ingest waiting for room, in receive order.
    held: VecDeque<Command>,
    /// Ingest is held until room appears…
    full: bool,
    /// …and is tried again at this time.
    retry_held_at: Instant,
    /// After the filesystem filled up: small transactions and an early-truncated WAL, so
    /// that the WAL cannot eat the space that came back before it is checkpointed.
    tight_until: Option<Instant>,
    housekeeping_at: Instant,
    beat: Beat,
    started: Instant,
    /// The last batch was large: the next one lingers.
    busy: bool,
    /// Delivery results held for a shared commit, and until when.
    deferred: Vec<Command>,
    deferred_until: Option<Instant>,
    /// Subscriptions whose due deliveries were read since the last commit: their expiry
    /// sweep runs in the next transaction.
    to_sweep: Vec<String>,
}

/// A command's answer, held until its transaction commits.
enum Reply {
    None,
    Recorded,
    Repaired(Repaired),
}

/// SQLITE_FULL, or an I/O error while the filesystem has (next to) no room left: a full
/// disk surfaces as either, depending on which file SQLite was growing.
fn is_full(e: &rusqlite::Error, path: &std::path::Path) -> bool {
    match e {
        rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DiskFull => true,
        rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::SystemIoFailure => {
            super::space::free_disk(path).is_some_and(|free| free < 256 * 1024)
        }
        _ => false,
    }
}

fn payload_bytes(c: &Command) -> usize {
    match c {
        Command::Ingest { inbound, .. } => match inbound.as_ref() {
            Inbound::Event(e) => e.data.len() + 200 * e.deliveries.len(),
            Inbound::Quarantine(q) => q.payload.len(),
            Inbound::Nothing => 0,
        },
        _ => 0,
    }
}

impl Writer {
    fn run(mut self) {
        loop {
            self.beat.beat();
            crate::health::wedge_if_asked("writer", self.started);
            // Idle, wake once a beat; with something held, look again soon.
            let mut wait = match (self.held.is_empty(), self.full) {
                (true, _) => crate::health::BEAT,
                (false, true) => Duration::from_millis(250),
                (false, false) => Duration::ZERO,
            };
            if let Some(until) = self.deferred_until {
                wait = wait.min(until.saturating_duration_since(Instant::now()));
            } else if self.held.is_empty() {
                let sweeps = self.store.sweeps_due(now_ms());
                if !sweeps.is_empty() {
                    sweeps.into_iter().for_each(|subscription| self.sweep_later(subscription));
                    self.commit_batch(Vec::new());
                }
            }
            let first = match self.rx.recv_timeout(wait) {
                Ok(c) => Some(c),
                Err(RecvTimeoutError::Timeout) if self.held.is_empty() && self.deferred.is_empty() => continue,
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut batch: Vec<Command> = first.into_iter().collect();
            let mut bytes: usize = batch.iter().map(payload_bytes).sum();
            // Under load, linger a moment so that one commit (one fsync, one rewrite of the
            // hot pages) carries more work; when idle, commit at once for latency.
            let linger_until = self.busy.then(|| Instant::now() + LINGER);
            while batch.len() < MAX_BATCH && bytes < self.budget.batch_bytes() {
                let next = match linger_until {
                    Some(until) => match until.checked_duration_since(Instant::now()) {
                        Some(left) => self.rx.recv_timeout(left).ok(),
                        None => self.rx.try_recv().ok(),
                    },
                    None => self.rx.try_recv().ok(),
                };
                match next {
                    Some(c) => {
                        bytes += payload_bytes(&c);
                        batch.push(c);
                    }
                    None => break,
                }
            }
            self.busy = batch.len() >= BUSY_BATCH;
            self.commit_batch(batch);
        }
        if !self.deferred.is_empty() {
            self.deferred_until = Some(Instant::now());
            self.commit_batch(Vec::new());
        }
        if !self.held.is_empty() {
            tracing::warn!(
                held = self.held.len(),
                "Stopping with unacked messages held for room; the broker sends them again."
            );
        }
        tracing::debug!("outbox writer stopped");
    }

    fn set_full(&mut self, full: bool, why: &str) {
        if full {
            if !self.full && why == FILESYSTEM_FULL {
                tracing::error!(
                    held = self.held.len(),
                    free_bytes = super::space::free_disk(&self.path),
                    path = %self.path.display(),
                    reason = why,
                    "The filesystem holding the outbox is full: MQTT messages are not acked (the broker holds them) and delivery results wait until there is room."
                );
            } else if !self.full {
                tracing::warn!(
                    held = self.held.len(),
                    reason = why,
                    "The outbox is full: MQTT messages are not acked (the broker holds them) until there is room."
                );
            }
            self.retry_held_at = Instant::now() + Duration::from_millis(250);
        } else if self.full {
            tracing::info!("The outbox has room again; ingest resumes.");
        }
        self.full = full;
    }

    /// Runs `work` in a transaction of its own: committed if it succeeds, rolled back if
    /// anything fails.
    fn in_own_transaction<T>(&mut self, work: impl FnOnce(&mut Store) -> rusqlite::Result<T>) -> rusqlite::Result<T> {
        let result = self.store.begin().and_then(|()| work(&mut self.store)).and_then(|done| {
            self.store.commit()?;
            Ok(done)
        });
        if result.is_err() {
            self.store.rollback();
        }
        result
    }

    /// How many held ingest commands the next transaction takes: all that fit the batch
    /// budget, or a few while finding out whether a full disk has room again.
    fn held_to_take(&self) -> usize {
        if self.full && Instant::now() < self.retry_held_at {
            return 0;
        }
        if self.held.is_empty() {
            return 0;
        }
        // A commit writes about three times its payload to the WAL and then, at the
        // checkpoint, into the database: a batch fits what is above the reserve.
        let room = self.filesystem_room().map_or(usize::MAX, |room| (room / 4) as usize);
        if room == 0 {
            return 0;
        }
        let limit = if self.full { 16 } else { usize::MAX };
        let max_bytes = if self.tight() { TIGHT_BYTES } else { self.budget.batch_bytes() }.min(room);
        let mut bytes = 0;
        let mut n = 0;
        for c in self.held.iter().take(limit) {
            bytes += payload_bytes(c);
            n += 1;
            if bytes >= max_bytes {
                break;
            }
        }
        n
    }

    fn tight(&self) -> bool {
        self.tight_until.is_some_and(|t| Instant::now() < t)
    }

    fn commit_batch(&mut self, batch: Vec<Command>) {
        let (ingest, others): (Vec<Command>, Vec<Command>) =
            batch.into_iter().partition(|c| matches!(c, Command::Ingest { .. }));
        self.held.extend(ingest);
        // Reads are answered on their own, so that `status` works while a full disk
        // stops every write.
        let (reads, others): (Vec<Command>, Vec<Command>) = others
            .into_iter()
            .partition(|c| matches!(c, Command::Stats { .. } | Command::Held { .. } | Command::Due { .. }));
        self.answer(reads);
        if self.defer(others) {
            return;
        }
        let others = std::mem::take(&mut self.deferred);
        self.deferred_until = None;
        let mut backoff = Duration::from_millis(100);
        let mut failures = 0;
        let mut disk_was_full = false;
        let (replies, taken, new_work) = loop {
            let take = self.held_to_take();
            let e = match self.apply(&others, take) {
                Ok((replies, new_work)) => break (replies, take, new_work),
                Err(e) => e,
            };
            self.store.rollback();
            failures += 1;
            if failures % REOPEN_AFTER == 0 {
                self.reopen();
            }
            let full = is_full(&e, &self.path);
            if full {
                // Our own cap (pages used near max_page_count) is made room for;
                // a full filesystem is waited out, never answered by evicting.
                let at_cap = self.store.over(&self.budget, HIGH).unwrap_or(false);
                if at_cap && take > 0 && self.relieve(self.evict) {
                    continue;
                }
                disk_was_full |= !at_cap;
                let why = if at_cap { "storage.max_bytes reached" } else { FILESYSTEM_FULL };
                self.set_full(true, why);
                if !at_cap {
                    self.tight_until = Some(Instant::now() + TIGHT_FOR);
                }
                // Move what the WAL holds into the database and give its space back.
                let _ = self.store.checkpoint_truncate();
                if take > 0 {
                    // Ingest waits (unacked); the rest is tried again without it.
                    continue;
                }
            } else {
                tracing::error!(error = %e, retry_in_ms = backoff.as_millis() as u64, commands = others.len() + take,
                    free_bytes = super::space::free_disk(&self.path), wal_bytes = super::space::wal_bytes(&self.path),
                    "The outbox cannot commit; nothing is acked until it can.");
                let _ = self.store.checkpoint_truncate();
            }
            std::thread::sleep(backoff);
            self.beat.beat();
            // A full disk is checked often: delivery results wait on it.
            let most = if full { Duration::from_secs(1) } else { Duration::from_secs(5) };
            backoff = (backoff * 2).min(most);
        };
        for (cmd, reply) in others.into_iter().zip(replies) {
            match (cmd, reply) {
                (Command::Record { reply, .. }, Reply::Recorded) => drop(reply.send(())),
                (Command::Repair { reply, .. }, Reply::Repaired(r)) => drop(reply.send(r)),
                _ => {}
            }
        }
        // Room again: proven by held ingest committing, or, with nothing held, by the
        // write that had failed on the full filesystem.
        if self.full && (taken > 0 || (disk_was_full && self.held.is_empty())) {
            self.set_full(false, "");
            let _ = self.store.checkpoint_truncate();
        }
        if taken < self.held.len() && !self.full {
            // More is held than one batch takes: come back for it without waiting.
            self.retry_held_at = Instant::now();
        }
        let mut last = None;
        for cmd in self.held.drain(..taken) {
            if let Command::Ingest { seq, .. } = cmd {
                last = Some(seq);
            }
        }
        if let Some(seq) = last {
            self.committed.send_replace(seq);
        }
        self.to_sweep.clear();
        if new_work {
            self.new_work.notify_one();
        }
        self.after_commit();
    }

    /// Holds delivery results nobody waits on for a shared commit; says whether this
    /// batch may wait (nothing urgent, no ingest ready, the hold neither old nor large).
    fn defer(&mut self, others: Vec<Command>) -> bool {
        if others.is_empty() && self.deferred.is_empty() {
            return false;
        }
        let urgent = others.iter().any(|c| !matches!(c, Command::Record { urgent: false, .. }));
        self.deferred.extend(others);
        let until = *self.deferred_until.get_or_insert_with(|| Instant::now() + RECORD_LINGER);
        let held: usize =
            self.deferred.iter().map(|c| if let Command::Record { records, .. } = c { records.len() } else { 1 }).sum();
        !urgent && self.held_to_take() == 0 && Instant::now() < until && held < RECORD_HOLD_MAX
    }

    /// Has the next transaction sweep `subscription` for expired deliveries.
    fn sweep_later(&mut self, subscription: String) {
        if !self.to_sweep.contains(&subscription) {
            self.to_sweep.push(subscription);
        }
    }

    /// Answers read-only commands outside any write transaction. One that fails gets no
    /// answer: its caller sees the outbox as unavailable.
    fn answer(&mut self, reads: Vec<Command>) {
        for cmd in reads {
            match cmd {
                Command::Due { subscription, now_ms, limit, fifo, skip, reply } => {
                    match self.store.due_rows(&subscription, now_ms, limit, fifo, &skip) {
                        Ok(d) => drop(reply.send(d)),
                        Err(e) => tracing::debug!(error = %e, "Could not read due deliveries."),
                    }
                    self.sweep_later(subscription);
                }
                Command::Stats { reply } => match self.store.stats() {
                    Ok(s) => drop(reply.send(s)),
                    Err(e) => tracing::debug!(error = %e, "Could not read the outbox stats."),
                },
                Command::Held { reply } => match self.store.held() {
                    Ok(h) => drop(reply.send(h)),
                    Err(e) => tracing::debug!(error = %e, "Could not read the held subscriptions."),
                },
                _ => {}
            }
        }
    }

    /// Continues on a fresh connection: SQLite's pager can keep an I/O error (a full
    /// disk) after its cause is gone, until the connection is closed.
    fn reopen(&mut self) {
        match super::schema::reopen(&self.path, self.synchronous) {
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

    /// Keeps the files inside the budget and the tables tidy.
    fn after_commit(&mut self) {
        if self.store.over(&self.budget, HIGH).unwrap_or(false) && !self.relieve(self.evict) && !self.evict {
            self.set_full(true, "storage.max_bytes reached");
        }
        self.keep_the_filesystem_reserve();
        if self.tight() && super::space::wal_bytes(&self.path) > TIGHT_BYTES as u64 * 4 {
            let _ = self.store.checkpoint_truncate();
        }
        if let Err(e) = self.store.checkpoint_if_large(&self.path, &self.budget) {
            tracing::debug!(error = %e, "WAL checkpoint deferred.");
        }
        if Instant::now() >= self.housekeeping_at {
            self.housekeeping_at = Instant::now() + HOUSEKEEPING;
            let now = now_ms();
            let result = self.in_own_transaction(|store| {
                while store.delete_finished(now - RETENTION_MS, 256)? > 0 {}
                store.shrink()
            });
            if let Err(e) = result {
                tracing::debug!(error = %e, "Housekeeping deferred.");
            }
        }
    }

    fn repair(&mut self, repair: &Repair, now: i64) -> rusqlite::Result<Repaired> {
        let count = |count| Repaired { count, delivery_ids: Vec::new() };
        Ok(match repair {
            Repair::Retry { ids, all_failed, subscription } => {
                count(self.store.retry(ids, *all_failed, subscription.as_deref(), now)?)
            }
            Repair::Replay { subscription, since_ms, until_ms } => {
                count(self.store.replay(subscription, *since_ms, *until_ms, now)?)
            }
            Repair::Hold { subscription, state } => {
                self.store.hold(subscription, state.as_deref(), now)?;
                count(1)
            }
            Repair::Emit(event) => match self.store.insert(&Inbound::Event((**event).clone()), now)? {
                Stored::Event { delivery_ids } => Repaired { count: delivery_ids.len() as u64, delivery_ids },
                _ => count(0),
            },
        })
    }

    /// Applies `others` and the first `take` held ingest commands in one transaction.
    fn apply(&mut self, others: &[Command], take: usize) -> rusqlite::Result<(Vec<Reply>, bool)> {
        let now = now_ms();
        self.store.begin()?;
        for subscription in &self.to_sweep {
            self.store.sweep_expired(subscription, now)?;
        }
        let mut replies = Vec::with_capacity(others.len());
        let mut new_work = false;
        for cmd in others {
            let reply = match cmd {
                // Ingest is taken from `held` below; reads were answered before.
                Command::Ingest { .. } | Command::Stats { .. } | Command::Held { .. } | Command::Due { .. } => {
                    Reply::None
                }
                Command::Record { records, .. } => {
                    for record in records {
                        self.store.record(record)?;
                        let added = self.audit_added.entry(record.subscription.clone()).or_default();
                        *added += 1;
                        if *added % AUDIT_TRIM_EVERY == 0 {
                            self.store.trim_audit(&record.subscription, self.audit_per_subscription)?;
                        }
                    }
                    Reply::Recorded
                }
                Command::Repair { repair, .. } => {
                    let done = self.repair(repair, now)?;
                    new_work |= done.count > 0 || !done.delivery_ids.is_empty();
                    Reply::Repaired(done)
                }
            };
            replies.push(reply);
        }
        let held: Vec<&Command> = self.held.iter().take(take).collect();
        for cmd in held {
            if let Command::Ingest { inbound, .. } = cmd
                && let Stored::Event { delivery_ids } = self.store.insert(inbound, now)?
            {
                new_work |= !delivery_ids.is_empty();
            }
        }
        self.store.commit()?;
        Ok((replies, new_work))
    }
}
