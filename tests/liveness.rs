//! Nothing waits forever: what is due goes out, whatever came before it. A batched
//! backlog drains after an outage with no new message to wake it, deliveries held by a
//! rate limit go before newer ones when the hold ends, and `fleethook test` answers at
//! once for an endpoint it knows is away. Real mosquitto, real HTTP, the real binary.

mod common;

use std::time::{Duration, Instant};

use common::*;

const BATCHED: &str = "batch = { max_events = 5, max_wait = \"2s\" }";

/// Missions are high priority, alerts low: a batch holds one priority only.
fn prioritised() -> BedBuilder {
    Bed::new()
        .edit("topic = \"fleet/+/mission\"\n", "topic = \"fleet/+/mission\"\npriority = \"high\"\n")
        .edit("topic = \"fleet/+/alert\"\n", "topic = \"fleet/+/alert\"\npriority = \"low\"\n")
}

fn three_missions_and_an_alert() -> Vec<(String, Vec<u8>)> {
    let mut m: Vec<_> = (0..3).map(|n| mission("agv-1", n, "completed")).collect();
    m.push(("fleet/agv-1/alert".to_string(), br#"{"kind":"battery","seq":3}"#.to_vec()));
    m
}

/// Every request's envelopes' `seq`s (a batch carries several).
fn seqs_arrived(ep: &Endpoint) -> Vec<u64> {
    let mut out = Vec::new();
    for r in ep.requests() {
        match r.json() {
            serde_json::Value::Array(items) => out.extend(items.iter().filter_map(|e| e["data"]["seq"].as_u64())),
            one => out.extend(one["data"]["seq"].as_u64()),
        }
    }
    out
}

fn a_batched_backlog_drains_after_an_outage(first: Vec<Reply>) {
    let down = Down::new();
    let bed = prioritised().env("RUST_LOG", "fleethook=debug").subscription("ops", &down.url(), BATCHED).start();
    // Two first, and a probe or two while they wait; then the rest.
    let messages = three_missions_and_an_alert();
    bed.publish(&messages[..2]);
    assert!(bed.wait_count("SELECT COUNT(*) FROM deliveries WHERE state = 'pending'", 2));
    std::thread::sleep(Duration::from_millis(1500));
    bed.publish(&messages[2..]);
    assert!(bed.wait_count("SELECT COUNT(*) FROM deliveries WHERE state = 'pending'", 4));
    std::thread::sleep(Duration::from_millis(1500));
    let ep = down.up_scripted(first.clone(), Reply::Status(200));
    let back = Instant::now();
    let all = || {
        let got = seqs_arrived(&ep);
        (0..4).all(|s| got.contains(&s)) || (!first.is_empty() && bed.deliveries("pending") == 0)
    };
    // Offline probes come at most 500 ms apart here; then max_wait (2 s) at most.
    assert!(
        wait_until(Duration::from_secs(15), all),
        "the backlog sat: {:?}, pending {}",
        seqs_arrived(&ep),
        bed.deliveries("pending")
    );
    println!("drained {:?} after the return", back.elapsed());
    assert!(wait_until(Duration::from_secs(10), || bed.deliveries("pending") == 0), "nothing is left pending");
    println!(
        "requests: {:?}",
        ep.requests().iter().map(|r| (r.body.len(), r.at.duration_since(back))).collect::<Vec<_>>()
    );
    if std::env::var_os("SHOWLOG").is_some() {
        println!("{}", bed.log());
    }
}

#[test]
fn a_batched_backlog_drains_after_an_outage_without_new_messages() {
    a_batched_backlog_drains_after_an_outage(Vec::new());
}

#[test]
fn a_batched_backlog_drains_after_a_batch_answered_401() {
    a_batched_backlog_drains_after_an_outage(vec![Reply::Status(401)]);
}

/// An endpoint that answers 429 (`Retry-After: 2`) to every delivery's first attempt:
/// when a hold ends, the deliveries it held go first, in event order, before newer ones.
#[test]
fn rate_limited_deliveries_go_before_newer_ones_when_the_hold_ends() {
    let ep = Endpoint::start(Reply::ThrottleFirstAttempts(2));
    let bed = Bed::new().subscription("ops", &ep.url(), "").start();
    const N: u64 = 20;
    bed.missions(N as usize);
    assert!(
        wait_until(Duration::from_secs(80), || all_arrived_with_2xx(&ep, N)),
        "not all delivered within 2 × 20 holds"
    );
    let requests = ep.requests();
    let attempt = |r: &common::Request| r.header("x-fleethook-attempt").unwrap().parse::<u32>().unwrap();
    let seq = |r: &common::Request| r.json()["data"]["seq"].as_u64().unwrap();
    // The first burst: first attempts within half a second of the first request, all
    // answered 429. Every delivery of it must be retried before any newer delivery's
    // first attempt (requests in flight together may arrive 200 ms out of order).
    let t0 = requests[0].at;
    let burst: Vec<u64> = requests
        .iter()
        .filter(|r| attempt(r) == 1 && r.at.duration_since(t0) < Duration::from_millis(500))
        .map(seq)
        .collect();
    assert!(!burst.is_empty() && burst.len() < N as usize, "a burst, then a hold: {burst:?}");
    let retried = |s: u64| requests.iter().find(|r| seq(r) == s && attempt(r) == 2).map(|r| r.at).unwrap();
    let last_retry = burst.iter().map(|&s| retried(s)).max().unwrap();
    let newer_first: Vec<(u64, Duration)> = requests
        .iter()
        .filter(|r| attempt(r) == 1 && !burst.contains(&seq(r)) && r.at + Duration::from_millis(200) < last_retry)
        .map(|r| (seq(r), r.at.duration_since(t0)))
        .collect();
    println!("burst {burst:?}; last retry of it at {:?}", last_retry.duration_since(t0));
    assert!(newer_first.is_empty(), "newer deliveries went before the held ones were retried: {newer_first:?}");
    // And the held ones go in event order.
    let mut held = burst.clone();
    held.sort();
    for pair in held.windows(2) {
        assert!(
            retried(pair[0]) <= retried(pair[1]) + Duration::from_millis(200),
            "the held deliveries go in event order: {} was retried well after {}",
            pair[0],
            pair[1]
        );
    }
}

fn all_arrived_with_2xx(ep: &Endpoint, n: u64) -> bool {
    let ok: std::collections::HashSet<u64> = ep
        .requests()
        .iter()
        .filter(|r| r.header("x-fleethook-attempt") != Some("1"))
        .map(|r| r.json()["data"]["seq"].as_u64().unwrap())
        .collect();
    (0..n).all(|s| ok.contains(&s))
}

/// `fleethook test` on a subscription the agent knows is offline answers at once, with
/// the state and the last error, and sends nothing.
#[test]
fn test_on_an_offline_subscription_answers_at_once() {
    let down = Down::new();
    let bed = Bed::new().subscription("ops", &down.url(), "").start();
    bed.missions(1);
    let offline = || bed.cli_json(&["status"])["subscriptions"][0]["state"] == "offline";
    assert!(wait_until(Duration::from_secs(20), offline));
    let started = Instant::now();
    let out = bed.cli(&["test", "ops"]);
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(took < Duration::from_secs(5), "took {took:?}: {text}");
    assert!(text.contains("offline") && text.contains("last error"), "{text}");
    assert_eq!(bed.count("SELECT COUNT(*) FROM events WHERE type = 'fleethook.test'"), 0, "nothing was queued");
}
