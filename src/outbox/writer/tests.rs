//! The writer's full-disk rules, driven turn by turn with a filesystem whose free space
//! the test sets: no root, no tmpfs.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::oneshot;

use super::*;
use crate::event::{NewDelivery, Priority};
use crate::health::Liveness;
use crate::outbox::{AttemptRecord, AuditRow, Due, NewEvent, NextState, Read, Terminal};

const PLENTY: u64 = 1 << 30;

/// Free space as the test says; no WAL.
struct FakeDisk(Arc<AtomicU64>);

impl Disk for FakeDisk {
    fn free_bytes(&self) -> Option<u64> {
        Some(self.0.load(Ordering::SeqCst))
    }

    fn wal_bytes(&self) -> u64 {
        0
    }
}

fn writer(dir: &tempfile::TempDir) -> (Outbox, Writer, Arc<AtomicU64>) {
    let free = Arc::new(AtomicU64::new(PLENTY));
    let cfg = StorageConfig::for_tests(dir.path().join("outbox.db"));
    let (outbox, writer) = Writer::open(&cfg, Liveness::new().writer(), Box::new(FakeDisk(free.clone()))).unwrap();
    (outbox, writer, free)
}

fn ingest(seq: u64) -> Command {
    let mut event = NewEvent::local(
        "mission.done",
        "r",
        &serde_json::json!({ "seq": seq }),
        1000,
        vec![NewDelivery { id: crate::event::new_id(), subscription: "s".into(), expires_ms: i64::MAX }],
    );
    event.priority = Priority::Normal;
    Command::Ingest { seq, inbound: Box::new(Inbound::Event(event)), linger: Duration::ZERO }
}

fn due(writer: &mut Writer) -> Vec<Due> {
    let (reply, mut rx) = oneshot::channel();
    let read = Read::Due {
        subscription: "s".into(),
        now_ms: i64::MAX - 1,
        limit: 10,
        fifo: false,
        skip: Vec::new(),
        lowest: 2,
        reply,
    };
    assert_eq!(writer.turn(vec![Command::Read(read)]), Turn::Progress);
    rx.try_recv().expect("reads are answered at once").rows
}

fn delivered(d: &Due) -> (Command, oneshot::Receiver<()>) {
    let (reply, rx) = oneshot::channel();
    let audit =
        AuditRow { subscription: "s".into(), delivery_id: d.delivery_id.clone(), attempt: 1, ..AuditRow::default() };
    let records = vec![AttemptRecord::new(Some(d.seq), audit, NextState::Terminal(Terminal::Delivered))];
    (Command::Write(Write::Record { records, urgent: true, lazy: false, reply }), rx)
}

#[test]
fn a_filesystem_at_its_reserve_holds_ingest_while_results_still_commit() {
    let dir = tempfile::tempdir().unwrap();
    let (outbox, mut w, free) = writer(&dir);
    let acked = outbox.committed();
    assert_eq!(w.turn(vec![ingest(1)]), Turn::Progress);
    assert_eq!(*acked.borrow(), 1, "room: committed, may be acked");

    // Down to the reserve: the next message is held, unacked.
    free.store(100 * 1024, Ordering::SeqCst);
    w.turn(vec![ingest(2)]);
    assert_eq!(*acked.borrow(), 1, "held at the reserve, not acked");
    assert_eq!(w.admission.len(), 1);

    // The first message's delivery result still commits: it is what frees room.
    let first = due(&mut w);
    assert_eq!(first.len(), 1);
    let (record, mut recorded) = delivered(&first[0]);
    assert_eq!(w.turn(vec![record]), Turn::Progress);
    assert!(recorded.try_recv().is_ok(), "the result committed at the reserve");
    let stats = w.store.stats().unwrap();
    assert_eq!(stats.subscription("s").map(|s| s.delivered), Some(1), "counted delivered");
    assert_eq!(
        w.store.delivery_state(&first[0].delivery_id).unwrap(),
        None,
        "at the reserve, finished deliveries are deleted to make room"
    );
    assert_eq!(*acked.borrow(), 1, "the held message still waits");

    // Space returns: the held message goes in on the next look.
    free.store(PLENTY, Ordering::SeqCst);
    w.admission.retry_now(Instant::now());
    w.turn(Vec::new());
    assert_eq!(*acked.borrow(), 2, "committed once there is room");
    assert!(w.admission.is_empty());
    assert_eq!(w.admission.blocked(), None, "admission open again");
}

#[test]
fn results_nobody_waits_on_linger_unless_ingest_is_ready() {
    let dir = tempfile::tempdir().unwrap();
    let (_outbox, mut w, _free) = writer(&dir);
    w.turn(vec![ingest(1)]);
    let first = due(&mut w);
    let (reply, mut recorded) = oneshot::channel();
    let audit = AuditRow { subscription: "s".into(), delivery_id: first[0].delivery_id.clone(), ..AuditRow::default() };
    let records = vec![AttemptRecord::new(Some(first[0].seq), audit, NextState::Terminal(Terminal::Delivered))];
    w.turn(vec![Command::Write(Write::Record { records, urgent: false, lazy: false, reply })]);
    assert!(recorded.try_recv().is_err(), "held for a shared commit");
    w.turn(vec![ingest(2)]);
    assert!(recorded.try_recv().is_ok(), "ingest ready: the held result shares its commit");
}
