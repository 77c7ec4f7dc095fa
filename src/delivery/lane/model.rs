//! A model test of a lane's scheduling: nothing due waits forever.
//!
//! Random runs of events (three priorities), endpoint answers (2xx, 5xx, a timeout, 429
//! with `Retry-After`, connection refused, 400), commits of their results, pauses and
//! resumes, and time passing, on FIFO and parallel lanes. The lane is driven through the
//! API the dispatcher uses, on a fake clock, against an in-memory outbox that answers a
//! fetch as `Store::due_rows` does. A run takes microseconds, so the suite runs many.
//!
//! Two invariants, checked after every step:
//! 1. **A free lane sends what is due.** With the endpoint online and not held, nothing
//!    out and nothing waiting for its commit, no due delivery is left unsent after one
//!    scheduling step (the lane asked for what it may start, its fetch answered, asked
//!    again).
//! 2. **Nothing is passed over.** A delivery never waits, due and idle, while one that
//!    became due after it (of its priority or a lower one) starts; on a FIFO lane, while
//!    a later event starts. A delivery held by a `Retry-After` became due when it first
//!    did, not when its hold ends.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::super::attempt::settle;
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
}

struct World {
    lane: Lane,
    fifo: bool,
    t0: Instant,
    /// The fake clock, in ms on the schedule clock.
    t: i64,
    rows: BTreeMap<i64, Row>,
    committed: u64,
    /// Started and not yet answered: (seq, probe).
    out: Vec<(i64, bool)>,
    /// Answered, result not yet committed: (seq, next state, kept its place).
    recording: Vec<(i64, NextState, bool)>,
    paused: bool,
}

fn subscription(fifo: bool) -> Subscription {
    static SUBS: OnceLock<(Subscription, Subscription)> = OnceLock::new();
    let (parallel, ordered) = SUBS.get_or_init(|| {
        let sub = |ordering: &str| {
            let src = format!(
                "[[subscription]]\nname = \"s\"\nurl = \"https://hooks.fleet.acme.io/h\"\nsignature = \"none\"\nmax_in_flight = 3\nordering = \"{ordering}\"\n"
            );
            Config::parse(&src, std::path::Path::new("t.toml")).unwrap().subscriptions[0].clone()
        };
        (sub("parallel"), sub("fifo"))
    });
    if fifo { ordered.clone() } else { parallel.clone() }
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
    fn new(fifo: bool) -> World {
        let lane = Lane::new(subscription(fifo), client(), Endpoint::new(Duration::from_secs(60), None, true));
        World {
            lane,
            fifo,
            t0: Instant::now(),
            t: 1_000_000,
            rows: BTreeMap::new(),
            committed: 0,
            out: Vec::new(),
            recording: Vec::new(),
            paused: false,
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
        DueBatch { rows, next_due_ms, committed: self.committed }
    }

    /// One scheduling step: what may start starts, a fetch is answered, and the lane is
    /// asked again until it has nothing more to do.
    fn step(&mut self) -> Result<(), TestCaseError> {
        for _ in 0..8 {
            let now = self.now();
            let Some(starts) = self.lane.next_starts(now, 32) else { return Ok(()) };
            let started: Vec<i64> = starts.due.iter().map(|d| d.seq).collect();
            for &seq in &started {
                self.not_passed_over(seq, &started)?;
                self.out.push((seq, starts.probe));
            }
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
                || self.out.iter().any(|(o, _)| *o == r)
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
    fn free_lane_sends(&self) -> Result<(), TestCaseError> {
        let now = self.now();
        let free = self.lane.endpoint.state == State::Online
            && self.lane.endpoint.held_until(now).is_none()
            && self.out.is_empty()
            && self.recording.is_empty();
        if !free {
            return Ok(());
        }
        // A FIFO lane's queue waits behind its head until the head is due.
        let mut pending = self.rows.iter().filter(|(_, r)| r.pending);
        let waiting = if self.fifo {
            pending.next().filter(|(_, r)| r.next_ms <= self.t)
        } else {
            pending.find(|(_, r)| r.next_ms <= self.t)
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
                let (seq, probe) = self.out.remove(pick % self.out.len());
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
                let next = settle(&self.lane.sub, &self.due(seq), &verdict, status, self.t);
                let kept = matches!(answer, Answer::RateLimited { .. } | Answer::Refused);
                self.lane.finished(&[seq], &verdict, status, probe, Duration::from_millis(40), now);
                self.recording.push((seq, next, kept));
            }
            Op::Commit => {
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
                    self.lane.resume();
                    self.paused = false;
                }
            }
        }
        Ok(())
    }
}

fn run(fifo: bool, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut w = World::new(fifo);
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
    fn nothing_due_waits_forever(fifo in any::<bool>(), ops in proptest::collection::vec(op(), 1..60)) {
        run(fifo, &ops)?;
    }
}
