//! Nothing waits forever: what is due goes out, whatever came before it. A batched
//! backlog drains after an outage with no new message to wake it, deliveries held by a
//! rate limit go before newer ones when the hold ends, and `fleethook test` answers at
//! once for an endpoint it knows is away. Real mosquitto, real HTTP, the real binary.

mod common;

use std::collections::HashMap;
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
    let bed = prioritised().subscription("ops", &down.url(), BATCHED).start();
    bed.publish(&three_missions_and_an_alert());
    assert!(bed.wait_count("SELECT COUNT(*) FROM deliveries WHERE state = 'pending'", 4));
    let ep = down.up_scripted(first.clone(), Reply::Status(200));
    let back = Instant::now();
    let all = || {
        let got = seqs_arrived(&ep);
        (0..4).all(|s| got.contains(&s)) || (!first.is_empty() && bed.deliveries("pending") == 0)
    };
    // Offline probes come at most 500 ms apart here; then max_wait (2 s) at most.
    assert!(wait_until(Duration::from_secs(15), all), "the backlog sat: {:?}, pending {}", seqs_arrived(&ep), bed.deliveries("pending"));
    println!("drained {:?} after the return", back.elapsed());
    assert_eq!(bed.deliveries("pending"), 0, "nothing is left pending");
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
    assert!(wait_until(Duration::from_secs(80), || all_arrived_with_2xx(&ep, N)), "not all delivered within 2 × 20 holds");
    let requests = ep.requests();
    let attempt = |r: &common::Request| r.header("x-fleethook-attempt").unwrap().parse::<u32>().unwrap();
    let seq = |r: &common::Request| r.json()["data"]["seq"].as_u64().unwrap();
    // The first wave: first attempts before any retry.
    let first_retry = requests.iter().position(|r| attempt(r) > 1).expect("something was retried");
    let wave: Vec<u64> = requests[..first_retry].iter().map(seq).collect();
    let mut retried_at: HashMap<u64, usize> = HashMap::new();
    let mut new_at: Vec<(u64, usize)> = Vec::new();
    for (i, r) in requests.iter().enumerate().skip(first_retry) {
        if attempt(r) == 2 && wave.contains(&seq(r)) {
            retried_at.entry(seq(r)).or_insert(i);
        } else if attempt(r) == 1 {
            new_at.push((seq(r), i));
        }
    }
    assert_eq!(retried_at.len(), wave.len(), "every delivery of the first wave was retried: {wave:?}");
    let last_retry = *retried_at.values().max().unwrap();
    // A newer first attempt may overlap the last retries by one request, no more.
    let overtaking: Vec<_> = new_at.iter().filter(|(_, i)| *i < last_retry).collect();
    assert!(overtaking.len() <= 1, "newer deliveries went before the held ones: wave {wave:?}, overtaking {overtaking:?}");
    let mut in_order: Vec<(usize, u64)> = retried_at.iter().map(|(s, i)| (*i, *s)).collect();
    in_order.sort();
    let order: Vec<u64> = in_order.iter().map(|(_, s)| *s).collect();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted, "the held deliveries go in event order");
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
