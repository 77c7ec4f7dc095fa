use super::*;
use crate::config::StorageConfig;
use crate::event::Priority;
use crate::outbox::{AttemptRecord, AuditRow, FastDone, NewDelivery, NextState, Terminal, content_key};

fn store(dir: &tempfile::TempDir) -> Store {
    let cfg = StorageConfig::for_tests(dir.path().join("outbox.db"));
    Store::new(crate::outbox::open(&cfg).unwrap()).unwrap()
}

fn event(id: &str, subs: &[&str], collapse: bool) -> Inbound {
    Inbound::Event(NewEvent {
        id: id.into(),
        event_type: "agent.heartbeat".into(),
        device_id: "agv".into(),
        created_ms: 1000,
        taken_ms: 1000,
        clock: None,
        topic: "t".into(),
        data: "{}".into(),
        priority: Priority::Normal,
        collapse,
        dedupe_key: Some(content_key("t", id.as_bytes())),
        dedupe_check: true,
        retained_key: None,
        deliveries: subs
            .iter()
            .map(|s| NewDelivery { id: crate::event::new_id(), subscription: s.to_string(), expires_ms: 10_000 })
            .collect(),
    })
}

fn record(d: &Due, next: NextState) -> AttemptRecord {
    let audit = AuditRow {
        subscription: d.subscription.clone(),
        delivery_id: d.delivery_id.clone(),
        event_type: d.event_type.clone(),
        attempt: d.attempts + 1,
        started_ms: 2000,
        duration_ms: 5,
        status: Some(200),
        ..AuditRow::default()
    };
    AttemptRecord::new(Some(d.seq), audit, next)
}

#[test]
fn an_event_fans_out_and_each_delivery_ends_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = store(&dir);
    let Stored::Event { delivery_ids } = s.insert(&event("e1", &["a", "b"], false), 1000).unwrap() else { panic!() };
    assert_eq!(delivery_ids.len(), 2);
    let due = s.due("a", 1000, 10, false).unwrap();
    assert_eq!(due.rows.len(), 1);
    assert_eq!(due.rows[0].event_id, "e1");
    s.record(&record(&due.rows[0], NextState::Terminal(Terminal::Delivered))).unwrap();
    // A late second result for the same delivery is audited but not counted again.
    s.record(&record(&due.rows[0], NextState::Terminal(Terminal::Failed))).unwrap();
    let stats = s.stats().unwrap();
    let a = stats.subscription("a").unwrap();
    assert_eq!((a.delivered, a.failed, a.pending), (1, 0, 0));
    assert_eq!(stats.subscription("b").unwrap().pending, 1);
    assert_eq!(s.delivery_state(&due.rows[0].delivery_id).unwrap().as_deref(), Some("delivered"));
}

#[test]
fn retries_wait_and_fifo_blocks_behind_the_head() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = store(&dir);
    s.insert(&event("e1", &["a"], false), 1000).unwrap();
    s.insert(&event("e2", &["a"], false), 1000).unwrap();
    let head = s.due("a", 1000, 10, true).unwrap().rows.remove(0);
    s.record(&record(&head, NextState::Retry { at_ms: 5000, charge: true })).unwrap();
    let fifo = s.due("a", 1000, 10, true).unwrap();
    assert!(fifo.rows.is_empty());
    assert_eq!(fifo.next_due_ms, Some(5000));
    let parallel = s.due("a", 1000, 10, false).unwrap();
    assert_eq!(parallel.rows.iter().map(|d| d.event_id.as_str()).collect::<Vec<_>>(), ["e2"]);
    assert_eq!(parallel.next_due_ms, Some(5000));
    let later = s.due("a", 5000, 10, true).unwrap();
    assert_eq!((later.rows[0].event_id.as_str(), later.rows[0].budget_used), ("e1", 1));
}

#[test]
fn expiry_collapse_dedupe_and_quarantine_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = store(&dir);
    s.insert(&event("h1", &["a"], true), 1000).unwrap();
    s.insert(&event("h2", &["a"], true), 1000).unwrap();
    assert_eq!(s.insert(&event("h2", &["a"], true), 1000).unwrap(), Stored::Duplicate);
    let q = Quarantined { topic: "t".into(), reason: "not JSON".into(), size: 3, payload: b"abc".to_vec() };
    assert_eq!(s.insert(&Inbound::Quarantine(q), 1000).unwrap(), Stored::Quarantined);
    let stats = s.stats().unwrap();
    assert_eq!((stats.subscription("a").unwrap().superseded, stats.subscription("a").unwrap().pending), (1, 1));
    assert_eq!((stats.quarantined, stats.duplicates, stats.events), (1, 1, 2));
    assert!(s.due("a", 20_000, 10, false).unwrap().rows.is_empty());
    assert_eq!(s.stats().unwrap().subscription("a").unwrap().expired, 1);
}

