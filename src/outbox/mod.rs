//! The outbox: the durable boundary between ingest and delivery, and the only SQL in the
//! agent.
//!
//! # Invariants
//!
//! 1. **Commit before ack.** An ingested message becomes an `events` row plus one
//!    `deliveries` row per matching subscription in a single transaction. Only when that
//!    transaction has committed does the writer advance the *commit watermark*; ingest
//!    acks an MQTT message only once the watermark has passed its sequence number. A
//!    crash before the commit loses nothing: the broker still holds the message.
//! 2. **One writer.** All writes go through one thread that owns the read-write
//!    connection. Commands that arrive while a transaction is running are applied in the
//!    next one (group commit: one fsync per batch, not per message). Delivery results
//!    nobody waits on may be held a few milliseconds for a commit they can share. Reads
//!    (due deliveries, stats) are answered at once from committed state, outside any
//!    transaction; the status socket opens its own read-only connections (WAL lets them
//!    run alongside).
//! 3. **Exactly one terminal state.** A delivery row moves `pending → pending …` (each
//!    failed attempt updates `attempts` and `next_attempt_ms`) and ends in exactly one of
//!    `delivered`, `failed`, `expired`, `evicted`, `superseded`. Every transition to a
//!    terminal state happens in the same transaction as its `counters` increment and its
//!    `attempts` (audit) row, and only from `pending` (`WHERE state = 'pending'`), so a
//!    result that arrives for a delivery that expired or was superseded meanwhile is
//!    audited but never counted twice.
//! 4. **In flight is not a state on disk.** The dispatcher tracks in memory what it is
//!    sending and what it has sent but not yet seen committed (a due read still shows
//!    those as `pending`; it skips them). After a crash every non-terminal row is simply
//!    `pending` again and is sent again with the same `delivery_id`: at least once, never
//!    silently dropped.
//! 5. **Nothing disappears silently.** Input that cannot become an event (not a JSON
//!    object, too large, a template that cannot render) is committed to `quarantine`
//!    with its reason before it is acked.
//!
//! # Row lifecycle
//!
//! ```text
//!  MQTT message ─┬─> events(seq, id, type, device_id, data)
//!                │     └─> deliveries(subscription, state = pending, next_attempt_ms = now)
//!                │            │ dispatcher: due(), send, record()
//!                │            ├─ 2xx ───────────────────────────> delivered
//!                │            ├─ retryable, budget left ────────> pending (next_attempt_ms += delay)
//!                │            ├─ unreachable endpoint ──────────> pending (budget kept)
//!                │            ├─ permanent / budget spent ──────> failed
//!                │            ├─ older than its max_age ────────> expired
//!                │            └─ newer collapsing event ────────> superseded
//!                └─> quarantine(topic, reason, payload prefix)   (bad input)
//! ```

mod dedupe;
pub mod disk;
mod fastlog;
mod journal;
mod lock;
pub mod quarantine;
pub mod query;
mod repair;
mod rows;
mod schema;
pub mod space;
mod stats;
mod store;
mod writer;

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::{Notify, oneshot, watch};

pub use crate::event::NewDelivery;
pub use dedupe::{SharedKeys, content_key};
pub use fastlog::FastLog;
pub use rows::{AttemptRecord, AuditRow, Due, DueBatch, FastDone, NextState, Terminal};
#[doc(hidden)]
pub use schema::create_at_version;
pub use schema::open;
pub use stats::{InMemory, Stats, SubscriptionStats};
pub use store::{Store, Stored};
pub use writer::WriterThread;

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("cannot prepare the outbox at {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("the outbox is corrupt: {0}")]
    Corrupt(String),
    #[error(
        "the outbox was written by a newer fleethook (schema version {found}; this build knows up to {known}): install that version again, or move the outbox aside to start empty"
    )]
    Newer { found: i64, known: i64 },
    #[error(
        "another fleethook (pid {pid}) uses the outbox {path}: one agent per outbox (give this one its own storage.path)"
    )]
    Locked { path: String, pid: String },
    #[error("the outbox cannot be used: {0}")]
    Mismatch(String),
    #[error("the outbox writer has stopped")]
    Closed,
    #[error("the outbox could not commit this (the disk is full or failing); it is not recorded")]
    Unanswered,
}

