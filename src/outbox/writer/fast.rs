//! The writer's side of the fast path (see `fastlog`): what was delivered from memory
//! waits here, already in the fast log, until a commit carries it to the tables.

use std::time::{Duration, Instant};

use super::super::fastlog::{self, FastLog};
use super::super::journal::Journal;
use super::super::store::{Store, Stored};
use super::super::{FastDone, NewEvent, OutboxError};
use super::Writer;

/// Events to append to the held journal, and whom to tell whether they are on disk.
pub(super) type ToJournal = (Vec<(u64, NewEvent)>, tokio::sync::oneshot::Sender<bool>);

/// What the fast path delivered is written to the tables at the latest after this long…
/// (docs/decisions.md: "The fast path's writes"): the fast log holds it meanwhile.
const FAST_FLUSH_AGE: Duration = Duration::from_secs(300);
/// …or once this many events are waiting, or with any other commit.
const FAST_FLUSH_EVENTS: usize = 2048;

/// What the fast path delivered, waiting to be written to the tables (it is in the fast
/// log already).
#[derive(Default)]
pub(super) struct FastPending {
    pub(super) done: Vec<FastDone>,
    /// How many of `done` the open transaction carries (None: it carries none, and
    /// answers no waiter).
    pub(super) carried: Option<usize>,
    pub(super) since: Option<Instant>,
    /// `log`/`show` asked for a flush and wait for it.
    pub(super) waiters: Vec<tokio::sync::oneshot::Sender<()>>,
}

impl FastPending {
    pub(super) fn push(&mut self, done: FastDone) {
        self.since.get_or_insert_with(Instant::now);
        self.done.push(done);
    }

    /// Whether it must be written now rather than ride along with a later commit.
    pub(super) fn due(&self, now: Instant) -> bool {
        !self.waiters.is_empty()
            || self.done.len() >= FAST_FLUSH_EVENTS
            || self.since.is_some_and(|t| now.duration_since(t) >= FAST_FLUSH_AGE)
    }

    pub(super) fn flush_at(&self) -> Option<Instant> {
        if !self.waiters.is_empty() {
            return Some(Instant::now());
        }
        self.since.map(|t| t + FAST_FLUSH_AGE)
    }
}

impl Writer {
    /// Takes what the fast path handed over since the last look (see
    /// `FastLog::append_and_hand`); with `last`, also says no more will be taken.
    pub(super) fn take_handed_then(&mut self, last: bool) {
        let handed = {
            let mut log = self.fast_log.lock().unwrap_or_else(|e| e.into_inner());
            if last {
                log.writer_stopped();
            }
            log.take_handed()
        };
        self.upkeep.ingested_since_release += handed.len();
        self.journal.retire(handed.iter().filter_map(|d| d.j));
        for done in handed {
            self.fast.push(done);
        }
    }

    pub(super) fn take_handed(&mut self) {
        self.take_handed_then(false);
    }

    /// The fast path's events are in the tables: the log may forget them, and whoever
    /// asked for the flush hears so.
    pub(super) fn committed_fast(&mut self) {
        let Some(carried) = self.fast.carried.take() else { return };
        // Only what the commit carried: more may have arrived since (none here, as the
        // writer is one thread, but the count says what was written).
        let done: Vec<FastDone> = self.fast.done.drain(..carried.min(self.fast.done.len())).collect();
        if let Some(last) = done.last().map(|d| d.l) {
            self.fast_log.lock().unwrap_or_else(|e| e.into_inner()).applied(last);
        }
        self.fast.since = if self.fast.done.is_empty() { None } else { Some(Instant::now()) };
        for waiter in self.fast.waiters.drain(..) {
            let _ = waiter.send(());
        }
    }

