//! Admission: which ingested messages the next transaction may take. Ingest commits in
//! receive order (the ack watermark is the last committed sequence number), so what cannot
//! be committed yet is *held*, unacked, in order, and the broker keeps the rest. Three
//! things hold it: our own cap (`storage.max_bytes` with `when_full = "backpressure"`), a
//! full filesystem, and a filesystem down to the reserve that delivery results need.
//! Pure state: the writer tells it what the disk says and acts on its answers.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::super::{Inbound, NewEvent, Persisting};

/// How often a blocked admission looks again whether there is room.
pub const RETRY_BLOCKED: Duration = Duration::from_millis(250);
/// While finding out whether a full filesystem has room again, take this many at most.
const PROBE_TAKE: usize = 16;
/// After a full filesystem, transactions stay this small…
pub const TIGHT_BYTES: usize = 64 * 1024;
/// …for this long, so the WAL cannot eat the space that came back before a checkpoint.
const TIGHT_FOR: Duration = Duration::from_secs(600);

/// Why ingest is held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blocked {
    /// `storage.max_bytes` is reached and nothing may be evicted (backpressure). Ingest
    /// stops short of the cap, so delivery results always have room to commit.
    AtCap,
    /// A write failed for want of space on the filesystem.
    FilesystemFull,
    /// The filesystem is down to the reserve that results, deletes and checkpoints need.
    NearlyFull,
}

impl Blocked {
    pub fn reason(self) -> &'static str {
        match self {
            Blocked::AtCap => "storage.max_bytes reached",
            Blocked::FilesystemFull => "the filesystem is full",
            Blocked::NearlyFull => "the filesystem is nearly full",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Open,
    Blocked { why: Blocked, retry_at: Instant },
}

/// Unhurried messages held before a pause in their arrival ends the linger…
const QUIET_AFTER: usize = 4;
/// …and the shortest pause that does, for messages of unreachable endpoints…
const QUIET_MIN: Duration = Duration::from_millis(20);
/// …and for messages that joined a queue being worked (the dispatcher hurries those when
/// it knows the window is full: this catches a broker whose window is smaller than
/// configured, without taking the end of a burst for it).
const QUIET_MIN_SHORT: Duration = Duration::from_millis(100);

/// One held message.
struct Held {
    /// Zero for a persisted fast-path event: it is not under the commit watermark.
    seq: u64,
    inbound: Box<Inbound>,
    bytes: usize,
    then: Option<Box<Persisting>>,
    /// How long its commit may wait to share an fsync: none of its endpoints is reachable,
    /// or each has a queue it joins (zero: someone waits on it).
    linger: Duration,
    at: Instant,
}

/// What a held message adds to a transaction, roughly: its payload plus a delivery row
/// and index entries per subscription.
pub fn weight(inbound: &Inbound) -> usize {
    match inbound {
        Inbound::Event(NewEvent { data, deliveries, .. }) => data.len() + 200 * deliveries.len(),
        Inbound::Quarantine(q) => q.payload.len(),
        Inbound::Nothing => 0,
    }
}

pub struct Admission {
    held: VecDeque<Held>,
    state: State,
    tight_until: Option<Instant>,
}

impl Admission {
    pub fn new() -> Admission {
        Admission { held: VecDeque::new(), state: State::Open, tight_until: None }
    }

    pub fn hold(&mut self, seq: u64, inbound: Box<Inbound>, linger: Duration) {
        let bytes = weight(&inbound);
        self.held.push_back(Held { seq, inbound, bytes, then: None, linger, at: Instant::now() });
    }

    /// Until when the next commit may wait for more messages: only while everything held
    /// is unhurried, fewer than `max` are held, and none has waited its own linger (at most
    /// `cap`). With a few held, it also ends once none has come for four times their mean
    /// gap: the broker's in-flight window is full, and it sends no more until these are
    /// acked (mosquitto's default window is 20 messages; a robot image's should be larger).
    pub fn unhurried_until(&self, cap: Duration, max: usize) -> Option<Instant> {
        let (oldest, newest) = (self.held.front()?, self.held.back()?);
        if self.held.len() >= max || self.held.iter().any(|h| h.linger.is_zero()) {
            return None;
        }
        let until = self.held.iter().map(|h| h.at + h.linger.min(cap)).min()?;
        if self.held.len() < QUIET_AFTER {
            return Some(until);
        }
        let mean_gap = newest.at.duration_since(oldest.at) / (self.held.len() as u32 - 1);
        let quiet = if self.held.iter().all(|h| h.linger >= cap) { QUIET_MIN } else { QUIET_MIN_SHORT };
        Some(until.min(newest.at + (mean_gap * 4).max(quiet)))
    }