/// A message that matched a route and rendered into an event.
#[derive(Clone, Debug)]
pub struct NewEvent {
    pub id: String,
    pub event_type: String,
    pub device_id: String,
    pub created_ms: i64,
    /// When it was taken, on the schedule clock: its deliveries are first due then, so
    /// an event stored late (after a fast-path attempt) keeps its place in the queue.
    pub taken_ms: i64,
    /// Where it was taken on the boot's clock, if the wall clock was not good then.
    pub clock: Option<crate::clock::Taken>,
    pub topic: String,
    /// The payload: a JSON object, kept verbatim.
    pub data: String,
    pub priority: crate::event::Priority,
    /// A newer collapsing event of the same type and device supersedes a pending one.
    pub collapse: bool,
    /// Recognises a redelivery: the payload's own id, or a hash of topic and payload.
    pub dedupe_key: Option<i64>,
    /// Whether to look the key up (always for a route's `dedupe`, only DUP otherwise).
    pub dedupe_check: bool,
    /// A retained copy taken once per topic: its content key, checked against the last
    /// one taken on its topic.
    pub retained_key: Option<i64>,
    pub deliveries: Vec<NewDelivery>,
}

impl NewEvent {
    /// An event the agent makes itself (the heartbeat, `emit`, `test`): no topic, no
    /// dedupe, normal priority.
    pub fn local(
        event_type: &str,
        device_id: &str,
        data: &serde_json::Value,
        now_ms: i64,
        deliveries: Vec<NewDelivery>,
    ) -> NewEvent {
        NewEvent {
            id: crate::event::new_id(),
            event_type: event_type.to_string(),
            device_id: device_id.to_string(),
            created_ms: now_ms,
            taken_ms: crate::clock::sched_ms(),
            clock: crate::clock::taken_unless_synced(),
            topic: String::new(),
            data: data.to_string(),
            priority: crate::event::Priority::Normal,
            collapse: false,
            dedupe_key: None,
            dedupe_check: false,
            retained_key: None,
            deliveries,
        }
    }
}

/// Input that could not become an event.
#[derive(Clone, Debug)]
pub struct Quarantined {
    pub topic: String,
    pub reason: String,
    pub size: usize,
    /// The payload: whole, or for an oversize one its first [`QUARANTINE_KEEP`] bytes.
    pub payload: Vec<u8>,
}

pub const QUARANTINE_KEEP: usize = 4096;

/// What ingest hands the writer for one MQTT message.
#[derive(Clone, Debug)]
pub enum Inbound {
    Event(NewEvent),
    Quarantine(Quarantined),
    /// Nothing to store (no route, or no subscription wants it); still ordered for acks.
    Nothing,
}

/// A change a field tech asked for through the status socket.
#[derive(Clone, Debug)]
pub enum Repair {
    Retry {
        ids: Vec<String>,
        all_failed: bool,
        subscription: Option<String>,
    },
    Replay {
        subscription: String,
        since_ms: i64,
        until_ms: i64,
    },
    /// Take in a quarantined message as `event` (routed again with today's config) and
    /// delete its row; counts 1 if the row was still there.
    Release {
        seq: i64,
        event: Box<NewEvent>,
    },
    /// Delete the named quarantined messages, or every one with `None`.
    Purge {
        seqs: Option<Vec<i64>>,
    },
    /// A quarantined message failed again when released: keep it with why it fails now.
    Requarantine {
        seq: i64,
        reason: String,
    },
}

/// Why a subscription is held across restarts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HoldState {
    /// A field tech paused it.
    Paused,
    /// Its endpoint answered 410 Gone.
    Gone,
}

