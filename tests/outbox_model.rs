//! A model test of the outbox: random sequences of enqueue, claim, succeed, fail, evict,
//! collapse, expire and reopen against a plain in-memory model. After every step the
//! store's counts must equal the model's, and every delivery must be accounted for.

use std::collections::HashMap;

use fleethook::config::{StorageConfig, Synchronous, WhenFull};
use fleethook::event::Priority;
use fleethook::outbox::{
    AttemptRecord, AuditRow, Inbound, NewDelivery, NewEvent, NextState, Store, Stored, Terminal, open,
};
use proptest::prelude::*;

const SUBS: [&str; 2] = ["a", "b"];

#[derive(Clone, Debug)]
enum Op {
    Enqueue { subs: u8, collapse: bool, priority: u8, ttl: i64 },
    Claim { sub: usize },
    Succeed { pick: usize },
    Fail { pick: usize, permanent: bool, delay: i64 },
    Evict { n: i64 },
    Tick { ms: i64 },
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u8..4, any::<bool>(), 0u8..3, 50i64..5000).prop_map(|(subs, collapse, priority, ttl)| Op::Enqueue { subs, collapse, priority, ttl }),
        3 => (0usize..2).prop_map(|sub| Op::Claim { sub }),
        2 => any::<usize>().prop_map(|pick| Op::Succeed { pick }),
        2 => (any::<usize>(), any::<bool>(), 0i64..300).prop_map(|(pick, permanent, delay)| Op::Fail { pick, permanent, delay }),
        1 => (1i64..4).prop_map(|n| Op::Evict { n }),
        2 => (1i64..400).prop_map(|ms| Op::Tick { ms }),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Clone, Debug)]
struct Row {
    seq: usize,
    sub: &'static str,
    priority: u8,
    state: &'static str,
    next: i64,
    expires: i64,
    collapse: bool,
}

struct Model {
    rows: Vec<Row>,
    /// Claimed: (delivery id in the store, row index in the model).
    in_flight: Vec<(String, i64, String, usize)>,
    ids: HashMap<String, usize>,
}

fn cfg(dir: &std::path::Path) -> StorageConfig {
    StorageConfig {
        path: dir.join("outbox.db"),
        max_bytes: 1 << 30,
        when_full: WhenFull::DropOldest,
        synchronous: Synchronous::Normal,
        audit_per_subscription: 1000,
        write_behind: std::time::Duration::ZERO,
    }
}