    /// Appends what the fast path holds past its ack to the held journal, as one synced
    /// record, and says so to each asker (false: not durable, store it instead).
    pub(super) fn journal_now(&mut self, asked: Vec<ToJournal>) {
        if asked.is_empty() {
            return;
        }
        let events: Vec<(u64, &NewEvent)> =
            asked.iter().flat_map(|(events, _)| events.iter().map(|(j, e)| (*j, e))).collect();
        let ok = match self.journal.append(&events) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, events = events.len(),
                    "Cannot write the held journal; these events are stored in the outbox instead.");
                false
            }
        };
        for (_, reply) in asked {
            let _ = reply.send(ok);
        }
    }

    /// Deliveries from memory not yet in the tables, per subscription.
    pub(super) fn fast_pending(&self) -> Vec<(String, u64)> {
        super::super::stats::per_subscription(
            self.fast.done.iter().flat_map(|d| &d.audits).map(|a| a.subscription.as_str()),
        )
    }
}

/// Copies into the tables what the fast log holds beyond them (the agent was killed, or
/// the power cut, before the writer's last flush), then starts the log afresh. Also
/// returns the held journal's entries those deliveries retired.
pub(super) fn recover_fast_log(
    store: &mut Store,
    db: &std::path::Path,
) -> Result<(FastLog, std::collections::HashSet<u64>), OutboxError> {
    let path = fastlog::path_for(db);
    let applied = store.fast_applied()?;
    let entries = fastlog::read(&path, applied);
    let last = entries.last().map_or(applied, |d| d.l);
    if !entries.is_empty() {
        store.begin()?;
        let copied = entries
            .iter()
            .try_for_each(|d| store.record_fast(d))
            .and_then(|()| store.set_fast_applied(last))
            .and_then(|()| store.commit());
        if let Err(e) = copied {
            store.rollback();
            return Err(e.into());
        }
        // The window was filled before these reached the tables.
        store.keys().lock().recent.extend(entries.iter().filter_map(|d| d.key));
        tracing::info!(events = entries.len(), "Recovered the fast path's deliveries from its log.");
    }
    let retired = entries.iter().filter_map(|d| d.j).collect();
    Ok((FastLog::open(path, last), retired))
}

/// Stores what the held journal kept of events acked but neither delivered nor stored
/// when the agent stopped (`delivered`: entries the fast log's recovered lines retired),
/// each with every delivery pending, unless its event is stored already; then starts
/// the journal afresh.
pub(super) fn recover_journal(
    store: &mut Store,
    db: &std::path::Path,
    delivered: &std::collections::HashSet<u64>,
    sync: bool,
) -> Result<Journal, OutboxError> {
    let (mut journal, recovered) = Journal::open(db, sync);
    if recovered.is_empty() {
        // Nothing live: the files may stay as they are, and the first append starts the
        // next generation (no page written at every start).
        return Ok(journal);
    }
    let recovered: Vec<_> = recovered.into_iter().filter(|r| !delivered.contains(&r.j)).collect();
    if !recovered.is_empty() {
        let now = crate::clock::sched_ms();
        store.begin()?;
        let stored = recovered.iter().try_fold(0usize, |n, r| {
            let inbound = crate::outbox::Inbound::Event(r.event.clone());
            Ok::<_, rusqlite::Error>(n + usize::from(matches!(store.insert(&inbound, now)?, Stored::Event { .. })))
        });
        let stored = match stored.and_then(|n| store.commit().map(|()| n)) {
            Ok(n) => n,
            Err(e) => {
                store.rollback();
                return Err(e.into());
            }
        };
        tracing::info!(
            entries = recovered.len(),
            stored,
            "Stored the events the held journal kept (acked, not yet delivered when the agent stopped)."
        );
    }
    // What was live is stored, or retired by the fast log that was just emptied: a new
    // generation leaves it behind.
    if let Err(e) = journal.begin() {
        // A full filesystem at boot must not keep the agent down: held events are stored
        // in the tables until an append finds room (it starts the generation then).
        tracing::warn!(error = %e, path = %super::super::journal::paths_for(db)[0].display(),
            "Cannot start the held journal; events that wait for a far answer are stored in the outbox until it can.");
    }
    Ok(journal)
}
