//! The bandwidth budget (issue #18): a daily budget holds normal and low events while
//! high ones pass, and they drain in priority order when the budget allows; the metered
//! profile holds low events until the link is unmetered again, and only trusted users may
//! switch it; `max_rate` caps the bytes per second, per subscription and for the link.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const LONG: Duration = Duration::from_secs(30);

/// Routes for each priority, on top of the shared config.
fn config(port: u16, link: &str) -> String {
    base_config(port).replace("[heartbeat]", "socket_mode = \"0666\"\n[heartbeat]")
        + link
        + r#"
[[route]]
topic = "fleet/+/urgent"
event = "urgent.{/kind}"
priority = "high"

[[route]]
topic = "fleet/+/chatter"
event = "chatter.{/kind}"
priority = "low"
"#
}

fn message(kind: &str, n: usize) -> (String, Vec<u8>) {
    let body = serde_json::json!({"kind": kind, "seq": n, "status": "completed", "mission_id": format!("m-{n}")});
    (format!("fleet/agv-1/{kind}"), body.to_string().into_bytes())
}

fn types(ep: &Endpoint) -> Vec<String> {
    ep.requests().iter().map(|r| r.json()["type"].as_str().unwrap_or("?").to_string()).collect()
}

fn sub_status(agent: &Agent, name: &str) -> Value {
    agent.cli_json(&["status"])["subscriptions"].as_array().unwrap().iter().find(|s| s["name"] == name).unwrap().clone()
}

#[test]
fn over_its_daily_budget_only_high_goes_and_the_rest_drains_in_priority_order_when_it_allows() {
    let broker = Mosquitto::start();
    let ep = Endpoint::start(Reply::Status(200));
    let dir = tempfile::tempdir().unwrap();
    let budgeted = |budget: &str| {
        config(broker.port, "")
            + &subscription("cell", &ep.url(), &format!("daily_budget = \"{budget}\"\nmax_in_flight = 1"))
    };
    let agent = Agent::start(dir.path(), &budgeted("1KiB"));
    agent.wait_subscribed();
    // Two requests spend 1 KiB: the first goes, and at most one more.
    publish(broker.port, &[message("mission", 1), message("mission", 2), message("mission", 3)]);
    assert!(wait_until(LONG, || sub_status(&agent, "cell")["held"]
        .as_str()
        .is_some_and(|h| h.contains("daily budget"))));
    std::thread::sleep(Duration::from_millis(300));
    let spent = ep.count();
    assert!((1..=2).contains(&spent), "the budget stops normal events: {spent} sent");
    let s = sub_status(&agent, "cell");
    assert_eq!(s["budget_left"], 0, "{s}");
    assert!(s["sent_bytes_24h"].as_u64().unwrap() >= 1024, "{s}");
    assert!(agent.log().contains("sent its daily budget"), "{}", agent.log());

    // High still goes; normal and low wait, their retries untouched.
    publish(
        broker.port,
        &[message("chatter", 10), message("urgent", 11), message("chatter", 12), message("urgent", 13)],
    );
    assert!(wait_until(LONG, || ep.count() == spent + 2));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(types(&ep)[spent..], ["urgent.urgent", "urgent.urgent"]);
    assert_eq!(agent.count("SELECT COUNT(*) FROM deliveries WHERE state = 'pending'"), (3 - spent + 2) as i64);
    assert_eq!(agent.count("SELECT COUNT(*) FROM deliveries WHERE budget_used > 0"), 0, "waiting spends no retry");

    // A bigger budget (a reload): normal drains before low.
    agent.rewrite_config(&budgeted("1MiB"));
    agent.signal("HUP");
    assert!(wait_until(LONG, || ep.count() == 7), "{:?}", types(&ep));
    let after: Vec<String> = types(&ep)[spent + 2..].to_vec();
    let normal = 3 - spent;
    assert!(after[..normal].iter().all(|t| t == "mission.completed"), "normal first: {after:?}");
    assert!(after[normal..].iter().all(|t| t == "chatter.chatter"), "then low: {after:?}");
    for r in ep.requests() {
        verify(&r, fleethook::sign::Scheme::Standard, "X-Fleethook");
    }
}

