//! A model test of a lane's scheduling: nothing due waits forever.
//!
//! Random runs of events (three priorities), endpoint answers (2xx, 5xx, a timeout, 429
//! with `Retry-After`, connection refused, 400), commits of their results, pauses and
//! resumes, and time passing, on FIFO, parallel and batched lanes. The lane is driven through the
//! API the dispatcher uses, on a fake clock, against an in-memory outbox that answers a
//! fetch as `Store::due_rows` does. A run takes microseconds, so the suite runs many.
//!
//! Two invariants, checked after every step:
//! 1. **A free lane sends what is due.** With the endpoint online and not held, nothing
//!    out and nothing waiting for its commit, no due delivery is left unsent after one
//!    scheduling step (the lane asked for what it may start, its fetch answered, asked
//!    again); a batched lane, once it has waited its `max_wait` for a fuller batch.
//! 2. **Nothing is passed over.** A delivery never waits, due and idle, while one that
//!    became due after it (of its priority or a lower one) starts; on a FIFO lane, while
//!    a later event starts. A delivery held by a `Retry-After` became due when it first
//!    did, not when its hold ends.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::super::attempt::{next_state, settle_member};
use super::super::endpoint::{Endpoint, State};
use super::super::outcome::Verdict;
use super::{FetchRequest, Lane};
use crate::config::{Config, Subscription};
use crate::outbox::{Due, DueBatch, NextState};

#[derive(Clone, Copy, Debug)]
enum Answer {
    Ok,
    ServerError,
    TimedOut,
    RateLimited { after_s: u8 },
    Refused,
    BadRequest,
}

#[derive(Clone, Debug)]
enum Op {
    Publish { priority: i64, n: u8 },
    Answer { pick: usize, answer: Answer },
    Commit,
    Advance { ms: u32 },
    Pause,
    Resume,
}

fn answer() -> impl Strategy<Value = Answer> {
    prop_oneof![
        6 => Just(Answer::Ok),
        1 => Just(Answer::ServerError),
        1 => Just(Answer::TimedOut),
        2 => (1u8..5).prop_map(|after_s| Answer::RateLimited { after_s }),
        1 => Just(Answer::Refused),
        1 => Just(Answer::BadRequest),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0i64..3, 1u8..6).prop_map(|(priority, n)| Op::Publish { priority, n }),
        6 => (any::<usize>(), answer()).prop_map(|(pick, answer)| Op::Answer { pick, answer }),
        3 => Just(Op::Commit),
        3 => (0u32..8_000).prop_map(|ms| Op::Advance { ms }),
        1 => Just(Op::Pause),
        1 => Just(Op::Resume),
    ]
}

/// One delivery row, as the outbox holds it.
struct Row {
    priority: i64,
    next_ms: i64,
    attempts: u32,
    budget_used: u32,
    pending: bool,
    /// When it first became due, unmoved by a `Retry-After` hold (invariant 2).
    due_since: i64,
    /// When the lane could first know it due again: published, or its result committed.
    ready_ms: i64,
}

/// The lane kinds a run is made on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Parallel,
    Fifo,
    /// `batch = { max_events = 5, max_wait = "2s" }`.
    Batched,
}

const BATCH_WAIT_MS: i64 = 2_000;

struct World {
    lane: Lane,
    kind: Kind,
    fifo: bool,
    t0: Instant,
    /// The fake clock, in ms on the schedule clock.
    t: i64,
    rows: BTreeMap<i64, Row>,
    committed: u64,
    /// Requests started and not yet answered: (their deliveries, probe).
    out: Vec<(Vec<i64>, bool)>,
    /// Answered, result not yet committed: (seq, next state, kept its place).
    recording: Vec<(i64, NextState, bool)>,
    paused: bool,
    /// When an answer, a commit, a resume or a hold's end last changed what the lane may
    /// send: a batched lane reads again then, and waits its max_wait anew.
    changed_ms: i64,
    held: bool,
}

