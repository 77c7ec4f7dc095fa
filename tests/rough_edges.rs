//! What a skeptical user found (issue #16): each test here failed before its fix. Real
//! mosquitto, the real binary, real HTTP servers.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

const LONG: Duration = Duration::from_secs(20);

/// A collapsing route and a receiver slower than the publisher: an attempt already out
/// when a newer event arrives is not `superseded` if it lands; only what was never sent
/// (or never landed) is.
#[test]
fn collapse_never_marks_a_delivered_event_superseded() {
    let ep = Endpoint::start(Reply::Slow(Duration::from_millis(300), 200));
    // Answers slower than write_behind: the events are stored, where collapse applies.
    let bed = Bed::new()
        .storage("write_behind = \"100ms\"")
        .route("topic = \"fleet/+/battery\"\nevent = \"robot.battery\"\ndevice_id = \"{topic.1}\"\ncollapse = true")
        .subscription("ops", &ep.url(), "")
        .start();
    const N: usize = 6;
    for n in 0..N {
        let body = serde_json::json!({"seq": n, "level": 90 - n}).to_string().into_bytes();
        bed.publish(&[("fleet/agv-1/battery".to_string(), body)]);
        std::thread::sleep(Duration::from_millis(100));
    }
    let ended = || bed.count("SELECT COUNT(*) FROM deliveries WHERE state IN ('delivered', 'superseded')");
    assert!(wait_until(LONG, || ended() == N as i64 && ep.count() > 0), "{}", bed.log());
    std::thread::sleep(Duration::from_millis(500));
    let received: std::collections::HashSet<String> =
        ep.requests().iter().map(|r| r.json()["delivery_id"].as_str().unwrap().to_string()).collect();
    for id in &received {
        let state: String = bed
            .db()
            .query_row("SELECT state FROM deliveries WHERE id = ?1", [id], |r| r.get(0))
            .unwrap_or_else(|_| "delivered".into()); // sent from memory: never stored
        assert_eq!(state, "delivered", "{id} reached the receiver");
        let superseded_rows =
            bed.count(&format!("SELECT COUNT(*) FROM attempts WHERE delivery_id = '{id}' AND outcome = 'superseded'"));
        assert_eq!(superseded_rows, 0, "{id} reached the receiver, yet its log says superseded");
    }
    let counter = |o: &str| bed.counter("ops", o);
    assert_eq!(counter("delivered"), received.len() as i64, "delivered counts what the receiver got");
    assert_eq!(counter("delivered") + counter("superseded"), N as i64);
}

/// Offline probes that never connected are not attempts the receiver saw: its first
/// request for a delivery says `Attempt: 1`, the retry after its 503 says 2.
#[test]
fn the_attempt_header_counts_what_reached_the_endpoint() {
    let down = Down::new();
    let bed = Bed::new().subscription("ops", &down.url(), "").start();
    bed.publish(&[mission("agv-1", 0, "completed")]);
    assert!(wait_until(LONG, || bed.count("SELECT COUNT(*) FROM attempts") >= 3), "probes while offline");
    let ep = down.up_scripted(vec![Reply::Status(503)], Reply::Status(200));
    let got = ep.wait_for(2, LONG);
    assert_eq!(got[0].header("x-fleethook-attempt"), Some("1"));
    assert_eq!(got[1].header("x-fleethook-attempt"), Some("2"));
}