#[test]
fn dedupe_survives_a_restart_and_forgets_rolled_back_batches() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = store(&dir);
    // A batch that rolls back leaves no key: the same message retried is stored.
    s.begin().unwrap();
    assert!(matches!(s.insert(&event("r1", &["a"], false), 1000).unwrap(), Stored::Event { .. }));
    assert_eq!(s.insert(&event("r1", &["a"], false), 1000).unwrap(), Stored::Duplicate, "within the batch too");
    s.rollback();
    s.begin().unwrap();
    assert!(matches!(s.insert(&event("r1", &["a"], false), 1000).unwrap(), Stored::Event { .. }));
    s.commit().unwrap();
    drop(s);
    // After a restart the key is known again from the event row.
    let mut s = store(&dir);
    assert_eq!(s.insert(&event("r1", &["a"], false), 1000).unwrap(), Stored::Duplicate);
    assert!(matches!(s.insert(&event("r2", &["a"], false), 1000).unwrap(), Stored::Event { .. }));
}

#[test]
fn deliveries_created_in_a_transaction_are_counted_once_it_commits_and_not_after_a_rollback() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = store(&dir);
    let created = |s: &Store| s.stats().unwrap().subscription("a").map_or(0, |a| a.created);
    s.begin().unwrap();
    s.insert(&event("t1", &["a", "b"], false), 1000).unwrap();
    s.insert(&event("t2", &["a"], false), 1000).unwrap();
    s.rollback();
    s.begin().unwrap();
    s.insert(&event("t3", &["a", "b"], false), 1000).unwrap();
    s.insert(&event("t4", &["a"], false), 1000).unwrap();
    s.commit().unwrap();
    assert_eq!(created(&s), 2, "the rolled-back batch counts nothing");
    assert_eq!(s.stats().unwrap().subscription("b").unwrap().created, 1);
    s.insert(&event("t5", &["a"], false), 1000).unwrap();
    assert_eq!(created(&s), 3, "outside a transaction, counted at once");
}

/// Every fetch must read only the head of the queue: a plan that sorts (a temp B-tree)
/// reads the subscription's whole backlog on each fetch.
#[test]
fn due_queries_walk_an_index_in_order_instead_of_sorting_the_backlog() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir);
    let fifo_sql = due_fifo_sql(&fifo_index(s.conn(), "a").unwrap(), "a");
    for (name, sql) in [("parallel", DUE_SQL), ("fifo", fifo_sql.as_str())] {
        let mut plan = s.conn().prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let steps: Vec<String> = plan
            .query_map(
                rusqlite::params_from_iter(["a", "1000", "10", "0"].iter().take(if name == "fifo" { 3 } else { 4 })),
                |r| r.get(3),
            )
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let plan = steps.join("; ");
        assert!(!plan.contains("TEMP B-TREE"), "{name} sorts the backlog: {plan}");
        let index = if name == "fifo" { "deliveries_fifo_" } else { "deliveries_due" };
        assert!(plan.contains(index), "{name} does not use {index}: {plan}");
    }
}

#[test]
fn a_due_read_passes_over_what_the_lane_knows_and_still_fills_its_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = store(&dir);
    for i in 0..6 {
        s.insert(&event(&format!("e{i}"), &["a"], false), 1000).unwrap();
    }
    let all: Vec<i64> = s.due("a", 1000, 10, false).unwrap().rows.iter().map(|d| d.seq).collect();
    assert_eq!(all.len(), 6);
    // The first two are in flight and the fourth is queued in the lane already.
    let skip = vec![all[0], all[1], all[3]];
    let batch = s.due_rows("a", 1000, 2, false, &skip, Priority::Low as i64).unwrap();
    assert_eq!(batch.rows.iter().map(|d| d.seq).collect::<Vec<_>>(), vec![all[2], all[4]]);
    let rest = s.due_rows("a", 1000, 10, false, &skip, Priority::Low as i64).unwrap();
    assert_eq!(rest.rows.iter().map(|d| d.seq).collect::<Vec<_>>(), vec![all[2], all[4], all[5]]);
    // A FIFO read never skips its head: the queue waits behind it.
    let head = s.due_rows("a", 1000, 1, true, &skip, Priority::Low as i64).unwrap();
    assert_eq!(head.rows[0].seq, all[0]);
}

#[test]
fn events_delivered_from_memory_keep_their_audit_counts_and_newest_keys() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = store(&dir);
    s.begin().unwrap();
    for l in 1..=5u64 {
        let audit = AuditRow { subscription: "a".into(), delivery_id: format!("d{l}"), ..Default::default() };
        s.record_fast(&FastDone { l, key: Some(l as i64), audits: vec![audit], j: None }).unwrap();
    }
    s.set_fast_applied(5).unwrap();
    s.commit().unwrap();
    assert_eq!(s.fast_applied().unwrap(), 5);
    let stats = s.stats().unwrap();
    let a = stats.subscription("a").unwrap();
    assert_eq!((a.created, a.delivered), (5, 5));
    assert_eq!(s.trim_delivered_keys(2).unwrap(), 3, "only the newest keys stay");
    let left: Vec<i64> = s
        .conn()
        .prepare("SELECT key FROM delivered_keys ORDER BY seq")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(left, [4, 5]);
}

