//! The lane's transitions, driven by hand: fetch, answer, start, finish, release.

use std::path::Path;
use std::time::{Duration, Instant};

use super::*;
use crate::config::Config;
use crate::outbox::Due;

fn lane(extra: &str) -> Lane {
    crate::init_crypto();
    let config = Config::parse(
        &format!(
            "[[subscription]]\nname = \"s\"\nurl = \"https://example.com/h\"\nsignature = \"none\"\nmax_in_flight = 2\n{extra}\n"
        ),
        Path::new("t.toml"),
    )
    .unwrap();
    let sub = config.subscriptions[0].clone();
    Lane::new(
        sub,
        super::super::http::Client {
            http: reqwest::Client::new(),
            token: None,
            compress: Default::default(),
            probe_at: None,
            names: std::sync::Arc::new(crate::delivery::http::Names::new("X-Fleethook")),
        },
        Endpoint::new(Duration::from_secs(60), None, true),
    )
}

fn due(seq: i64) -> Due {
    Due {
        seq,
        delivery_id: format!("d{seq}"),
        subscription: "s".into(),
        attempts: 0,
        budget_used: 0,
        event_id: format!("e{seq}"),
        event_type: "t".into(),
        device_id: "r".into(),
        created_ms: 0,
        data: "{}".into(),
        clock: None,
        priority: 1,
        next_attempt_ms: 0,
    }
}

fn batch(seqs: &[i64]) -> DueBatch {
    DueBatch { rows: seqs.iter().copied().map(due).collect(), ..Default::default() }
}

/// The lane's first fetch goes out and is answered with `seqs`.
fn supplied(l: &mut Lane, now: Instant, seqs: &[i64]) {
    let fetch = l.next_starts(now, 32).unwrap().fetch.expect("a fresh lane fetches");
    l.fetched(batch(seqs), fetch.asked);
}

fn started(s: &Starts) -> Vec<i64> {
    s.due.iter().map(|d| d.seq).collect()
}

#[test]
fn a_new_lane_fetches_once_and_starts_what_the_answer_brings() {
    let mut l = lane("");
    let now = Instant::now();
    let first = l.next_starts(now, 32).unwrap();
    assert!(first.due.is_empty());
    let fetch = first.fetch.expect("a fresh lane fetches");
    assert_eq!((fetch.asked, fetch.fifo), (PREFETCH, false));
    l.mark_dirty();
    assert!(l.next_starts(now, 32).unwrap().fetch.is_none(), "one fetch at a time");
    l.fetched(batch(&[1, 2, 3]), fetch.asked);
    let s = l.next_starts(now, 32).unwrap();
    assert_eq!(started(&s), [1, 2], "max_in_flight = 2");
    assert!(s.fetch.is_none(), "the short answer proved the queue empty");
    assert!(l.next_starts(now, 32).is_none(), "nothing changed: nothing to look at");
}

#[test]
fn new_work_during_a_fetch_is_not_lost() {
    let mut l = lane("");
    let now = Instant::now();
    let fetch = l.next_starts(now, 32).unwrap().fetch.unwrap();
    // A commit created deliveries while the fetch was out; its answer may predate them.
    l.poke();
    l.fetched(batch(&[]), fetch.asked);
    let again = l.next_starts(now, 32).unwrap();
    assert!(again.fetch.is_some(), "an answer older than the new work cannot prove the queue empty");
}

#[test]
fn a_short_answer_waits_for_new_work() {
    let mut l = lane("");
    let now = Instant::now();
    supplied(&mut l, now, &[]);
    l.mark_dirty();
    assert!(l.next_starts(now, 32).unwrap().fetch.is_none(), "exhausted until poked");
    l.poke();
    assert!(l.next_starts(now, 32).unwrap().fetch.is_some());
}

#[test]
fn what_was_released_during_a_fetch_is_skipped_from_its_answer() {
    let mut l = lane("");
    let now = Instant::now();
    supplied(&mut l, now, &[1]);
    let s = l.next_starts(now, 32).unwrap();
    assert_eq!(started(&s), [1]);
    // 1 finishes (delivered) while a new fetch is out, and its result commits.
    l.poke();
    let fetch = l.next_starts(now, 32).unwrap().fetch.expect("poked: fetch again");
    assert_eq!(fetch.skip, [1], "in flight: the outbox leaves it out");
    l.finished(&[1], &Verdict::Delivered, Some(200), false, Duration::from_millis(1), now);
    l.release(1, false);
    // The answer was read before the commit and still shows 1 as due.
    l.fetched(batch(&[1, 2]), fetch.asked);
    assert_eq!(started(&l.next_starts(now, 32).unwrap()), [2], "1 is not sent twice");
}