fn check(store: &Store, model: &Model) -> Result<(), TestCaseError> {
    let stats = store.stats().unwrap();
    for sub in SUBS {
        let s = stats.subscription(sub).cloned().unwrap_or_default();
        let count = |state: &str| model.rows.iter().filter(|r| r.sub == sub && r.state == state).count() as u64;
        let got = (s.pending, s.delivered, s.failed, s.evicted, s.superseded, s.expired);
        let want = (
            count("pending"),
            count("delivered"),
            count("failed"),
            count("evicted"),
            count("superseded"),
            count("expired"),
        );
        prop_assert_eq!(got, want, "subscription {}", sub);
        prop_assert_eq!(s.created, s.pending + s.delivered + s.failed + s.evicted + s.superseded + s.expired);
    }
    Ok(())
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::new(open(&cfg(dir.path())).unwrap()).unwrap().sweep_expiry_always();
    let mut model = Model { rows: Vec::new(), in_flight: Vec::new(), ids: HashMap::new() };
    let mut now: i64 = 1_000;
    let mut events = 0;
    for op in ops {
        match op {
            Op::Enqueue { subs, collapse, priority, ttl } => {
                events += 1;
                let chosen: Vec<&'static str> =
                    SUBS.iter().enumerate().filter(|(i, _)| subs & (1 << i) != 0).map(|(_, s)| *s).collect();
                let priority_v = [Priority::High, Priority::Normal, Priority::Low][priority as usize];
                let event = NewEvent {
                    id: format!("e{events}"),
                    event_type: if collapse { "agent.heartbeat".into() } else { format!("mission.m{events}") },
                    device_id: "d".into(),
                    created_ms: now,
                    taken_ms: now,
                    clock: None,
                    topic: "t".into(),
                    data: "{}".into(),
                    priority: priority_v,
                    collapse,
                    dedupe_key: None,
                    dedupe_check: false,
                    retained_key: None,
                    deliveries: chosen
                        .iter()
                        .map(|s| NewDelivery {
                            id: fleethook::event::new_id(),
                            subscription: s.to_string(),
                            expires_ms: now + ttl,
                        })
                        .collect(),
                };
                let Stored::Event { delivery_ids } = store.insert(&Inbound::Event(event), now).unwrap() else {
                    return Err(TestCaseError::fail("an event with deliveries is stored"));
                };
                for (sub, id) in chosen.into_iter().zip(delivery_ids) {
                    if collapse {
                        for r in model.rows.iter_mut().filter(|r| r.sub == sub && r.collapse && r.state == "pending") {
                            r.state = "superseded";
                        }
                    }
                    let seq = model.rows.len();
                    model.rows.push(Row {
                        seq,
                        sub,
                        priority,
                        state: "pending",
                        next: now,
                        expires: now + ttl,
                        collapse,
                    });
                    model.ids.insert(id, seq);
                }
            }
            Op::Claim { sub } => {
                let sub = SUBS[sub];
                for r in model.rows.iter_mut().filter(|r| r.sub == sub && r.state == "pending" && r.expires <= now) {
                    r.state = "expired";
                }
                let batch = store.due(sub, now, 5, false).unwrap();
                let mut want: Vec<&Row> =
                    model.rows.iter().filter(|r| r.sub == sub && r.state == "pending" && r.next <= now).collect();
                // High priority first (0), then due time, then event order.
                want.sort_by_key(|r| (r.priority, r.next, r.seq));
                let want: Vec<usize> = want.into_iter().take(5).map(|r| r.seq).collect();
                let got: Vec<usize> = batch.rows.iter().map(|d| model.ids[&d.delivery_id]).collect();
                prop_assert_eq!(&got, &want, "due order");
                for d in batch.rows {
                    if !model.in_flight.iter().any(|f| f.0 == d.delivery_id) {
                        model.in_flight.push((
                            d.delivery_id.clone(),
                            d.seq,
                            d.event_type.clone(),
                            model.ids[&d.delivery_id],
                        ));
                    }
                }
            }
            Op::Succeed { pick } | Op::Fail { pick, .. } if !model.in_flight.is_empty() => {
                let (id, seq, event_type, row) = model.in_flight.remove(pick % model.in_flight.len());
                let next = match op {
                    Op::Succeed { .. } => NextState::Terminal(Terminal::Delivered),
                    Op::Fail { permanent: true, .. } => NextState::Terminal(Terminal::Failed),
                    Op::Fail { delay, .. } => NextState::Retry { at_ms: now + delay, charge: true },
                    _ => unreachable!(),
                };
                let r = &mut model.rows[row];
                match (&next, r.state) {
                    (NextState::Terminal(t), "pending") => r.state = t.as_str(),
                    (NextState::Retry { at_ms, .. }, "pending") => r.next = *at_ms,
                    // Superseded while its attempt was out, and that attempt landed.
                    (NextState::Terminal(Terminal::Delivered), "superseded") => r.state = "delivered",
                    _ => {}
                }
                store
                    .record(&AttemptRecord::new(
                        Some(seq),
                        AuditRow {
                            subscription: r.sub.to_string(),
                            delivery_id: id,
                            event_type,
                            attempt: 1,
                            started_ms: now,
                            duration_ms: 1,
                            status: Some(200),
                            ..AuditRow::default()
                        },
                        next,
                    ))
                    .unwrap();
            }
            Op::Succeed { .. } | Op::Fail { .. } => {}
            Op::Evict { n } => {
                let evicted = store.evict_pending(now, n).unwrap();
                let mut pending: Vec<&mut Row> = model.rows.iter_mut().filter(|r| r.state == "pending").collect();
                pending.sort_by_key(|r| (std::cmp::Reverse(r.priority), r.seq));
                let take = (n as usize).min(pending.len());
                prop_assert_eq!(evicted as usize, take);
                for r in pending.into_iter().take(take) {
                    r.state = "evicted";
                }
            }
            Op::Tick { ms } => now += ms,
            Op::Reopen => {
                drop(store);
                store = Store::new(open(&cfg(dir.path())).unwrap()).unwrap().sweep_expiry_always();
                // What was in flight is simply pending again.
                model.in_flight.clear();
            }
        }
        check(&store, &model)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn the_outbox_behaves_like_its_model(ops in proptest::collection::vec(op(), 1..60)) {
        run(ops)?;
    }
}