#[test]
fn a_metered_link_holds_low_events_until_unmetered_and_strangers_cannot_switch_it() {
    let broker = Mosquitto::start();
    let ep = Endpoint::start(Reply::Status(200));
    let dir = tempfile::tempdir().unwrap();
    let config = config(broker.port, "[link.metered]\nhold = \"low\"\n") + &subscription("cell", &ep.url(), "");
    let mut agent = Agent::start(dir.path(), &config);
    agent.wait_subscribed();
    let socket = agent.dir.join("status.sock");

    let refused = as_nobody(&socket, &["link", "metered"]);
    assert!(!refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("forbidden"));
    assert_eq!(agent.cli_json(&["status"])["link"]["profile"], "unmetered");

    let out = agent.cli(&["link", "metered"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("now metered"));
    // The profile outlives a restart.
    assert!(agent.terminate().success());
    agent.spawn();
    agent.wait_subscribed();
    assert_eq!(agent.cli_json(&["status"])["link"]["profile"], "metered");

    publish(broker.port, &[message("chatter", 1), message("mission", 2), message("chatter", 3), message("urgent", 4)]);
    assert!(wait_until(LONG, || ep.count() == 2));
    std::thread::sleep(Duration::from_millis(500));
    let mut sent = types(&ep);
    sent.sort();
    assert_eq!(sent, ["mission.completed", "urgent.urgent"], "low waits on a metered link");
    assert_eq!(sub_status(&agent, "cell")["held"], "low waits: metered link");

    let refused = as_nobody(&socket, &["link", "unmetered"]);
    assert!(!refused.status.success());
    assert_eq!(ep.count(), 2);
    assert!(agent.cli(&["link", "unmetered"]).status.success());
    assert!(wait_until(LONG, || ep.count() == 4), "{:?}", types(&ep));
    assert!(types(&ep)[2..].iter().all(|t| t == "chatter.chatter"));
    assert!(sub_status(&agent, "cell")["held"].is_null());

    // NetworkManager's dispatcher hook, with `busctl` answering as NetworkManager does.
    let bin = tempfile::tempdir().unwrap();
    let busctl = bin.path().join("busctl");
    std::fs::write(&busctl, "#!/bin/sh\necho \"$NM_METERED\"\n").unwrap();
    std::fs::set_permissions(&busctl, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_fleethook"), bin.path().join("fleethook")).unwrap();
    let hook = |action: &str, metered: &str| {
        let status =
            std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/fleethook-nm-dispatcher"))
                .args(["wwan0", action])
                .env("PATH", format!("{}:/usr/bin:/bin", bin.path().display()))
                .env("NM_METERED", metered)
                .env("FLEETHOOK_SOCKET", &socket)
                .output()
                .unwrap();
        assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
        agent.cli_json(&["status"])["link"]["profile"].as_str().unwrap().to_string()
    };
    assert_eq!(hook("up", "u 3"), "metered", "a guessed yes is metered");
    assert_eq!(hook("pre-down", "u 4"), "metered", "other actions change nothing");
    assert_eq!(hook("connectivity-change", "u 0"), "metered", "unknown changes nothing");
    assert_eq!(hook("connectivity-change", "u 2"), "unmetered");
}

/// A request's bytes on the wire as the agent counts them, near enough.
fn wire_bytes(r: &Request) -> f64 {
    let headers: usize = r.headers.iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum();
    (r.body.len() + headers + r.path.len() + 16) as f64
}

/// The bytes after the first request over the time they took, at most: a rate of `rate`
/// bytes per second with one second's burst and one request's overshoot, and 10 % for
/// counting headers from the receiver's side.
fn assert_paced(name: &str, reqs: &[Request], rate: f64) {
    assert!(reqs.len() >= 4, "{name}: {} requests", reqs.len());
    let first: Instant = reqs[0].at;
    let span = reqs.last().unwrap().at.duration_since(first).as_secs_f64();
    let bytes: f64 = reqs[1..].iter().map(wire_bytes).sum();
    let biggest = reqs.iter().map(wire_bytes).fold(0.0, f64::max);
    let allowed = (rate * (span + 1.0) + biggest) * 1.1;
    println!("{name}: {bytes:.0} bytes in {span:.2} s, at most {allowed:.0}");
    assert!(bytes <= allowed, "{name}: {bytes:.0} bytes in {span:.2} s is faster than {rate} B/s");
}

#[test]
fn max_rate_paces_a_subscription_and_the_link() {
    let broker = Mosquitto::start();
    let (slow, shared) = (Endpoint::start(Reply::Status(200)), Endpoint::start(Reply::Status(200)));
    let dir = tempfile::tempdir().unwrap();
    let config = config(broker.port, "[link]\nmax_rate = \"3KiB/s\"\n")
        + &subscription("slow", &slow.url(), "max_rate = \"1KiB/s\"\nevents = [\"mission.*\"]")
        + &subscription("shared", &shared.url(), "events = [\"urgent.*\"]");
    let agent = Agent::start(dir.path(), &config);
    agent.wait_subscribed();
    publish(broker.port, &(1..=6).map(|n| message("mission", n)).collect::<Vec<_>>());
    publish(broker.port, &(1..=14).map(|n| message("urgent", n)).collect::<Vec<_>>());
    assert!(wait_until(Duration::from_secs(60), || slow.count() == 6 && shared.count() == 14));
    assert_paced("slow (1 KiB/s)", &slow.requests(), 1024.0);
    let mut all = slow.requests();
    all.extend(shared.requests());
    all.sort_by_key(|r| r.at);
    assert_paced("link (3 KiB/s)", &all, 3072.0);
    let status = agent.cli_json(&["status"]);
    assert_eq!(status["link"]["max_rate"], 3072);
    let sent: u64 =
        status["subscriptions"].as_array().unwrap().iter().map(|s| s["sent_bytes_24h"].as_u64().unwrap()).sum();
    let received: f64 = all.iter().map(wire_bytes).sum();
    assert!((sent as f64) > received * 0.8 && (sent as f64) < received * 1.25, "counted {sent}, received {received}");
}