fn subscription(kind: Kind) -> Subscription {
    static SUBS: OnceLock<[Subscription; 3]> = OnceLock::new();
    let subs = SUBS.get_or_init(|| {
        let sub = |extra: &str| {
            let src = format!(
                "[[subscription]]\nname = \"s\"\nurl = \"https://hooks.fleet.acme.io/h\"\nsignature = \"none\"\nmax_in_flight = 3\n{extra}\n"
            );
            Config::parse(&src, std::path::Path::new("t.toml")).unwrap().subscriptions[0].clone()
        };
        [
            sub("ordering = \"parallel\""),
            sub("ordering = \"fifo\""),
            sub("batch = { max_events = 5, max_wait = \"2s\" }"),
        ]
    });
    subs[kind as usize].clone()
}

fn client() -> super::super::http::Client {
    static HTTP: OnceLock<reqwest::Client> = OnceLock::new();
    crate::init_crypto();
    super::super::http::Client {
        http: HTTP.get_or_init(reqwest::Client::new).clone(),
        token: None,
        compress: Default::default(),
        probe_at: None,
        names: std::sync::Arc::new(crate::delivery::http::Names::new("X-Fleethook")),
    }
}

impl World {
    fn new(kind: Kind) -> World {
        let lane = Lane::new(subscription(kind), client(), Endpoint::new(Duration::from_secs(60), None, true));
        World {
            lane,
            kind,
            fifo: kind == Kind::Fifo,
            t0: Instant::now(),
            t: 1_000_000,
            rows: BTreeMap::new(),
            committed: 0,
            out: Vec::new(),
            recording: Vec::new(),
            paused: false,
            changed_ms: 1_000_000,
            held: false,
        }
    }

    fn now(&self) -> Instant {
        self.t0 + Duration::from_millis((self.t - 1_000_000) as u64)
    }

    fn due(&self, seq: i64) -> Due {
        let r = &self.rows[&seq];
        Due {
            seq,
            delivery_id: format!("d{seq}"),
            subscription: "s".into(),
            attempts: r.attempts,
            budget_used: r.budget_used,
            event_id: format!("e{seq}"),
            event_type: "mission.completed".into(),
            device_id: "agv-1".into(),
            created_ms: 0,
            data: "{}".into(),
            clock: None,
            priority: r.priority,
            next_attempt_ms: r.next_ms,
        }
    }

    /// The outbox's answer to a fetch, as `Store::due_rows` reads it.
    fn read(&self, f: &FetchRequest) -> DueBatch {
        let pending = || self.rows.iter().filter(|(_, r)| r.pending);
        let mut rows = Vec::new();
        let mut next_due_ms = None;
        if f.fifo {
            for (&seq, r) in pending().take(f.asked) {
                if r.next_ms > self.t {
                    next_due_ms = Some(r.next_ms);
                    break;
                }
                rows.push(self.due(seq));
            }
        } else {
            for priority in (0..=2).filter(|p| *p <= f.lowest) {
                let mut due: Vec<(i64, i64)> = pending()
                    .filter(|(s, r)| r.priority == priority && r.next_ms <= self.t && f.skip.binary_search(s).is_err())
                    .map(|(&s, r)| (r.next_ms, s))
                    .collect();
                due.sort_unstable();
                for (_, seq) in due.into_iter().take(f.asked - rows.len()) {
                    rows.push(self.due(seq));
                }
            }
            if rows.len() < f.asked {
                next_due_ms = pending().map(|(_, r)| r.next_ms).filter(|&m| m > self.t).min();
            }
        }
        DueBatch { rows, next_due_ms, committed: self.committed, more: false }
    }

    /// One scheduling step: what may start starts, a fetch is answered, and the lane is
    /// asked again until it has nothing more to do.
    fn step(&mut self) -> Result<(), TestCaseError> {
        for _ in 0..8 {
            let now = self.now();
            let Some(starts) = self.lane.next_starts(now, 32) else { return Ok(()) };
            let mut requests: Vec<Vec<i64>> = starts.due.iter().map(|d| vec![d.seq]).collect();
            requests.extend(starts.batches.iter().map(|b| b.iter().map(|d| d.seq).collect()));
            let started: Vec<i64> = requests.iter().flatten().copied().collect();
            for &seq in &started {
                self.not_passed_over(seq, &started)?;
            }
            self.out.extend(requests.into_iter().map(|r| (r, starts.probe)));
            let Some(fetch) = starts.fetch else {
                if started.is_empty() {
                    return Ok(());
                }
                continue;
            };
            let answer = self.read(&fetch);
            self.lane.fetched_at(answer, fetch.asked, now, self.t);
        }
        Ok(())
    }