fn text(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// Filters that can match nothing are refused with the valid list; pause and resume say
/// what they did; `test` refuses a paused subscription at once and queues nothing; a
/// transport error is said as such, not `HTTP null`.
#[test]
fn the_cli_refuses_what_cannot_work_and_says_what_it_did() {
    let bed = Bed::new().subscription("ops", &Down::new().url(), "").start();

    for args in [["queue", "--state", "bogus"], ["queue", "--state", "evicted"], ["log", "--outcome", "bogus"]] {
        let out = bed.cli(&args);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(text(&out).contains("possible values"), "{args:?}: {}", text(&out));
    }
    // The socket refuses them too, for scripts that speak the protocol.
    let socket = bed.dir.join("status.sock");
    let answer = fleethook::status::client::call(
        &socket,
        &fleethook::status::Request::Queue { subscription: None, state: Some("bogus".into()), limit: None },
    );
    let refused = answer.expect_err("an unknown state is refused").to_string();
    assert!(refused.contains("pending, failed, delivered, expired, superseded"), "{refused}");

    for args in [["queue", "--subscription", "nosuch"], ["log", "--subscription", "nosuch"]] {
        let out = bed.cli(&args);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(text(&out).contains("no subscription named `nosuch`"), "{args:?}: {}", text(&out));
    }
    let out = bed.cli(&["replay", "--subscription", "ops", "--since", "1h", "--until", "2h"]);
    assert!(!out.status.success(), "an --until before --since was accepted");
    assert!(text(&out).contains("before --since"), "{}", text(&out));

    let out = bed.cli(&["test", "ops"]);
    assert!(text(&out).contains("no answer"), "{}", text(&out));
    assert!(!text(&out).contains("null"), "{}", text(&out));
    assert!(!out.status.success(), "a test delivery that failed exits non-zero");

    let out = bed.cli(&["pause", "ops"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok: ops is paused\n");
    let before = bed.count("SELECT COUNT(*) FROM events WHERE type = 'fleethook.test'");
    let out = bed.cli(&["test", "ops"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("`ops` is paused"), "{}", text(&out));
    assert_eq!(bed.count("SELECT COUNT(*) FROM events WHERE type = 'fleethook.test'"), before, "nothing queued");
    let out = bed.cli(&["resume", "ops"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok: ops is online\n");
}

/// Every argument says what it is, and flags appear only where they mean something.
#[test]
fn help_describes_every_argument_and_offers_only_flags_that_mean_something() {
    let help = |cmd: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_fleethook")).args([cmd, "--help"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for cmd in [
        "queue",
        "log",
        "show",
        "retry",
        "replay",
        "pause",
        "resume",
        "test",
        "emit",
        "top",
        "status",
        "quarantine",
        "metrics",
    ] {
        let h = help(cmd);
        for line in h.lines().map(str::trim).filter(|l| l.starts_with("--") || l.starts_with('<') || l.starts_with('['))
        {
            let described = line.split("  ").filter(|p| !p.trim().is_empty()).count() > 1;
            assert!(described, "`fleethook {cmd}`: `{line}` has no description");
        }
    }
    for cmd in ["check", "secret", "run", "demo", "receive"] {
        let h = help(cmd);
        assert!(!h.contains("--json") && !h.contains("--socket"), "`fleethook {cmd}` offers socket flags:\n{h}");
    }
    for cmd in ["check", "secret", "status"] {
        assert!(!help(cmd).contains("--log-format"), "`fleethook {cmd}` offers --log-format");
    }
}

fn lines_with(log: &str, level: &str, text: &str) -> usize {
    log.lines().filter(|l| l.contains(level) && l.contains(text)).count()
}

/// A broker that never answers and an endpoint that goes away and comes back: a WARN
/// for each, once (not per retry), and an INFO when the endpoint is back.
#[test]
fn an_operator_hears_once_of_a_broker_that_never_connects_and_of_an_endpoint_that_goes_offline() {
    let dir = tempfile::tempdir().unwrap();
    let nobody = free_port();
    let lonely = Agent::start(dir.path(), &(base_config(nobody) + &subscription("ops", "http://127.0.0.1:9/x", "")));
    assert!(wait_until(LONG, || lonely.log().matches("MQTT connect failed again").count() >= 2), "{}", lonely.log());
    assert_eq!(lines_with(&lonely.log(), "WARN", "Cannot connect to the MQTT broker"), 1, "{}", lonely.log());
    drop(lonely);

    let down = Down::new();
    let bed = Bed::new().subscription("ops", &down.url(), "").start();
    bed.publish(&(0..5).map(|n| mission("agv-1", n, "completed")).collect::<Vec<_>>());
    assert!(wait_until(LONG, || bed.count("SELECT COUNT(*) FROM attempts WHERE outcome = 'offline'") >= 4));
    let ep = down.up(Reply::Status(200));
    ep.wait_for(5, LONG);
    assert!(wait_until(LONG, || lines_with(&bed.log(), "INFO", "The endpoint answers again") == 1), "{}", bed.log());
    let log = bed.log();
    assert_eq!(lines_with(&log, "WARN", "The endpoint cannot be reached"), 1, "{log}");
}

/// `log` leads with the cause, and `show` prints every attempt's whole error and what
/// the endpoint answered.
#[test]
fn log_and_show_say_why_an_attempt_failed() {
    let ep = Endpoint::scripted(vec![Reply::Hang, Reply::Status(500)], Reply::Status(200));
    let bed = Bed::new().subscription("ops", &ep.url(), "timeout = \"1s\"").start();
    bed.publish(&[mission("agv-1", 0, "completed")]);
    ep.wait_for(3, LONG);
    assert!(bed.wait_deliveries("delivered", 1));
    let log = text(&bed.cli(&["log"]));
    let timeout_row = log.lines().find(|l| l.contains("retry") && l.contains(" - ")).unwrap_or_else(|| panic!("{log}"));
    assert!(timeout_row.contains("operation timed out"), "the cause is cut off: {timeout_row}");
    assert!(!timeout_row.contains("http://"), "{timeout_row}");
    let id: String = bed.db().query_row("SELECT id FROM deliveries", [], |r| r.get(0)).unwrap();
    let show = text(&bed.cli(&["show", &id]));
    assert!(show.contains("error: operation timed out"), "{show}");
    assert!(show.contains("HTTP 500") && show.contains("response: ok"), "{show}");
}

/// A config with no routes, or a pattern no route can produce, loads with a warning that
/// names file, line and key.
#[test]
fn check_warns_of_routes_missing_and_patterns_that_match_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleethook.toml");
    let check = |text: &str| {
        std::fs::write(&path, text.replace("{dir}", &dir.path().display().to_string())).unwrap();
        let out =
            Command::new(env!("CARGO_BIN_EXE_fleethook")).arg("check").arg("--config").arg(&path).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let typo = base_config(1883) + &subscription("ops", "http://127.0.0.1:9/x", "events = [\"misson.*\", \"alert.*\"]");
    let said = check(&typo);
    let line = typo.replace("{dir}", "x").lines().position(|l| l.starts_with("events =")).unwrap() + 1;
    let want =
        format!("warning: {}:{line}: subscription[0].events[0]: `misson.*` matches no event type", path.display());
    assert!(said.contains(&want), "{said}");
    assert!(!said.contains("`alert.*`"), "alert.* is made by a route: {said}");

    let no_routes = base_config(1883).split("[[route]]").next().unwrap().to_string()
        + &subscription("ops", "http://127.0.0.1:9/x", "");
    let said = check(&no_routes);
    assert!(said.contains("no [[route]] is configured"), "{said}");
}

/// After an outage the backlog drains by priority: the high events published last arrive
/// first, and each priority in event order.
#[test]
fn a_backlog_drains_high_priority_first() {
    let down = Down::new();
    let bed = Bed::new()
        .route("topic = \"fleet/+/battery\"\nevent = \"robot.battery\"\npriority = \"low\"")
        .route("topic = \"fleet/+/estop\"\nevent = \"robot.estop\"\npriority = \"high\"")
        .subscription("ops", &down.url(), "max_in_flight = 1")
        .start();
    let low: Vec<_> =
        (0..20).map(|n| ("fleet/agv-1/battery".to_string(), format!("{{\"seq\":{n}}}").into_bytes())).collect();
    let high: Vec<_> =
        (0..5).map(|n| ("fleet/agv-1/estop".to_string(), format!("{{\"seq\":{n}}}").into_bytes())).collect();
    bed.publish(&low);
    bed.publish(&high);
    assert!(bed.wait_deliveries("pending", 25));
    let ep = down.up(Reply::Status(200));
    let got = ep.wait_for(25, LONG);
    let types: Vec<String> = got.iter().map(|r| r.json()["type"].as_str().unwrap().to_string()).collect();
    // The one in flight as the endpoint came back (an offline probe) may be a low one.
    let first_high = types.iter().position(|t| t == "robot.estop").unwrap();
    assert!(first_high <= 1, "{types:?}");
    assert!(types[first_high..first_high + 5].iter().all(|t| t == "robot.estop"), "{types:?}");
    let lows: Vec<u64> = got
        .iter()
        .filter(|r| r.json()["type"] == "robot.battery")
        .map(|r| r.json()["data"]["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(lows.len(), 20, "{types:?}");
    // Within a priority, event order, also for events held by the fast path and stored
    // after later ones: only the one out as an offline probe may stand apart.
    let longest_in_order = (0..lows.len())
        .fold(Vec::<usize>::new(), |mut best, i| {
            let before = (0..i).filter(|&j| lows[j] < lows[i]).map(|j| best[j]).max().unwrap_or(0);
            best.push(before + 1);
            best
        })
        .into_iter()
        .max()
        .unwrap_or(0);
    assert!(longest_in_order >= 19, "{lows:?}");
}

/// A field tech finds what ingest could not take in, sees why and what it was, fixes the
/// route, takes it in after all, and deletes what stays bad.
#[test]
fn the_quarantine_is_listed_shown_released_after_a_route_fix_and_purged() {
    let ep = Endpoint::start(Reply::Status(200));
    let mut bed = Bed::new().subscription("ops", &ep.url(), "").start();
    // The bridge says `state` where the route reads `status`; one message is not JSON.
    let renamed = br#"{"state":"completed","mission_id":"m-7"}"#.to_vec();
    bed.publish(&[("fleet/agv-1/mission".into(), renamed.clone())]);
    bed.publish(&[("fleet/agv-1/mission".into(), b"status: done".to_vec())]);
    assert!(wait_until(LONG, || bed.count("SELECT COUNT(*) FROM quarantine") == 2), "{}", bed.log());

    let listed = bed.cli_json(&["quarantine"]);
    let rows = listed.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{listed}");
    assert!(rows[0]["reason"].as_str().unwrap().starts_with("payload is not JSON"), "{listed}");
    assert!(rows[1]["reason"].as_str().unwrap().contains("/status"), "{listed}");
    assert_eq!(rows[1]["topic"], "fleet/agv-1/mission");
    assert_eq!(rows[1]["size"], renamed.len());
    let (bad, renamed_seq) = (rows[0]["seq"].as_i64().unwrap(), rows[1]["seq"].as_i64().unwrap());
    let table = text(&bed.cli(&["quarantine"]));
    assert!(table.contains("REASON") && table.contains("payload is not JSON"), "{table}");
    let shown = bed.cli_json(&["quarantine", "show", &renamed_seq.to_string()]);
    assert_eq!(shown["payload"].as_str().unwrap().as_bytes(), &renamed[..], "{shown}");

    // Released after a wrong fix: it stays, with the reason it fails for now; nothing is sent.
    bed.rewrite_config(&bed.config().replace("mission.{/status}", "mission.{/phase}"));
    bed.signal("HUP");
    assert!(wait_until(LONG, || bed.log().contains("Configuration reloaded")), "{}", bed.log());
    let early = bed.cli_json(&["quarantine", "release", &renamed_seq.to_string()]);
    assert_eq!(early["released"], 0, "{early}");
    assert!(early["results"][0]["reason"].as_str().unwrap().starts_with("still quarantined"), "{early}");
    let shown = bed.cli_json(&["quarantine", "show", &renamed_seq.to_string()]);
    assert!(shown["reason"].as_str().unwrap().contains("/phase"), "the new reason is stored: {shown}");

    bed.rewrite_config(&bed.config().replace("mission.{/status}", "mission.{/state}"));
    bed.signal("HUP");
    assert!(wait_until(LONG, || bed.log().matches("Configuration reloaded").count() == 2), "{}", bed.log());
    let out = bed.cli(&["quarantine", "release", "--all"]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains(&format!("{renamed_seq}: released as mission.completed")), "{said}");
    assert!(said.contains(&format!("{bad}: kept: still quarantined: payload is not JSON")), "{said}");
    let got = ep.wait_for(1, LONG);
    assert_eq!(got[0].json()["type"], "mission.completed");
    assert_eq!(got[0].json()["data"]["mission_id"], "m-7");
    verify(&got[0], fleethook::sign::Scheme::Standard, "X-Fleethook");
    assert_eq!(bed.count("SELECT COUNT(*) FROM quarantine"), 1, "the released one left the quarantine");

    let purged = bed.cli_json(&["quarantine", "purge", "--all"]);
    assert_eq!(purged["purged"], 1, "{purged}");
    assert_eq!(bed.cli_json(&["quarantine"]).as_array().unwrap().len(), 0);
    let refused = bed.cli(&["quarantine", "purge"]);
    assert!(!refused.status.success(), "purge names messages or says --all");
    // Numbers are never given again: a stale `purge N` cannot delete a newer message.
    bed.publish(&[("fleet/agv-1/mission".into(), b"still not json".to_vec())]);
    assert!(wait_until(LONG, || bed.count("SELECT COUNT(*) FROM quarantine") == 1), "{}", bed.log());
    let newest = bed.cli_json(&["quarantine"])[0]["seq"].as_i64().unwrap();
    assert!(newest > renamed_seq.max(bad), "{newest} reuses a purged number");
    for action in ["purge", "release"] {
        let stale = bed.cli(&["quarantine", action, &bad.to_string()]);
        assert!(!stale.status.success(), "{action} of a purged number exits non-zero");
        assert!(text(&stale).contains(&bad.to_string()), "{}", text(&stale));
    }
    assert_eq!(bed.count("SELECT COUNT(*) FROM quarantine"), 1, "the newer message is still there");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(ep.count(), 1, "released once, sent once");
    bed.terminate();
}
