//! End to end: real mosquitto → the real agent binary → real HTTP endpoints.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::*;
use fleethook::sign::Scheme;

const LONG: Duration = Duration::from_secs(20);

#[test]
fn qos1_messages_reach_each_matching_subscription_signed_in_every_scheme() {
    let standard = Endpoint::start(Reply::Status(200));
    let github = Endpoint::start(Reply::Status(204));
    let stripe = Endpoint::start(Reply::Status(202));
    let alerts = Endpoint::start(Reply::Status(200));
    let exact = Endpoint::start(Reply::Status(200));
    let bed = Bed::new()
        .subscription("standard", &standard.url(), "events = [\"mission.*\"]")
        .subscription(
            "github",
            &github.url(),
            "events = [\"*\"]\nsignature = \"sha256\"\nheader_prefix = \"X-RoboTrace\"",
        )
        .subscription("stripe", &stripe.url(), "events = [\"mission.*\"]\nsignature = \"stripe\"\nmethod = \"PUT\"")
        .subscription("alerts", &alerts.url(), "events = [\"alert.*\"]")
        .subscription("exact", &exact.url(), "events = [\"mission.completed\"]")
        .start();

    let statuses = ["started", "completed"];
    let messages: Vec<_> = (0..20).map(|n| mission(&format!("agv-{}", n % 3), n, statuses[n % 2])).collect();
    bed.publish(&messages);

    let got_standard = standard.wait_for(20, LONG);
    let got_github = github.wait_for(20, LONG);
    let got_stripe = stripe.wait_for(20, LONG);
    let got_exact = exact.wait_for(10, LONG);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!((standard.count(), github.count(), stripe.count(), exact.count()), (20, 20, 20, 10));
    assert_eq!(alerts.count(), 0, "a subscription whose patterns match nothing gets nothing");
    assert!(got_exact.iter().all(|r| r.json()["type"] == "mission.completed"));

    // One event id per message across subscriptions; delivery ids differ per subscription.
    let mut ids_by_seq: HashMap<u64, HashSet<String>> = HashMap::new();
    let mut delivery_ids = HashSet::new();
    for (reqs, scheme, prefix) in [
        (&got_standard, Scheme::Standard, "X-Fleethook"),
        (&got_github, Scheme::Sha256, "X-RoboTrace"),
        (&got_stripe, Scheme::Stripe, "X-Fleethook"),
    ] {
        for r in reqs.iter() {
            verify(r, scheme, prefix);
            let body = r.json();
            let seq = body["data"]["seq"].as_u64().unwrap();
            let (topic, payload) = &messages[seq as usize];
            assert_eq!(body["data"], serde_json::from_slice::<serde_json::Value>(payload).unwrap());
            assert_eq!(body["device_id"], topic.split('/').nth(1).unwrap());
            assert_eq!(body["type"], format!("mission.{}", statuses[seq as usize % 2]));
            assert!(body["timestamp"].as_str().unwrap().ends_with('Z'));
            let delivery_id = body["delivery_id"].as_str().unwrap().to_string();
            assert_eq!(r.header(&format!("{prefix}-Delivery")), Some(delivery_id.as_str()));
            assert_eq!(r.header(&format!("{prefix}-Event")), body["type"].as_str());
            assert_eq!(r.header(&format!("{prefix}-Attempt")), Some("1"));
            assert_eq!(r.header(&format!("{prefix}-Device")), body["device_id"].as_str());
            assert_eq!(r.header("content-type"), Some("application/json"));
            assert!(r.header("user-agent").unwrap().starts_with("fleethook/"));
            if scheme == Scheme::Standard {
                assert_eq!(r.header("webhook-id"), Some(delivery_id.as_str()));
            }
            assert!(delivery_ids.insert(delivery_id), "delivery ids are unique per (event, subscription)");
            ids_by_seq.entry(seq).or_default().insert(body["id"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(ids_by_seq.len(), 20);
    assert!(ids_by_seq.values().all(|ids| ids.len() == 1), "one event id per message: {ids_by_seq:?}");
    assert!(got_stripe.iter().all(|r| r.method == "PUT"));
    assert!(got_standard.iter().all(|r| r.method == "POST" && r.path == "/hook"));

    // An alert reaches `alerts` and `github` (`*`), not the mission-only ones.
    bed.publish(&[("fleet/agv-9/alert".into(), br#"{"kind":"estop","reason":"bumper"}"#.to_vec())]);
    let a = alerts.wait_for(1, LONG);
    assert_eq!(a[0].json()["type"], "alert.estop");
    assert_eq!(a[0].json()["device_id"], "agv-9");
    github.wait_for(21, LONG);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!((standard.count(), stripe.count(), github.count()), (20, 20, 21));
}

#[test]
fn server_errors_are_retried_until_delivered_and_404_is_not_retried() {
    let flaky = Endpoint::scripted(vec![Reply::Status(500), Reply::Status(503)], Reply::Status(200));
    let missing = Endpoint::start(Reply::Status(404));
    let bed = Bed::new().subscription("flaky", &flaky.url(), "").subscription("missing", &missing.url(), "").start();
    bed.publish(&[mission("agv-1", 1, "completed")]);

    let got = flaky.wait_for(3, LONG);
    assert_eq!(got.len(), 3);
    let attempts: Vec<_> = got.iter().map(|r| r.header("X-Fleethook-Attempt").unwrap().to_string()).collect();
    assert_eq!(attempts, ["1", "2", "3"]);
    let ids: HashSet<_> = got.iter().map(|r| r.header("X-Fleethook-Delivery").unwrap().to_string()).collect();
    assert_eq!(ids.len(), 1, "every attempt carries the same delivery id");
    assert!(got[1].at.duration_since(got[0].at) >= Duration::from_millis(150), "the retry waited for the schedule");
    for r in &got {
        verify(r, Scheme::Standard, "X-Fleethook");
    }

    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(missing.count(), 1, "a 404 is not retried");
    assert_eq!(bed.count("SELECT n FROM counters WHERE subscription = 'missing' AND outcome = 'failed'"), 1);
    assert_eq!(bed.count("SELECT n FROM counters WHERE subscription = 'flaky' AND outcome = 'delivered'"), 1);
    assert_eq!(bed.count("SELECT COUNT(*) FROM attempts WHERE subscription = 'flaky'"), 3);
}

/// Slots are freed before an attempt's result commits, so the next request starts at once;
/// a delivery whose result is still being written must not be fetched and sent again.
#[test]
fn a_burst_is_sent_once_per_delivery_while_results_commit_behind_it() {
    const N: usize = 1500;
    const REFUSED: usize = 40;
    let parallel = Endpoint::start(Reply::Status(200));
    let fifo = Endpoint::start(Reply::Status(200));
    let flaky = Endpoint::scripted(vec![Reply::Status(503); REFUSED], Reply::Status(200));
    let bed = Bed::new()
        .full_sync()
        .subscription("parallel", &parallel.url(), "max_in_flight = 32")
        .subscription("fifo", &fifo.url(), "ordering = \"fifo\"")
        .subscription("flaky", &flaky.url(), "retry = [\"50ms\", \"50ms\"]\nmax_in_flight = 16")
        .start();
    let messages: Vec<_> = (0..N).map(|n| mission("agv-1", n, "completed")).collect();
    bed.publish(&messages);

    let long = Duration::from_secs(60);
    parallel.wait_for(N, long);
    let fifo_got = fifo.wait_for(N, long);
    flaky.wait_for(N + REFUSED, long);
    assert!(wait_until(long, || bed.count("SELECT COUNT(*) FROM deliveries WHERE state = 'pending'") == 0));
    std::thread::sleep(Duration::from_millis(500));
    for (name, endpoint, expected) in [("parallel", &parallel, N), ("fifo", &fifo, N), ("flaky", &flaky, N + REFUSED)] {
        let got = endpoint.requests();
        let ids: HashSet<_> = got.iter().map(|r| r.header("X-Fleethook-Delivery").unwrap().to_string()).collect();
        assert_eq!(ids.len(), N, "{name}: every delivery arrived");
        assert_eq!(got.len(), expected, "{name}: no delivery was sent while its last result was being written");
    }
    let order: Vec<_> = fifo_got.iter().map(|r| r.json()["data"]["seq"].as_u64().unwrap()).collect();
    assert_eq!(order, (0..N as u64).collect::<Vec<_>>(), "fifo keeps event order");
    let delivered = "SELECT SUM(n) FROM counters WHERE outcome = 'delivered'";
    assert_eq!(bed.count(delivered), 3 * N as i64);
}

#[test]
fn events_queued_at_sigterm_are_delivered_after_restart() {
    let down = Down::new();
    let mut bed = Bed::new().subscription("later", &down.url(), "").start();
    let messages: Vec<_> = (0..5).map(|n| mission("agv-1", n, "completed")).collect();
    bed.publish(&messages);
    assert!(wait_until(LONG, || bed.count("SELECT COUNT(*) FROM deliveries WHERE state = 'pending'") == 5));
    assert!(wait_until(LONG, || bed.count("SELECT COUNT(*) FROM attempts WHERE outcome = 'offline'") >= 1));
    let status = bed.terminate();
    assert!(status.success(), "SIGTERM exits 0, got {status:?}");
    assert_eq!(bed.count("SELECT COUNT(*) FROM deliveries WHERE state = 'pending'"), 5);
    assert_eq!(
        bed.count("SELECT MAX(budget_used) FROM deliveries"),
        0,
        "an unreachable endpoint does not spend the retry budget"
    );

    let endpoint = down.up(Reply::Status(200));
    bed.spawn();
    let got = endpoint.wait_for(5, LONG);
    std::thread::sleep(Duration::from_millis(300));
    let seqs: HashSet<_> = got.iter().map(|r| r.json()["data"]["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (0..5).collect::<HashSet<_>>());
    assert_eq!(endpoint.count(), 5, "each delivered once");
}

#[test]
fn the_broker_holds_messages_published_while_the_agent_is_down() {
    let endpoint = Endpoint::start(Reply::Status(200));
    let mut bed = Bed::new().subscription("ops", &endpoint.url(), "").start();
    bed.publish(&[mission("agv-1", 0, "started")]);
    endpoint.wait_for(1, LONG);
    assert!(bed.terminate().success());

    let while_down: Vec<_> = (1..6).map(|n| mission("agv-1", n, "completed")).collect();
    bed.publish(&while_down);
    bed.spawn();
    let got = endpoint.wait_for(6, LONG);
    let seqs: HashSet<_> = got.iter().map(|r| r.json()["data"]["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (0..6).collect::<HashSet<_>>(), "the persistent session kept what was published meanwhile");
}

#[test]
fn malformed_and_oversize_payloads_are_quarantined_and_the_next_good_one_is_delivered() {
    let endpoint = Endpoint::start(Reply::Status(200));
    let mut bed = Bed::new()
        .edit("client_id =", "max_payload = \"64KiB\"\nclient_id =")
        .subscription("ops", &endpoint.url(), "")
        .start();
    let topic = "fleet/agv-1/mission".to_string();
    bed.publish(&[
        (topic.clone(), b"{not json".to_vec()),
        (topic.clone(), b"[1, 2, 3]".to_vec()),
        (topic.clone(), vec![b' '; 100 * 1024]),
        (topic.clone(), br#"{"no_status": true}"#.to_vec()),
        mission("agv-1", 7, "completed"),
    ]);
    let got = endpoint.wait_for(1, LONG);
    assert_eq!(got[0].json()["data"]["seq"], 7);
    assert!(wait_until(LONG, || bed.count("SELECT COUNT(*) FROM quarantine") == 4));
    let reasons = bed.texts("SELECT reason FROM quarantine ORDER BY seq");
    assert!(reasons[0].contains("not JSON"), "{reasons:?}");
    assert!(reasons[1].contains("array"), "{reasons:?}");
    assert!(reasons[2].contains("max_payload"), "{reasons:?}");
    assert!(reasons[3].contains("/status"), "{reasons:?}");
    assert!(bed.is_running());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(endpoint.count(), 1);
    // Quarantined messages were acked: a restart does not bring them back.
    assert!(bed.terminate().success());
    bed.spawn();
    bed.wait_subscribed();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(bed.count("SELECT COUNT(*) FROM quarantine"), 4);
}
