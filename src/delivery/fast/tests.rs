use super::*;
use crate::outbox::NewDelivery;
use std::time::Duration;

fn event(subs: &[&str]) -> NewEvent {
    let mut e = NewEvent::local(
        "mission.done",
        "agv",
        &serde_json::json!({}),
        0,
        subs.iter()
            .map(|s| NewDelivery { id: format!("d-{s}"), subscription: s.to_string(), expires_ms: i64::MAX })
            .collect(),
    );
    e.dedupe_key = Some(9);
    e
}

fn record(index: usize, next: NextState) -> AttemptRecord {
    AttemptRecord::new(None, AuditRow { delivery_id: format!("d{index}"), ..Default::default() }, next)
}

const DELIVERED: NextState = NextState::Terminal(Terminal::Delivered);

#[test]
fn every_delivery_delivered_resolves_from_memory() {
    let mut book = Book::default();
    let (tx, _rx) = oneshot::channel();
    let id = book.open(event(&["a", "b"]), vec![0, 1], Instant::now() + Duration::from_secs(1), tx);
    let (a, b) = (FastRef { job: id, index: 0 }, FastRef { job: id, index: 1 });
    assert_eq!(book.due(&b).unwrap().delivery_id, "d-b");
    book.started(&a);
    book.started(&b);
    assert!(book.finished(&a, record(0, DELIVERED)).delivered.is_none(), "b is still out");
    let done = book.finished(&b, record(1, DELIVERED)).delivered.expect("both delivered");
    assert_eq!((done.key, done.audits.len()), (Some(9), 2));
    assert!(book.is_empty());
}

#[test]
fn a_failed_answer_persists_with_what_is_known_and_hands_over_the_rest() {
    let mut book = Book::default();
    let (tx, _rx) = oneshot::channel();
    let id = book.open(event(&["a", "b", "c"]), vec![0, 1, 2], Instant::now() + Duration::from_secs(1), tx);
    let r = |index| FastRef { job: id, index };
    book.started(&r(0));
    book.started(&r(1));
    book.finished(&r(0), record(0, DELIVERED));
    let next = book.finished(&r(1), record(1, NextState::Retry { at_ms: 5, charge: true }));
    let p = &next.persist[0];
    assert_eq!(p.records.len(), 2, "the delivered one and the retry");
    assert_eq!(p.unqueued, vec![(2, r(2))], "c never started: it leaves its lane's queue");
    assert!(!book.owns_result(&r(0)));
    assert!(book.overdue(Instant::now() + Duration::from_secs(5)).is_empty(), "persisted once");
    let in_flight = record(2, DELIVERED);
    assert!(book.stash(&r(2), in_flight).is_none(), "a result waits for the persist's commit");
    let done = book.persisted(id, true).unwrap();
    assert_eq!((done.key, done.late.len()), (Some(9), 1));
    assert!(done.resolved.is_some());
    assert!(book.stash(&r(2), record(2, DELIVERED)).is_some(), "stored: recorded at once");
}

#[test]
fn the_deadline_persists_in_order_and_a_lost_persist_is_not_acked() {
    let mut book = Book::default();
    let t = Instant::now();
    let (tx1, _r1) = oneshot::channel();
    let (tx2, _r2) = oneshot::channel();
    let first = book.open(event(&["a"]), vec![0], t + Duration::from_millis(100), tx1);
    let second = book.open(event(&["a"]), vec![0], t + Duration::from_millis(200), tx2);
    assert_eq!(book.next_deadline(), Some(t + Duration::from_millis(100)));
    assert_eq!(book.overdue(t + Duration::from_millis(150)), [first]);
    assert_eq!(book.persist_ids(&[first]).len(), 1);
    assert_eq!(book.queued_in(0).iter().map(|p| p.job).collect::<Vec<_>>(), [second]);
    assert!(book.persisted(second, false).unwrap().resolved.is_none(), "not stored: not acked");
}

#[test]
fn a_journaled_job_is_acked_then_lives_on_until_delivered_or_held_too_long() {
    let mut book = Book::default();
    let t = Instant::now();
    let (tx1, mut rx1) = oneshot::channel();
    let (tx2, _rx2) = oneshot::channel();
    let first = book.open(event(&["a"]), vec![0], t + Duration::from_millis(100), tx1);
    let second = book.open(event(&["a"]), vec![0], t + Duration::from_millis(100), tx2);
    book.started(&FastRef { job: first, index: 0 });
    let late = book.overdue(t + Duration::from_millis(150));
    let events = book.journal(&late, t + Duration::from_secs(60));
    assert_eq!(events.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [first, second]);
    assert!(book.journal(&late, t).is_empty(), "asked once");
    assert_eq!((book.unacked(), book.unkept()), (2, 0), "asked, not yet on disk: still unacked");
    let (resolved, store) = book.journaled_now(first, true);
    resolved.expect("on disk: ack it").send(Resolution::Now).unwrap();
    assert!(!store);
    assert!(matches!(rx1.try_recv(), Ok(Resolution::Now)));
    assert!(matches!(book.journaled_now(second, false), (None, true)), "not on disk: store it instead");
    assert_eq!(book.unacked(), 1);
    assert_eq!(book.next_deadline(), Some(t + Duration::from_secs(60)), "the held job's second deadline");
    // Delivered from memory: its fast log line retires the journal entry; nothing to ack.
    let done = book.finished(&FastRef { job: first, index: 0 }, record(0, DELIVERED)).delivered.unwrap();
    assert_eq!((done.journaled, done.resolved.is_none()), (Some(first), true));
    // Held too long instead: stored, and its commit acks nothing (it was acked).
    let (tx3, _rx3) = oneshot::channel();
    let third = book.open(event(&["a"]), vec![0], t, tx3);
    book.journal(&[third], t + Duration::from_secs(60));
    book.journaled_now(third, true);
    assert!(book.held_too_long(t + Duration::from_secs(59)).is_empty());
    let stored = book.held_too_long(t + Duration::from_secs(61));
    assert_eq!((stored.len(), stored[0].journaled), (1, Some(third)));
    let persisted = book.persisted(third, true).unwrap();
    assert!(persisted.acked && persisted.resolved.is_none());
    assert_eq!((book.unacked(), book.unkept()), (1, 1), "the second is back to unacked, unkept");
}