#[test]
fn the_quarantine_keeps_its_newest_rows_within_a_count_and_a_byte_budget() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = store(&dir);
    for n in 0..10u8 {
        let q = Quarantined { topic: "t".into(), reason: "not JSON".into(), size: 100, payload: vec![n; 100] };
        s.insert(&Inbound::Quarantine(q), 1000).unwrap();
    }
    let left = |s: &Store| -> Vec<i64> {
        let mut stmt = s.conn().prepare("SELECT seq FROM quarantine ORDER BY seq").unwrap();
        stmt.query_map([], |r| r.get(0)).unwrap().collect::<Result<_, _>>().unwrap()
    };
    assert_eq!(s.trim_quarantine(8, 10_000).unwrap(), 2);
    assert_eq!(left(&s), (3..=10).collect::<Vec<_>>(), "the oldest go first");
    assert_eq!(s.trim_quarantine(8, 350).unwrap(), 5, "three payloads of 100 bytes fit in 350");
    assert_eq!(left(&s), vec![8, 9, 10]);
    assert_eq!(s.purge_quarantine(Some(&[9, 42])).unwrap(), 1, "a number that is gone is no error");
    assert_eq!(s.purge_quarantine(None).unwrap(), 2);
    assert!(left(&s).is_empty());
}

#[test]
fn an_event_goes_when_its_last_delivery_has_finished_and_not_before() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = store(&dir);
    s.insert(&event("e1", &["a", "b"], false), 1000).unwrap();
    s.insert(&event("e2", &["a"], false), 1000).unwrap();
    let events = |s: &Store| -> Vec<String> {
        let mut stmt = s.conn().prepare("SELECT id FROM events ORDER BY seq").unwrap();
        stmt.query_map([], |r| r.get(0)).unwrap().map(|r| r.unwrap()).collect()
    };
    let ranges: Vec<(i64, i64)> = s
        .conn()
        .prepare("SELECT first_delivery, last_delivery FROM events ORDER BY seq")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(ranges, [(1, 2), (3, 3)], "each event knows its deliveries' seqs");
    // e1's delivery to a, and e2's, finish; e1 still has b pending.
    for d in s.due("a", 1000, 10, false).unwrap().rows {
        s.record(&record(&d, NextState::Terminal(Terminal::Delivered))).unwrap();
    }
    s.delete_finished(i64::MAX, 100).unwrap();
    assert_eq!(events(&s), ["e1"]);
    let b = s.due("b", 1000, 10, false).unwrap().rows;
    s.record(&record(&b[0], NextState::Terminal(Terminal::Delivered))).unwrap();
    s.delete_finished(i64::MAX, 100).unwrap();
    assert_eq!(events(&s), Vec::<String>::new());
    let plan: Vec<String> = s
        .conn()
        .prepare(
            "EXPLAIN QUERY PLAN SELECT 1 FROM events WHERE seq = 1 AND NOT EXISTS (SELECT 1 FROM deliveries d
             WHERE d.seq BETWEEN coalesce(events.first_delivery, 0) AND coalesce(events.last_delivery, 9223372036854775807)
               AND d.event_seq = 1)",
        )
        .unwrap()
        .query_map([], |r| r.get(3))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert!(plan.iter().any(|p| p.contains("SEARCH d USING INTEGER PRIMARY KEY")), "a rowid range: {plan:?}");
}

#[test]
fn expiry_sweeps_the_table_in_windows_and_wraps_around() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = store(&dir);
    // More deliveries than one window holds; every one expires at 10 000.
    let n = EXPIRE_WINDOW as usize + 500;
    s.begin().unwrap();
    for i in 0..n {
        s.insert(&event(&format!("e{i}"), &["a"], false), 1000).unwrap();
    }
    s.commit().unwrap();
    assert_eq!(s.expire("a", 5_000).unwrap(), 0, "nothing has expired yet");
    // The first sweep's windows follow each other while they find expired rows.
    assert_eq!(s.expire("a", 20_000).unwrap(), n as u64);
    assert_eq!(s.stats().unwrap().subscription("a").unwrap().expired, n as u64);
    assert!(s.due("a", 20_000, 10, false).unwrap().rows.is_empty());
    // Later arrivals are found once the sweep has wrapped around.
    s.insert(&event("late", &["a"], false), 1000).unwrap();
    let mut found = 0;
    for _ in 0..4 {
        found += s.expire("a", 20_000).unwrap();
    }
    assert_eq!(found, 1);
}