    /// Invariant 2, for `seq` starting (with `started` in the same step).
    fn not_passed_over(&self, seq: i64, started: &[i64]) -> Result<(), TestCaseError> {
        let s = &self.rows[&seq];
        let busy = |r: i64| {
            started.contains(&r)
                || self.out.iter().any(|(o, _)| o.contains(&r))
                || self.recording.iter().any(|(o, ..)| *o == r)
        };
        for (&other, r) in self.rows.iter().filter(|(o, r)| r.pending && **o != seq && !busy(**o)) {
            if r.next_ms > self.t {
                continue;
            }
            let older = if self.fifo { other < seq } else { r.priority <= s.priority && r.due_since < s.due_since };
            prop_assert!(
                !older,
                "t={}: {seq} (due since {}) starts while {other} (priority {}, due since {}, next {}) waits",
                self.t,
                s.due_since,
                r.priority,
                r.due_since,
                r.next_ms
            );
        }
        Ok(())
    }

    /// Invariant 1, after a step.
    fn free_lane_sends(&mut self) -> Result<(), TestCaseError> {
        let now = self.now();
        let held = self.lane.endpoint.held_until(now).is_some();
        if self.held && !held {
            self.changed_ms = self.t;
        }
        self.held = held;
        let free = self.lane.endpoint.state == State::Online
            && self.lane.endpoint.held_until(now).is_none()
            && self.out.is_empty()
            && self.recording.is_empty();
        if !free {
            return Ok(());
        }
        // A FIFO lane's queue waits behind its head until the head is due.
        let mut pending = self.rows.iter().filter(|(_, r)| r.pending);
        // A batched one waits up to its max_wait for a fuller batch.
        let waited = if self.kind == Kind::Batched { BATCH_WAIT_MS } else { 0 };
        let waiting = if self.fifo {
            pending.next().filter(|(_, r)| r.next_ms <= self.t)
        } else {
            pending.find(|(_, r)| r.next_ms.max(r.ready_ms).max(self.changed_ms) + waited <= self.t)
        };
        prop_assert!(
            waiting.is_none(),
            "t={}: the lane is online and free, and {:?} waits",
            self.t,
            waiting.map(|(s, _)| *s)
        );
        Ok(())
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        let now = self.now();
        match *op {
            Op::Publish { priority, n } => {
                for _ in 0..n {
                    let seq = self.rows.keys().next_back().map_or(1, |s| s + 1);
                    let row = Row {
                        priority,
                        next_ms: self.t,
                        attempts: 0,
                        budget_used: 0,
                        pending: true,
                        due_since: self.t,
                        ready_ms: self.t,
                    };
                    self.rows.insert(seq, row);
                    self.committed += 1;
                    self.lane.forwarded(self.committed);
                }
            }
            Op::Answer { pick, answer } => {
                if self.out.is_empty() {
                    return Ok(());
                }
                let (seqs, probe) = self.out.remove(pick % self.out.len());
                let (verdict, status) = match answer {
                    Answer::Ok => (Verdict::Delivered, Some(200)),
                    Answer::ServerError => (Verdict::Retry { after: None, reason: "HTTP 500".into() }, Some(500)),
                    Answer::TimedOut => (Verdict::Retry { after: None, reason: "timed out".into() }, None),
                    Answer::RateLimited { after_s } => (
                        Verdict::Retry { after: Some(Duration::from_secs(after_s.into())), reason: "HTTP 429".into() },
                        Some(429),
                    ),
                    Answer::Refused => (Verdict::Offline { reason: "refused".into(), tls: false }, None),
                    Answer::BadRequest => (Verdict::Failed { reason: "HTTP 400".into(), gone: false }, Some(400)),
                };
                // As a batch's attempt settles it: the member that spent the most retries
                // decides for all, and each keeps its own place when a place is kept.
                let members: Vec<Due> = seqs.iter().map(|&s| self.due(s)).collect();
                let most = members.iter().max_by_key(|d| d.budget_used).expect("a request has a delivery");
                let next = next_state(&self.lane.sub, most, &verdict, self.t);
                let kept = matches!(answer, Answer::RateLimited { .. } | Answer::Refused);
                self.lane.finished(&seqs, &verdict, status, probe, Duration::from_millis(40), now);
                self.changed_ms = self.t;
                for d in &members {
                    let own = settle_member(&next, &verdict, status, d, self.t);
                    self.recording.push((d.seq, own, kept));
                }
            }
            Op::Commit => {
                self.changed_ms = self.t;
                for (seq, next, kept) in std::mem::take(&mut self.recording) {
                    let r = self.rows.get_mut(&seq).expect("a recorded row exists");
                    r.attempts += 1;
                    let retry = match next {
                        NextState::Terminal(_) => {
                            r.pending = false;
                            false
                        }
                        NextState::Retry { at_ms, charge } => {
                            r.budget_used += u32::from(charge);
                            r.next_ms = at_ms;
                            r.ready_ms = self.t;
                            if !kept {
                                r.due_since = at_ms;
                            }
                            true
                        }
                    };
                    self.lane.release(seq, retry);
                }
            }
            Op::Advance { ms } => self.t += i64::from(ms),
            Op::Pause => {
                self.lane.pause();
                self.paused = true;
            }
            Op::Resume => {
                if self.paused {
                    self.changed_ms = self.t;
                    self.lane.resume();
                    self.paused = false;
                }
            }
        }
        Ok(())
    }
}

