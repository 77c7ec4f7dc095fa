//! What a new user trips over, round 3: a disabled subscription, a filter naming no
//! subscription, `retry` of what is not failed. Real mosquitto, real HTTP, the real binary.

mod common;

use std::time::Duration;

use common::*;

fn said(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

/// `enabled = false` is a state of its own: `status` says `disabled`, and `pause` and
/// `resume` refuse it with the way to enable it, instead of claiming it is online.
#[test]
fn a_disabled_subscription_is_disabled_and_cannot_be_resumed() {
    let ep = Endpoint::start(Reply::Status(200));
    let bed = Bed::new().subscription("on", &ep.url(), "").subscription("off", &ep.url(), "enabled = false").start();
    let state = |name: &str| {
        bed.cli_json(&["status"])["subscriptions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .map(|s| s["state"].as_str().unwrap().to_string())
            .unwrap()
    };
    assert_eq!(state("off"), "disabled");
    for verb in ["resume", "pause"] {
        let out = bed.cli(&[verb, "off"]);
        let text = said(&out);
        assert!(!out.status.success(), "{verb}: {text}");
        assert!(text.contains("enabled = true") && text.contains("reload"), "{verb}: {text}");
    }
    assert_eq!(state("off"), "disabled", "resume changed nothing");
    bed.missions(3);
    assert!(wait_until(Duration::from_secs(20), || ep.count() >= 3));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(ep.count(), 3, "only the enabled subscription delivers");
}

/// A filter that names no subscription is refused with the list of those there are.
#[test]
fn an_unknown_subscription_filter_lists_the_names() {
    let ep = Endpoint::start(Reply::Status(200));
    let bed = Bed::new().subscription("ops", &ep.url(), "").subscription("audit", &ep.url(), "").start();
    for args in [vec!["queue", "--subscription", "nope"], vec!["log", "--subscription", "nope"]] {
        let out = bed.cli(&args);
        let text = said(&out);
        assert!(!out.status.success(), "{args:?}: {text}");
        assert!(text.contains("nope") && text.contains("ops") && text.contains("audit"), "{args:?}: {text}");
    }
}

/// `retry` of an id that does not exist, or of a delivered one, says so and fails.
#[test]
fn retry_of_what_is_not_failed_says_so() {
    let ep = Endpoint::start(Reply::Status(200));
    let bed = Bed::new().storage("write_behind = \"0s\"").subscription("ops", &ep.url(), "").start();
    bed.missions(1);
    assert!(bed.wait_deliveries("delivered", 1));
    let delivered: String = bed.db().query_row("SELECT id FROM deliveries LIMIT 1", [], |r| r.get(0)).unwrap();
    let out = bed.cli(&["retry", "0193b2c4-0000-7000-8000-000000000000"]);
    let text = said(&out);
    assert!(!out.status.success() && text.contains("no event or delivery"), "{text}");
    let out = bed.cli(&["retry", &delivered]);
    let text = said(&out);
    assert!(!out.status.success() && text.contains("not failed") && text.contains("delivered"), "{text}");
}

/// `queue` counts attempts as the endpoint saw them (offline probes apart), and its next
/// attempt is never a time already past: the next probe while offline, none once failed.
#[test]
fn queue_counts_what_the_endpoint_saw_and_never_shows_a_past_next_attempt() {
    let down = Down::new();
    let bed = Bed::new().subscription("ops", &down.url(), "").start();
    bed.missions(1);
    assert!(wait_until(Duration::from_secs(20), || bed.count("SELECT COUNT(*) FROM attempts") >= 3), "probes");
    let now_ms = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let row = bed.cli_json(&["queue"])[0].clone();
    assert_eq!(row["attempts"], 0, "no attempt reached the endpoint: {row}");
    assert!(row["probes"].as_u64().unwrap() >= 2, "{row}");
    assert!(row["next_attempt_ms"].as_i64().unwrap() >= now_ms() - 1000, "the next probe, not the past: {row}");
    let text = String::from_utf8_lossy(&bed.cli(&["queue"]).stdout).to_string();
    assert!(text.contains("probes"), "{text}");

    let _ep = down.up(Reply::Status(400));
    assert!(bed.wait_deliveries("failed", 1));
    let row = bed.cli_json(&["queue", "--state", "failed"])[0].clone();
    assert_eq!(row["attempts"], 1, "one request reached it: {row}");
    assert_eq!(row["next_attempt_ms"], 0, "nothing is next for a failed delivery: {row}");
}