impl HoldState {
    pub fn as_str(self) -> &'static str {
        match self {
            HoldState::Paused => "paused",
            HoldState::Gone => "gone",
        }
    }

    /// Unknown states read as paused: held either way, and a field tech can resume it.
    pub fn parse(s: &str) -> HoldState {
        match s {
            "gone" => HoldState::Gone,
            _ => HoldState::Paused,
        }
    }
}

/// What a repair did: how many deliveries moved (or quarantined messages went).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Repaired {
    pub count: u64,
    /// A released message's deliveries (none when no subscription wants its event).
    pub delivery_ids: Vec<String>,
    /// A released message's event was stored already (its dedupe id was seen).
    pub duplicate: bool,
}

impl Repaired {
    pub fn moved(count: u64) -> Repaired {
        Repaired { count, ..Default::default() }
    }
}

/// What comes with a persisted event: its attempts so far, and whom to tell.
pub(crate) struct Persisting {
    pub records: Vec<AttemptRecord>,
    pub reply: oneshot::Sender<()>,
    /// Its entry in the held journal, retired once this commits.
    pub journaled: Option<u64>,
}

/// What the writer thread is asked, classified once by where it goes.
pub(crate) enum Command {
    /// One MQTT message, committed in receive order before its ack. `linger`: how long
    /// its commit may wait to share an fsync (no endpoint it goes to is reachable now, or
    /// each has a queue it joins); zero for none.
    Ingest { seq: u64, inbound: Box<Inbound>, linger: std::time::Duration },
    /// An event the fast path could not deliver from memory in time: stored with its
    /// deliveries (ids chosen at ingest) and the attempts already made, in one
    /// transaction, before its MQTT message is acked. Admitted like ingest (it waits
    /// for room at the cap), but outside the commit watermark: `reply` answers it.
    Persist { event: Box<NewEvent>, then: Box<Persisting> },
    /// Events the fast path holds past their ack (their endpoint answers later than
    /// `write_behind`): appended to the held journal and synced, one record for all that
    /// arrive together, before `reply` says whether they are durable.
    Journal { events: Vec<(u64, NewEvent)>, reply: oneshot::Sender<bool> },
    /// Answered at once from committed state, outside any transaction.
    Read(Read),
    /// Events delivered from memory wait in the fast log's hand-over (see
    /// `FastLog::append_and_hand`): take them now.
    FastHanded,
    /// Unhurried messages held for company are committed now: something behind them
    /// waits for their acks.
    Hurry,
    /// Write what the fast path delivered to the tables now (before `log` or `show`
    /// reads them); answered once committed.
    FlushFast(oneshot::Sender<()>),
    /// Applied in the next transaction and answered once it commits.
    Write(Write),
}

pub(crate) enum Read {
    Due {
        subscription: String,
        now_ms: i64,
        limit: usize,
        fifo: bool,
        skip: Vec<i64>,
        lowest: i64,
        reply: oneshot::Sender<DueBatch>,
    },
    Stats {
        reply: oneshot::Sender<Stats>,
    },
    Held {
        reply: oneshot::Sender<Vec<(String, HoldState)>>,
    },
    /// What the writer counts in memory (see [`InMemory`]).
    InMemory {
        reply: oneshot::Sender<InMemory>,
    },
}

pub(crate) enum Write {
    /// `urgent`: something waits on this commit (a FIFO lane); otherwise the writer may
    /// hold it a few milliseconds to share a commit with more work.
    Record {
        records: Vec<AttemptRecord>,
        urgent: bool,
        /// Results of a far or slow endpoint: they may wait as long as unhurried ingest
        /// for a commit to share (docs/decisions.md, "Holding the ack").
        lazy: bool,
        reply: oneshot::Sender<()>,
    },
    Repair {
        repair: Repair,
        reply: oneshot::Sender<Repaired>,
    },
    /// An event that did not come from MQTT (`emit`, `test`, the heartbeat).
    Emit {
        event: Box<NewEvent>,
        reply: oneshot::Sender<Vec<String>>,
    },
    /// Hold a subscription (`Some`) or release it (`None`).
    Hold {
        subscription: String,
        state: Option<HoldState>,
        reply: oneshot::Sender<()>,
    },
}