fn run(kind: Kind, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut w = World::new(kind);
    w.step()?;
    for op in ops {
        w.apply(op)?;
        w.step()?;
        w.free_lane_sends()?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 10_000,
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::SourceParallel("proptest-regressions"),
        )),
        ..ProptestConfig::default()
    })]

    #[test]
    fn nothing_due_waits_forever(
        kind in prop_oneof![Just(Kind::Parallel), Just(Kind::Fifo), Just(Kind::Batched)],
        ops in proptest::collection::vec(op(), 1..60),
    ) {
        run(kind, &ops)?;
    }
}

/// What the model found, kept as cases of their own (each failed before its fix).
#[test]
fn the_orderings_the_model_found() {
    let ok = |pick| Op::Answer { pick, answer: Answer::Ok };
    // A held delivery put back (keeping its place) waited behind a newer row fetched
    // ahead of it: a delivery put back for a retry now has the queue read again.
    let held = [
        Op::Publish { priority: 0, n: 1 },
        Op::Answer { pick: 0, answer: Answer::RateLimited { after_s: 1 } },
        Op::Advance { ms: 1043 },
        Op::Publish { priority: 0, n: 3 },
        Op::Publish { priority: 2, n: 1 },
        ok(0),
        Op::Commit,
        ok(0),
    ];
    run(Kind::Parallel, &held).unwrap();
    // A delivery whose endpoint could not be reached lost its place to newer ones: it
    // now keeps the time it became due.
    let unreachable = [
        Op::Publish { priority: 0, n: 5 },
        Op::Answer { pick: 0, answer: Answer::TimedOut },
        Op::Advance { ms: 7000 },
        Op::Answer { pick: 1, answer: Answer::Refused },
        ok(0),
        ok(0),
        Op::Commit,
    ];
    run(Kind::Parallel, &unreachable).unwrap();
    // A batched lane did not read its queue again after a hold: the held batch's member
    // waited behind newer rows.
    let batched = [
        Op::Publish { priority: 0, n: 1 },
        Op::Publish { priority: 0, n: 1 },
        Op::Publish { priority: 1, n: 1 },
        Op::Pause,
        Op::Answer { pick: 0, answer: Answer::RateLimited { after_s: 1 } },
        Op::Advance { ms: 1 },
        Op::Publish { priority: 0, n: 3 },
        Op::Commit,
        Op::Resume,
        Op::Advance { ms: 2000 },
    ];
    run(Kind::Batched, &batched).unwrap();
    // A batch whose endpoint could not be reached gave every member its earliest member's
    // place: members that became due later went ahead of rows retried meanwhile. Each
    // member now keeps its own place.
    let batch_places = [
        ok(0),
        Op::Publish { priority: 2, n: 5 },
        Op::Publish { priority: 0, n: 1 },
        Op::Publish { priority: 2, n: 1 },
        Op::Answer { pick: 0, answer: Answer::TimedOut },
        Op::Advance { ms: 5616 },
        Op::Publish { priority: 2, n: 5 },
        ok(0),
        Op::Answer { pick: 0, answer: Answer::Refused },
        Op::Commit,
        Op::Pause,
        Op::Resume,
    ];
    run(Kind::Batched, &batch_places).unwrap();
}
