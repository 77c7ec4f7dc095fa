//! The writer thread: owns the read-write connection and group-commits every command that
//! is waiting into one transaction. SQLite calls block, so they live on a std thread of
//! their own rather than on the async runtime.

use std::collections::HashMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::{Notify, mpsc, watch};

use super::store::{Store, Stored};
use super::{Command, DueBatch, Inbound, Outbox, OutboxError, Repair, Repaired, Stats};
use crate::config::StorageConfig;
use crate::event::now_ms;

/// At most this many commands go into one transaction.
const MAX_BATCH: usize = 2048;
/// Trim a subscription's audit log after this many new rows.
const AUDIT_TRIM_EVERY: u64 = 256;

/// The running writer; join it after every [`Outbox`] clone is dropped.
pub struct WriterThread {
    handle: Option<JoinHandle<()>>,
}

impl WriterThread {
    /// Opens the outbox and starts its writer.
    pub fn start(cfg: &StorageConfig) -> Result<(Outbox, WriterThread), OutboxError> {
        let conn = super::schema::open(cfg)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let (committed_tx, committed) = watch::channel(0u64);
        let new_work = Arc::new(Notify::new());
        let writer = Writer {
            store: Store::new(conn),
            rx,
            committed: committed_tx,
            new_work: new_work.clone(),
            audit_per_subscription: cfg.audit_per_subscription,
            audit_added: HashMap::new(),
            batches: 0,
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
    rx: mpsc::UnboundedReceiver<Command>,
    committed: watch::Sender<u64>,
    new_work: Arc<Notify>,
    audit_per_subscription: u64,
    audit_added: HashMap<String, u64>,
    batches: u64,
}

/// A command's answer, held until its transaction commits.
enum Reply {
    None,
    Due(DueBatch),
    Recorded,
    Stats(Stats),
    Repaired(Repaired),
    Held(Vec<(String, String)>),
}

impl Writer {
    fn run(mut self) {
        while let Some(first) = self.rx.blocking_recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match self.rx.try_recv() {
                    Ok(c) => batch.push(c),
                    Err(_) => break,
                }
            }
            self.commit_batch(batch);
        }
        tracing::debug!("outbox writer stopped");
    }

    /// Applies and commits a batch, retrying until the disk takes it: a full disk or an
    /// I/O error must not lose acknowledged work, and nothing is acked before this
    /// returns.
    fn commit_batch(&mut self, batch: Vec<Command>) {
        let mut backoff = Duration::from_millis(100);
        let (replies, new_work) = loop {
            match self.apply(&batch) {
                Ok(r) => break r,
                Err(e) => {
                    self.store.rollback();
                    tracing::error!(error = %e, retry_in_ms = backoff.as_millis() as u64, commands = batch.len(),
                        "The outbox could not commit; ingest is not acked until it can (check free disk space).");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        };
        let mut max_seq = None;
        for (cmd, reply) in batch.into_iter().zip(replies) {
            match (cmd, reply) {
                (Command::Ingest { seq, .. }, _) => max_seq = Some(seq),
                (Command::Due { reply, .. }, Reply::Due(d)) => {
                    let _ = reply.send(d);
                }
                (Command::Record { reply, .. }, Reply::Recorded) => {
                    let _ = reply.send(());
                }
                (Command::Stats { reply }, Reply::Stats(s)) => {
                    let _ = reply.send(s);
                }
                (Command::Repair { reply, .. }, Reply::Repaired(r)) => {
                    let _ = reply.send(r);
                }
                (Command::Held { reply }, Reply::Held(h)) => {
                    let _ = reply.send(h);
                }
                _ => {}
            }
        }
        if let Some(seq) = max_seq {
            self.committed.send_replace(seq);
        }
        if new_work {
            self.new_work.notify_one();
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

    fn apply(&mut self, batch: &[Command]) -> rusqlite::Result<(Vec<Reply>, bool)> {
        let now = now_ms();
        self.store.begin()?;
        let mut replies = Vec::with_capacity(batch.len());
        let mut new_work = false;
        for cmd in batch {
            let reply = match cmd {
                Command::Ingest { inbound, .. } => {
                    if let Stored::Event { delivery_ids } = self.store.insert(inbound, now)? {
                        new_work |= !delivery_ids.is_empty();
                    }
                    Reply::None
                }
                Command::Due { subscription, now_ms, limit, fifo, .. } => {
                    Reply::Due(self.store.due(subscription, *now_ms, *limit, *fifo)?)
                }
                Command::Record { record, .. } => {
                    self.store.record(record)?;
                    let added = self.audit_added.entry(record.subscription.clone()).or_default();
                    *added += 1;
                    if *added % AUDIT_TRIM_EVERY == 0 {
                        self.store.trim_audit(&record.subscription, self.audit_per_subscription)?;
                    }
                    Reply::Recorded
                }
                Command::Stats { .. } => Reply::Stats(self.store.stats()?),
                Command::Held { .. } => Reply::Held(self.store.held()?),
                Command::Repair { repair, .. } => {
                    let done = self.repair(repair, now)?;
                    new_work |= done.count > 0 || !done.delivery_ids.is_empty();
                    Reply::Repaired(done)
                }
            };
            replies.push(reply);
        }
        self.batches += 1;
        if self.batches % 1024 == 0 {
            self.store.trim_dedupe(now)?;
        }
        self.store.commit()?;
        Ok((replies, new_work))
    }
}