/// The async face of the outbox: cheap to clone, every call goes to the writer thread.
#[derive(Clone)]
pub struct Outbox {
    tx: std::sync::mpsc::Sender<Command>,
    committed: watch::Receiver<u64>,
    new_work: Arc<Notify>,
    keys: SharedKeys,
    fast_log: Arc<std::sync::Mutex<FastLog>>,
}

impl Outbox {
    /// Queues one ingested message. It is durable once [`Outbox::committed`] reaches `seq`.
    /// `seq` must increase by one per message, in receive order.
    pub fn ingest(&self, seq: u64, inbound: Inbound) -> Result<(), OutboxError> {
        self.tx
            .send(Command::Ingest { seq, inbound: Box::new(inbound), linger: std::time::Duration::ZERO })
            .map_err(|_| OutboxError::Closed)
    }

    /// As [`Outbox::ingest`], for a message nobody waits on at once (none of its endpoints
    /// is reachable now, or it joins queues being worked): its commit may wait up to
    /// `linger` (at most the writer's `UNHURRIED_LINGER`) to carry more messages.
    pub fn ingest_unhurried(&self, seq: u64, inbound: Inbound, linger: std::time::Duration) -> Result<(), OutboxError> {
        self.tx.send(Command::Ingest { seq, inbound: Box::new(inbound), linger }).map_err(|_| OutboxError::Closed)
    }

    /// Messages held unhurried are committed at once: a message behind them, delivered
    /// from memory, waits for their acks.
    pub fn hurry(&self) {
        let _ = self.tx.send(Command::Hurry);
    }

    /// The highest ingest sequence number whose transaction has committed.
    pub fn committed(&self) -> watch::Receiver<u64> {
        self.committed.clone()
    }

    /// Signalled after a commit that created deliveries.
    pub fn new_work(&self) -> Arc<Notify> {
        self.new_work.clone()
    }

    /// Returns up to `limit` due deliveries of a subscription, oldest first, as committed
    /// (a result still waiting for its commit shows its delivery as due: the dispatcher
    /// knows those and skips them). With `fifo`, only the head of the queue, if it is due.
    /// `skip` (sorted) names deliveries to leave out of the answer; a FIFO read ignores it.
    /// A parallel read leaves out priorities below `lowest` (`Priority as i64`: 0 high
    /// only, 2 everything). Answered at once, outside any transaction; the expiry sweep it
    /// asks for follows in the next one.
    pub async fn due(
        &self,
        subscription: &str,
        now_ms: i64,
        limit: usize,
        fifo: bool,
        skip: Vec<i64>,
        lowest: i64,
    ) -> Result<DueBatch, OutboxError> {
        let subscription = subscription.to_string();
        self.ask(|reply| Command::Read(Read::Due { subscription, now_ms, limit, fifo, skip, lowest, reply })).await
    }

