//! What a turn of the writer works with: the writes waiting for a commit to share, the
//! upkeep that rides along with commits, and how a turn went.

use std::collections::HashMap;
use std::time::Instant;

use super::{HOUSEKEEPING, RECORD_HOLD_LONG, RECORD_LINGER, UNHURRIED_LINGER};
use crate::outbox::{Repaired, Write};

/// Writes waiting for the next transaction, and until when they may wait for company.
#[derive(Default)]
pub(super) struct Pending {
    pub(super) writes: Vec<Write>,
    /// When the first of `writes` came.
    pub(super) since: Option<Instant>,
}

impl Pending {
    /// Until when the held writes may wait for a commit to share: results nobody waits
    /// on a few milliseconds; offline probes', and a far endpoint's while few are held (a
    /// robot's rates: each would otherwise cost a commit of its own), as long as
    /// unhurried ingest.
    pub(super) fn until(&self) -> Option<Instant> {
        let few = self.writes.iter().map(Write::weight).sum::<usize>() < RECORD_HOLD_LONG;
        let long = self.writes.iter().all(|w| w.unhurried() || (few && w.lazy()));
        let linger = if long { UNHURRIED_LINGER } else { RECORD_LINGER };
        self.since.map(|since| since + linger)
    }
}

/// Work that rides along with commits: expiry sweeps, audit trimming, housekeeping.
pub(super) struct Upkeep {
    pub(super) audit_per_subscription: u64,
    pub(super) audit_added: HashMap<String, u64>,
    pub(super) housekeeping_at: Instant,
    /// Subscriptions whose due deliveries were read since the last commit: their expiry
    /// sweep runs in the next transaction.
    pub(super) to_sweep: Vec<String>,
    /// Messages committed, or delivered from memory and handed over, since the heap was
    /// last handed back (see `release_heap_after_burst`).
    pub(super) ingested_since_release: usize,
}

impl Upkeep {
    pub(super) fn new(audit_per_subscription: u64) -> Upkeep {
        Upkeep {
            audit_per_subscription,
            audit_added: HashMap::new(),
            housekeeping_at: Instant::now() + HOUSEKEEPING,
            to_sweep: Vec::new(),
            ingested_since_release: 0,
        }
    }

    pub(super) fn sweep_later(&mut self, subscription: String) {
        if !self.to_sweep.contains(&subscription) {
            self.to_sweep.push(subscription);
        }
    }
}

/// What a write did, answered once its transaction commits.
pub(super) enum Applied {
    Recorded,
    Repaired(Repaired),
    Emitted(Vec<String>),
    Held,
}

/// How a turn of the loop went, for the watchdog.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Turn {
    /// Committed, or had nothing to commit.
    Progress,
    /// Waiting on the environment (a full filesystem), reported.
    Waiting,
    /// Commits keep failing.
    Failing,
}

impl Write {
    /// Results nobody waits on may be held for a shared commit; everything else goes now.
    pub(super) fn may_wait(&self) -> bool {
        matches!(self, Write::Record { urgent: false, .. })
    }

    /// Offline probes' results: nobody waits on them, and while the endpoint is away
    /// they may wait as long as unhurried ingest for a commit to share.
    pub(super) fn unhurried(&self) -> bool {
        match self {
            Write::Record { urgent: false, records, .. } => {
                records.iter().all(|r| matches!(r.next, crate::outbox::NextState::Retry { charge: false, .. }))
            }
            _ => false,
        }
    }

    /// A far or slow endpoint's results (see [`Write::Record`]).
    pub(super) fn lazy(&self) -> bool {
        matches!(self, Write::Record { urgent: false, lazy: true, .. })
    }

    pub(super) fn weight(&self) -> usize {
        match self {
            Write::Record { records, .. } => records.len(),
            _ => 1,
        }
    }

    pub(super) fn settle(self, applied: Applied) {
        match (self, applied) {
            (Write::Record { reply, .. }, Applied::Recorded) => drop(reply.send(())),
            (Write::Repair { reply, .. }, Applied::Repaired(r)) => drop(reply.send(r)),
            (Write::Emit { reply, .. }, Applied::Emitted(ids)) => drop(reply.send(ids)),
            (Write::Hold { reply, .. }, Applied::Held) => drop(reply.send(())),
            _ => {}
        }
    }
}