#[test]
fn a_fast_delivery_settled_during_a_fetch_is_skipped_from_its_answer() {
    let mut l = lane("");
    let now = Instant::now();
    supplied(&mut l, now, &[]);
    // A fast attempt of d7 is out; its job is stored after its deadline (row 7).
    l.fast_started("d7");
    l.fast_stored("d7");
    l.poke();
    let fetch = l.next_starts(now, 32).unwrap().fetch.expect("poked: fetch again");
    // It lands and its result commits while the fetch is out…
    l.fast_finished(&Verdict::Delivered, Some(200), Duration::from_millis(1), now);
    l.fast_settled("d7", false);
    // …whose answer was read before that commit and still shows row 7 due.
    l.fetched(batch(&[7, 8]), fetch.asked);
    assert_eq!(started(&l.next_starts(now, 32).unwrap()), [8], "d7 is not sent twice");
}

#[test]
fn the_global_limit_caps_what_starts() {
    let mut l = lane("");
    let now = Instant::now();
    supplied(&mut l, now, &[1, 2, 3]);
    assert!(l.next_starts(now, 0).unwrap().due.is_empty());
    l.mark_dirty();
    assert_eq!(started(&l.next_starts(now, 1).unwrap()), [1]);
    l.not_started(1);
    let fetch = l.next_starts(now, 1).unwrap();
    assert_eq!(started(&fetch), [2], "1 went back to the outbox; the prefetched queue goes on");
}

#[test]
fn a_fifo_lane_waits_for_its_head_to_be_recorded() {
    let mut l = lane("ordering = \"fifo\"");
    let now = Instant::now();
    let fetch = l.next_starts(now, 32).unwrap().fetch.unwrap();
    assert_eq!((fetch.asked, fetch.fifo), (1, true));
    l.fetched(batch(&[1]), fetch.asked);
    assert_eq!(started(&l.next_starts(now, 32).unwrap()), [1]);
    l.finished(
        &[1],
        &Verdict::Retry { after: None, reason: "503".into() },
        Some(503),
        false,
        Duration::from_millis(1),
        now,
    );
    let s = l.next_starts(now, 32).unwrap();
    assert!(s.due.is_empty() && s.fetch.is_none(), "the head is recording: nothing behind it may go");
    l.release(1, true);
    let s = l.next_starts(now, 32).unwrap();
    assert_eq!(s.fetch.map(|f| f.asked), Some(1), "the head is fetched again before anything behind it");
}

#[test]
fn a_paused_lane_starts_nothing_until_resumed() {
    let mut l = lane("");
    let now = Instant::now();
    supplied(&mut l, now, &[1]);
    l.pause();
    assert!(l.next_starts(now, 32).unwrap().due.is_empty());
    assert_eq!(l.view().state, State::Paused);
    l.resume();
    assert_eq!(started(&l.next_starts(now, 32).unwrap()), [1]);
}

#[test]
fn a_batch_waits_to_fill_and_a_wait_that_found_no_room_sets_no_timer_in_the_past() {
    let mut l = lane("batch = { max_events = 10, max_wait = \"100ms\" }");
    let t0 = Instant::now();
    let asked = l.next_starts(t0, 4).unwrap().fetch.expect("a fetch").asked;
    l.fetched(batch(&[1, 2]), asked);
    assert!(l.next_starts(t0, 4).unwrap().batches.is_empty(), "two events wait for more");
    assert_eq!(l.next_wake(), Some(t0 + Duration::from_millis(100)));
    // The wait is over, but no global slot is free: no timer in the past (it would spin
    // the dispatcher's loop); a freed slot wakes the lane instead.
    let later = t0 + Duration::from_millis(200);
    assert!(l.next_starts(later, 0).unwrap().batches.is_empty());
    assert!(l.next_wake().is_none_or(|w| w > later), "{:?}", l.next_wake());
    l.mark_dirty();
    let s = l.next_starts(later, 1).unwrap();
    assert_eq!(s.batches.len(), 1);
    assert_eq!(s.batches[0].iter().map(|d| d.seq).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(l.unused_share(2), 1, "a batch is one request");
}