    /// Sends a command and waits for its answer. An answer that never comes means the
    /// writer gave the command up (it could not commit) or stopped.
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, OutboxError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).map_err(|_| OutboxError::Closed)?;
        rx.await.map_err(|_| OutboxError::Unanswered)
    }

    /// Writes attempts' audit rows and moves their deliveries on, in one transaction;
    /// returns once committed. Unless `urgent`, that commit may wait a few milliseconds
    /// (the writer's `RECORD_LINGER`) to carry other work too: fewer commits, fewer pages
    /// written; `lazy` ones (a far endpoint's) up to seconds.
    pub async fn record(&self, records: Vec<AttemptRecord>, urgent: bool, lazy: bool) -> Result<(), OutboxError> {
        self.ask(|reply| Command::Write(Write::Record { records, urgent, lazy, reply })).await
    }

    /// Stores an event the fast path could not deliver in time, with the attempts made so
    /// far. The command is queued before this returns (persists keep their order); the
    /// receiver answers once it committed, and errs if it could not.
    /// `journaled` names its entry in the held journal, if it has one.
    pub fn persist(
        &self,
        event: NewEvent,
        records: Vec<AttemptRecord>,
        journaled: Option<u64>,
    ) -> oneshot::Receiver<()> {
        let (reply, rx) = oneshot::channel();
        // A writer gone drops the command, and with it `reply`: the receiver errs.
        let then = Box::new(Persisting { records, reply, journaled });
        let _ = self.tx.send(Command::Persist { event: Box::new(event), then });
        rx
    }

    /// Makes events the fast path holds durable before their ack, as one record of the
    /// held journal (see `journal`): each `(entry id, event)`; ids are the caller's, unique
    /// for the life of this outbox handle. The receiver says whether they are on disk
    /// (false, or an error: they are not, store them instead).
    pub fn journal(&self, events: Vec<(u64, NewEvent)>) -> oneshot::Receiver<bool> {
        let (reply, rx) = oneshot::channel();
        let _ = self.tx.send(Command::Journal { events, reply });
        rx
    }

    /// Keeps an event delivered from memory: appended to the fast log (in the page cache,
    /// so it survives the agent's death; not fsync'd) before this returns, written to the
    /// tables later. Call it before acking the event's message. `journaled` names its
    /// entry in the held journal, retired by this.
    pub fn delivered_fast(
        &self,
        key: Option<i64>,
        audits: Vec<crate::outbox::AuditRow>,
        journaled: Option<u64>,
    ) -> Result<(), OutboxError> {
        let mut log = self.fast_log.lock().unwrap_or_else(|e| e.into_inner());
        match log.append_and_hand(key, audits, journaled) {
            None => Err(OutboxError::Closed),
            Some(false) => Ok(()),
            Some(true) => self.tx.send(Command::FastHanded).map_err(|_| OutboxError::Closed),
        }
    }

    /// Writes what the fast path delivered to the tables; returns once committed.
    pub async fn flush_fast(&self) -> Result<(), OutboxError> {
        self.ask(Command::FlushFast).await
    }

    /// The dedupe window shared with the writer.
    pub fn keys(&self) -> &SharedKeys {
        &self.keys
    }

    /// Applies a repair; returns once it has committed.
    pub async fn repair(&self, repair: Repair) -> Result<Repaired, OutboxError> {
        self.ask(|reply| Command::Write(Write::Repair { repair, reply })).await
    }

    /// Queues an event that did not come from MQTT; returns its delivery ids once
    /// committed.
    pub async fn emit(&self, event: NewEvent) -> Result<Vec<String>, OutboxError> {
        self.ask(|reply| Command::Write(Write::Emit { event: Box::new(event), reply })).await
    }

    /// Holds a subscription across restarts (`Some`), or releases it (`None`).
    pub async fn hold(&self, subscription: &str, state: Option<HoldState>) -> Result<(), OutboxError> {
        let subscription = subscription.to_string();
        self.ask(|reply| Command::Write(Write::Hold { subscription, state, reply })).await
    }

    /// Subscriptions held across restarts, with their state.
    pub async fn held(&self) -> Result<Vec<(String, HoldState)>, OutboxError> {
        self.ask(|reply| Command::Read(Read::Held { reply })).await
    }

    /// What the writer counts in memory, for a reader of the tables to add.
    pub async fn in_memory(&self) -> Result<InMemory, OutboxError> {
        self.ask(|reply| Command::Read(Read::InMemory { reply })).await
    }

    pub async fn stats(&self) -> Result<Stats, OutboxError> {
        self.ask(|reply| Command::Read(Read::Stats { reply })).await
    }
}
