//! Counts per subscription and for the whole outbox, as the status socket, `/metrics`
//! and the heartbeat show them.

use serde::Serialize;

/// Counts per subscription, as the status socket and the heartbeat show them.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct SubscriptionStats {
    pub name: String,
    /// Deliveries ever created; equals pending + delivered + failed + expired + evicted +
    /// superseded (in-flight deliveries are pending on disk).
    pub created: u64,
    pub pending: u64,
    pub delivered: u64,
    pub failed: u64,
    pub expired: u64,
    pub evicted: u64,
    pub superseded: u64,
    pub oldest_pending_ms: Option<i64>,
    /// When the earliest pending delivery is next due.
    pub next_attempt_ms: Option<i64>,
}

/// How many times each subscription is named, in order of first mention: the shape of
/// [`InMemory`]'s counts.
pub fn per_subscription<'a>(names: impl Iterator<Item = &'a str>) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = Vec::new();
    for name in names {
        match out.iter_mut().find(|(n, _)| n == name) {
            Some((_, count)) => *count += 1,
            None => out.push((name.to_string(), 1)),
        }
    }
    out
}

/// Counts the tables do not hold (yet).
#[derive(Clone, Debug, Default)]
pub struct InMemory {
    /// Deliveries from memory not yet in the tables, per subscription: they add to its
    /// `created` and `delivered`.
    pub fast: Vec<(String, u64)>,
    /// Deliveries of events acked on the strength of the held journal and still in
    /// memory, per subscription: they add to its `created` and `pending`.
    pub held: Vec<(String, u64)>,
    /// Redeliveries recognised since start.
    pub duplicates: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Stats {
    pub events: u64,
    pub quarantined: u64,
    pub duplicates: u64,
    pub subscriptions: Vec<SubscriptionStats>,
}

impl Stats {
    pub fn subscription(&self, name: &str) -> Option<&SubscriptionStats> {
        self.subscriptions.iter().find(|s| s.name == name)
    }

    /// Counts deliveries the fast path made that are not yet in the tables.
    pub fn add_fast(&mut self, delivered: &[(String, u64)]) {
        for (name, n) in delivered {
            let s = self.subscription_mut(name);
            s.created += n;
            s.delivered += n;
        }
    }

    /// Counts deliveries of events held in memory past their ack (see `journal`).
    pub fn add_held(&mut self, pending: &[(String, u64)]) {
        for (name, n) in pending {
            let s = self.subscription_mut(name);
            s.created += n;
            s.pending += n;
        }
    }

    fn subscription_mut(&mut self, name: &str) -> &mut SubscriptionStats {
        let at = match self.subscriptions.iter().position(|s| s.name == name) {
            Some(at) => at,
            None => {
                self.subscriptions.push(SubscriptionStats { name: name.to_string(), ..Default::default() });
                self.subscriptions.len() - 1
            }
        };
        &mut self.subscriptions[at]
    }
}