    /// Everything held is committed at the next turn: a message behind it waits.
    pub fn hurry(&mut self) {
        self.held.iter_mut().for_each(|h| h.linger = Duration::ZERO);
    }

    /// Holds an event of the fast path to be stored; its reply is answered at commit.
    pub fn hold_persist(&mut self, inbound: Box<Inbound>, then: Box<Persisting>) {
        let bytes = weight(&inbound);
        self.held.push_back(Held {
            seq: 0,
            inbound,
            bytes,
            then: Some(then),
            linger: Duration::ZERO,
            at: Instant::now(),
        });
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    pub fn blocked(&self) -> Option<Blocked> {
        match self.state {
            State::Open => None,
            State::Blocked { why, .. } => Some(why),
        }
    }

    /// Whether a blocked admission is due to look for room again.
    pub fn retry_due(&self, now: Instant) -> bool {
        match self.state {
            State::Open => true,
            State::Blocked { retry_at, .. } => now >= retry_at,
        }
    }

    /// Blocks ingest for `why`; returns true if it was not blocked for that reason
    /// before (the writer logs transitions, not every retry).
    pub fn block(&mut self, why: Blocked, now: Instant) -> bool {
        let changed = self.blocked() != Some(why);
        self.state = State::Blocked { why, retry_at: now + RETRY_BLOCKED };
        if why == Blocked::FilesystemFull {
            self.tight_until = Some(now + TIGHT_FOR);
        }
        changed
    }

    /// Room again; returns the reason it had been blocked for, if it was.
    pub fn open(&mut self) -> Option<Blocked> {
        let was = self.blocked();
        self.state = State::Open;
        was
    }

    /// Small transactions for a while after the filesystem was full.
    pub fn tight(&self, now: Instant) -> bool {
        self.tight_until.is_some_and(|t| now < t)
    }

    /// How many held messages the next transaction takes: those that fit `max_bytes`
    /// (or the tight limit), none while blocked and not due to look again, and a few
    /// while finding out whether a full filesystem has room again. `room` is the space
    /// above the filesystem reserve, if known.
    pub fn to_take(&self, now: Instant, room: Option<u64>, max_bytes: usize) -> usize {
        if self.held.is_empty() || !self.retry_due(now) {
            return 0;
        }
        // A commit writes about three times its payload to the WAL and then, at the
        // checkpoint, into the database: a batch fits what is above the reserve.
        let room = room.map_or(usize::MAX, |room| (room / 4) as usize);
        if room == 0 {
            return 0;
        }
        let limit = if self.blocked() == Some(Blocked::FilesystemFull) { PROBE_TAKE } else { usize::MAX };
        let max_bytes = if self.tight(now) { TIGHT_BYTES } else { max_bytes }.min(room);
        let mut bytes = 0;
        let mut n = 0;
        for held in self.held.iter().take(limit) {
            bytes += held.bytes;
            n += 1;
            if bytes >= max_bytes {
                break;
            }
        }
        n
    }

    /// The first `n` held messages, for the transaction, with what comes with a
    /// persisted event.
    pub fn peek(&self, n: usize) -> impl Iterator<Item = (&Inbound, Option<&Persisting>)> {
        self.held.iter().take(n).map(|h| (h.inbound.as_ref(), h.then.as_deref()))
    }

    /// The first `n` committed: drops them (persisted events hear so, and those the held
    /// journal kept join `retired`) and returns the highest sequence number among them.
    pub fn committed(&mut self, n: usize, retired: &mut Vec<u64>) -> Option<u64> {
        let mut last = None;
        for held in self.held.drain(..n.min(self.held.len())) {
            match held.then {
                Some(then) => {
                    retired.extend(then.journaled);
                    let _ = then.reply.send(());
                }
                None => last = Some(held.seq),
            }
        }
        last
    }

    /// Looks again at once (more is held than one batch took).
    pub fn retry_now(&mut self, now: Instant) {
        if let State::Blocked { retry_at, .. } = &mut self.state {
            *retry_at = now;
        }
    }
}

impl Default for Admission {
    fn default() -> Self {
        Admission::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::Quarantined;

    fn message(bytes: usize) -> Box<Inbound> {
        Box::new(Inbound::Quarantine(Quarantined {
            topic: "t".into(),
            reason: "r".into(),
            size: bytes,
            payload: vec![0; bytes],
        }))
    }

    fn with(n: u64, bytes: usize) -> Admission {
        let mut a = Admission::new();
        (1..=n).for_each(|seq| a.hold(seq, message(bytes), Duration::ZERO));
        a
    }

    #[test]
    fn open_takes_what_fits_the_batch() {
        let t = Instant::now();
        let a = with(10, 100);
        assert_eq!(a.to_take(t, None, 1_000_000), 10);
        assert_eq!(a.to_take(t, None, 350), 4, "stops at the first message past the budget");
        assert_eq!(Admission::new().to_take(t, None, 1000), 0);
    }

    #[test]
    fn the_filesystem_reserve_limits_a_batch() {
        let t = Instant::now();
        let a = with(10, 100);
        assert_eq!(a.to_take(t, Some(0), 1_000_000), 0, "nothing above the reserve");
        assert_eq!(a.to_take(t, Some(1200), 1_000_000), 3, "a quarter of the room");
    }

    #[test]
    fn blocked_takes_nothing_until_its_retry_time() {
        let t = Instant::now();
        let mut a = with(100, 10);
        assert!(a.block(Blocked::AtCap, t));
        assert!(!a.block(Blocked::AtCap, t), "the same reason again is not a transition");
        assert_eq!(a.to_take(t, None, 1 << 20), 0);
        assert_eq!(a.to_take(t + RETRY_BLOCKED, None, 1 << 20), 100, "at the cap the writer checks first");
        a.retry_now(t);
        assert_eq!(a.to_take(t, None, 1 << 20), 100);
        assert_eq!(a.open(), Some(Blocked::AtCap));
        assert_eq!(a.open(), None);
    }

    #[test]
    fn a_full_filesystem_probes_small_and_stays_tight() {
        let t = Instant::now();
        let mut a = with(100, 10);
        assert!(a.block(Blocked::FilesystemFull, t));
        assert_eq!(a.to_take(t + RETRY_BLOCKED, None, 1 << 20), PROBE_TAKE);
        a.open();
        assert!(a.tight(t + Duration::from_secs(1)));
        let big = with(100, 10_000);
        let mut big = big;
        big.block(Blocked::FilesystemFull, t);
        big.open();
        assert_eq!(big.to_take(t, None, 1 << 30), TIGHT_BYTES / 10_000 + 1);
        assert!(!a.tight(t + TIGHT_FOR));
    }

    #[test]
    fn unhurried_messages_wait_for_company_but_not_long() {
        let mut a = Admission::new();
        let linger = Duration::from_secs(1);
        assert_eq!(a.unhurried_until(linger, 3), None, "nothing held");
        a.hold(1, message(1), linger);
        let until = a.unhurried_until(linger, 3).expect("one unhurried message waits");
        assert!(until > Instant::now());
        a.hold(2, message(1), linger);
        a.hold(3, message(1), linger);
        assert_eq!(a.unhurried_until(linger, 3), None, "a full batch goes");
        let mut b = Admission::new();
        b.hold(1, message(1), linger);
        b.hold(2, message(1), Duration::ZERO);
        assert_eq!(b.unhurried_until(linger, 3), None, "someone waits on the second");
    }

    #[test]
    fn each_message_waits_its_own_linger_and_a_hurry_ends_every_wait() {
        let mut a = Admission::new();
        a.hold(1, message(1), Duration::from_secs(3));
        a.hold(2, message(1), Duration::from_millis(150));
        let until = a.unhurried_until(Duration::from_secs(3), 512).expect("both may wait");
        assert!(until <= Instant::now() + Duration::from_millis(150), "the shortest linger ends the wait");
        a.hurry();
        assert_eq!(a.unhurried_until(Duration::from_secs(3), 512), None, "a message behind them waits for their acks");
    }

    #[test]
    fn unhurried_messages_stop_waiting_when_the_broker_stops_sending() {
        let mut a = Admission::new();
        let linger = Duration::from_secs(1);
        for n in 0..QUIET_AFTER as u64 {
            a.hold(n, message(1), linger);
            std::thread::sleep(Duration::from_millis(1));
        }
        let until = a.unhurried_until(linger, 512).expect("they may wait");
        let newest = a.held.back().unwrap().at;
        assert!(until <= newest + Duration::from_millis(100), "a pause of a few gaps ends the wait, not the linger");
        assert!(until >= newest + QUIET_MIN);
    }

    #[test]
    fn committed_messages_leave_in_order() {
        let mut a = with(5, 1);
        assert_eq!(a.committed(3, &mut Vec::new()), Some(3));
        assert_eq!(a.len(), 2);
        assert_eq!(a.committed(10, &mut Vec::new()), Some(5));
        assert_eq!(a.committed(1, &mut Vec::new()), None);
        assert!(a.is_empty());
    }
}
