//! Robot clocks lie (DESIGN guarantee 7): the real binary under libfaketime (Debian's
//! `faketime`), with `DONT_FAKE_MONOTONIC=1` so that only the wall clock lies, as on a
//! robot. The fake time lives in a file the test rewrites, so a running agent's clock
//! steps like a robot's when NTP arrives.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use common::*;

const LONG: Duration = Duration::from_secs(60);

fn libfaketime() -> PathBuf {
    ["/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib/arm-linux-gnueabihf"]
        .iter()
        .map(|d| Path::new(d).join("faketime/libfaketime.so.1"))
        .find(|p| p.exists())
        .expect("libfaketime is installed (run ./scripts/test.sh, which installs faketime)")
}

/// An agent whose wall clock reads what `clock_file` says ("@2001-01-01 00:00:00", or
/// "+0" for the true time).
fn agent_with_clock(dir: &Path, config: &str, clock_file: &Path, when: &str) -> Agent {
    std::fs::write(clock_file, when).unwrap();
    let lib = libfaketime();
    let file = clock_file.display().to_string();
    Agent::start_env(
        dir,
        config,
        &[
            ("LD_PRELOAD", lib.to_str().unwrap()),
            ("FAKETIME_TIMESTAMP_FILE", &file),
            ("FAKETIME_NO_CACHE", "1"),
            ("DONT_FAKE_MONOTONIC", "1"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ],
    )
}

/// Queued while the clock said 2001, with the endpoint down: after the clock is stepped
/// to now (restart included), nothing has expired and everything is delivered.
#[test]
fn events_queued_in_2001_do_not_expire_when_the_clock_is_stepped_to_now() {
    let broker = Mosquitto::start();
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let clock = dir.path().join("clock");
    let config = base_config(broker.port) + &subscription("ops", &format!("http://127.0.0.1:{port}/hook"), "");
    let mut agent = agent_with_clock(dir.path(), &config, &clock, "@2001-01-01 00:00:00");
    agent.wait_subscribed();
    assert!(agent.log().contains("clock=\"wrong\""), "the agent knows its clock is wrong: {}", agent.log());
    assert!(!agent.log().contains('\u{1b}'), "no colour escapes in a log file");
    const N: u64 = 10;
    let messages: Vec<_> = (0..N as usize).map(|n| mission("agv-1", n, "completed")).collect();
    let published = SystemTime::now();
    publish(broker.port, &messages);
    assert!(wait_until(LONG, || agent.count("SELECT COUNT(*) FROM deliveries WHERE state = 'pending'") == N as i64));
    // NTP arrives while it runs…
    std::fs::write(&clock, "+0").unwrap();
    std::thread::sleep(Duration::from_secs(2));
    // …and it is restarted with the true clock.
    assert!(agent.terminate().success());
    agent.env.clear();
    agent.spawn();
    agent.wait_subscribed();
    let ep = Endpoint::start_on(port, Reply::Status(200), Vec::new());
    assert!(wait_until(LONG, || all_arrived(&ep, N)), "{} of {N} arrived; {}", ep.count(), agent.log());
    assert_eq!(agent.count("SELECT COUNT(*) FROM deliveries WHERE state = 'expired'"), 0, "nothing expired");
    // Taken in "2001", each is dated by the boot's clock once the wall clock is good.
    for r in ep.requests() {
        let body = r.json();
        let ts = humantime::parse_rfc3339(body["timestamp"].as_str().unwrap()).unwrap();
        let off = ts.duration_since(published).unwrap_or_else(|e| e.duration());
        assert!(off < Duration::from_secs(10), "timestamp {} is {off:?} from when it was published", body["timestamp"]);
        assert!(body.get("timestamp_quality").is_none(), "a corrected timestamp is not marked");
    }
}

/// Taken while the clock said 2001 (`wrong`), sent after a restart on a true but
/// unsynced clock: the timestamp cannot be corrected, and it is labelled as what it was
/// when taken, `wrong`, not as the clock is now.
#[test]
fn a_timestamp_taken_under_a_wrong_clock_keeps_that_label_after_a_restart() {
    let broker = Mosquitto::start();
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let clock = dir.path().join("clock");
    // sha256 carries no timestamp, so nothing waits for the clock.
    let config = base_config(broker.port)
        + &subscription("ops", &format!("http://127.0.0.1:{port}/hook"), "signature = \"sha256\"");
    let mut agent = agent_with_clock(dir.path(), &config, &clock, "@2001-01-01 00:00:00");
    agent.wait_subscribed();
    publish(broker.port, &[mission("agv-1", 0, "completed"), mission("agv-1", 1, "completed")]);
    assert!(wait_until(LONG, || agent.count("SELECT COUNT(*) FROM deliveries WHERE state = 'pending'") == 2));
    assert!(agent.terminate().success());
    agent.env = vec![("FLEETHOOK_CLOCK".into(), "unsynced".into())];
    agent.spawn();
    agent.wait_subscribed();
    let ep = Endpoint::start_on(port, Reply::Status(200), Vec::new());
    let got = ep.wait_for(2, LONG);
    for r in &got {
        let body = r.json();
        assert!(body["timestamp"].as_str().unwrap().starts_with("2001-"), "{body}");
        assert_eq!(body["timestamp_quality"], "wrong", "{body}");
    }
}

/// Retries scheduled while the clock ran three years ahead are not put off for three
/// years once it is stepped back.
#[test]
fn retries_scheduled_three_years_ahead_come_on_time_after_the_clock_steps_back() {
    let broker = Mosquitto::start();
    let ep = Endpoint::scripted(vec![Reply::Status(503); 10], Reply::Status(200));
    let dir = tempfile::tempdir().unwrap();
    let clock = dir.path().join("clock");
    let config = base_config(broker.port) + &subscription("ops", &ep.url(), "retry = [\"2s\", \"2s\"]");
    let mut agent = agent_with_clock(dir.path(), &config, &clock, "+1095d");
    agent.wait_subscribed();
    const N: u64 = 10;
    let messages: Vec<_> = (0..N as usize).map(|n| mission("agv-1", n, "completed")).collect();
    publish(broker.port, &messages);
    assert!(wait_until(LONG, || ep.count() >= N as usize), "the first attempts went out");
    // The clock steps back to the truth, and the agent restarts with it.
    std::fs::write(&clock, "+0").unwrap();
    assert!(agent.terminate().success());
    agent.env.clear();
    agent.spawn();
    agent.wait_subscribed();
    assert!(
        wait_until(Duration::from_secs(20), || all_arrived_ok(&ep, N)),
        "retries did not come within their schedule"
    );
}

/// Only the answers that were 2xx, by seq.
fn all_arrived_ok(ep: &Endpoint, n: u64) -> bool {
    // The endpoint answered 503 to the first ten requests, 200 after: a seq arrived
    // properly if it was requested after those.
    let seqs: std::collections::HashSet<u64> =
        ep.requests().iter().skip(10).map(|r| r.json()["data"]["seq"].as_u64().unwrap()).collect();
    (0..n).all(|i| seqs.contains(&i))
}

/// While the clock says 2001, nothing is signed with it (the subscription waits, pending,
/// state `clock`); once the clock is stepped to now, everything goes, and a stock
/// verifier with a 5-minute tolerance accepts every request.
#[test]
fn signatures_wait_for_a_good_clock_and_verify_after_the_step() {
    let broker = Mosquitto::start();
    let ep = Endpoint::start(Reply::Status(200));
    let dir = tempfile::tempdir().unwrap();
    let clock = dir.path().join("clock");
    let config = base_config(broker.port) + &subscription("ops", &ep.url(), "");
    let agent = agent_with_clock(dir.path(), &config, &clock, "@2001-01-01 00:00:00");
    agent.wait_subscribed();
    const N: u64 = 10;
    let messages: Vec<_> = (0..N as usize).map(|n| mission("agv-1", n, "completed")).collect();
    publish(broker.port, &messages);
    assert!(wait_until(LONG, || agent.count("SELECT COUNT(*) FROM deliveries WHERE state = 'pending'") == N as i64));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(ep.count(), 0, "nothing was signed with a 2001 timestamp");
    assert_eq!(agent.count("SELECT COALESCE(MAX(budget_used), 0) FROM deliveries"), 0, "no retry budget spent");
    std::fs::write(&clock, "+0").unwrap();
    assert!(wait_until(LONG, || all_arrived(&ep, N)), "{} of {N} arrived after the step; {}", ep.count(), agent.log());
    for r in ep.requests() {
        verify(&r, fleethook::sign::Scheme::Standard, "X-Fleethook");
        // Taken while the clock said 2001, re-dated once it was good.
        let body = r.json();
        assert!(!body["timestamp"].as_str().unwrap().starts_with("2001"), "a 2001 timestamp: {body}");
    }
}

/// Steps of a day forward and back while a backlog drains: nothing expires, nothing
/// waits beyond its schedule.
#[test]
fn steps_of_a_day_while_a_backlog_drains_neither_expire_nor_delay() {
    let broker = Mosquitto::start();
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let clock = dir.path().join("clock");
    // A short max_age: a day's step forward would expire everything if it counted.
    let config = base_config(broker.port)
        + &subscription("ops", &format!("http://127.0.0.1:{port}/hook"), "max_age = \"1h\"\nmax_in_flight = 1");
    let agent = agent_with_clock(dir.path(), &config, &clock, "+0");
    agent.wait_subscribed();
    const N: u64 = 200;
    let messages: Vec<_> = (0..N as usize).map(|n| mission("agv-1", n, "completed")).collect();
    publish(broker.port, &messages);
    assert!(wait_until(LONG, || agent.count("SELECT COUNT(*) FROM deliveries WHERE state = 'pending'") == N as i64));
    let ep = Endpoint::start_on(port, Reply::Slow(Duration::from_millis(20), 200), Vec::new());
    for step in ["+1d", "-1d", "+2d", "+0"] {
        std::thread::sleep(Duration::from_millis(700));
        std::fs::write(&clock, step).unwrap();
    }
    assert!(wait_until(LONG, || all_arrived(&ep, N)), "{} of {N} arrived; {}", ep.count(), agent.log());
    assert_eq!(agent.count("SELECT COUNT(*) FROM deliveries WHERE state = 'expired'"), 0, "a step expired nothing");
}

/// What is truly old still expires, its age counted across a restart in the same boot.
#[test]
fn a_ttl_counts_time_across_a_restart_and_still_expires() {
    let broker = Mosquitto::start();
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let config =
        base_config(broker.port) + &subscription("ops", &format!("http://127.0.0.1:{port}/hook"), "max_age = \"4s\"");
    let mut agent = Agent::start(dir.path(), &config);
    agent.wait_subscribed();
    publish(broker.port, &[mission("agv-1", 0, "completed")]);
    assert!(wait_until(LONG, || agent.count("SELECT COUNT(*) FROM deliveries WHERE state = 'pending'") == 1));
    assert!(agent.terminate().success());
    // Down for longer than the event's max_age: that time counts.
    std::thread::sleep(Duration::from_secs(5));
    agent.spawn();
    agent.wait_subscribed();
    assert!(
        wait_until(Duration::from_secs(20), || agent.count("SELECT COUNT(*) FROM deliveries WHERE state = 'expired'")
            == 1),
        "the event older than its max_age did not expire; {}",
        agent.log()
    );
}

/// `fleethook test` says plainly how far off the agent's clock is, by the endpoint's
/// `Date` header.
#[test]
fn fleethook_test_reports_the_clock_skew_plainly() {
    let broker = Mosquitto::start();
    let ep = Endpoint::start(Reply::Status(200));
    let dir = tempfile::tempdir().unwrap();
    let clock = dir.path().join("clock");
    // sha256 carries no timestamp: it may go with any clock.
    let config = base_config(broker.port) + &subscription("ops", &ep.url(), "signature = \"sha256\"");
    let agent = agent_with_clock(dir.path(), &config, &clock, "@2001-01-01 00:00:00");
    agent.wait_subscribed();
    let out = agent.cli(&["test", "ops"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("the agent's clock is 26 years behind the receiver's"), "{text}");
}

/// The default `wait` policy: with a time service at work on an unsynced clock
/// (`syncing`), signed deliveries wait, pending, budget untouched, state `clock`. With no
/// time service (`unsynced`: it may never sync) they go.
#[test]
fn the_wait_policy_holds_while_a_time_service_syncs_and_not_forever_without_one() {
    let broker = Mosquitto::start();
    let ep = Endpoint::start(Reply::Status(200));
    let dir = tempfile::tempdir().unwrap();
    let config = base_config(broker.port) + &subscription("ops", &ep.url(), "");
    let mut agent = Agent::start_env(dir.path(), &config, &[("FLEETHOOK_CLOCK", "syncing")]);
    agent.wait_subscribed();
    const N: u64 = 10;
    let messages: Vec<_> = (0..N as usize).map(|n| mission("agv-1", n, "completed")).collect();
    publish(broker.port, &messages);
    assert!(wait_until(LONG, || agent.count("SELECT COUNT(*) FROM deliveries WHERE state = 'pending'") == N as i64));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(ep.count(), 0, "nothing was signed while the clock was syncing");
    assert_eq!(agent.count("SELECT COALESCE(MAX(budget_used), 0) FROM deliveries"), 0, "no retry budget spent");
    let status = agent.cli_json(&["status"]);
    assert_eq!(status["clock"], "syncing", "{status}");
    assert_eq!(status["subscriptions"][0]["state"], "clock", "{status}");
    assert!(agent.terminate().success());
    agent.env = vec![("FLEETHOOK_CLOCK".into(), "unsynced".into())];
    agent.spawn();
    assert!(wait_until(LONG, || all_arrived(&ep, N)), "{} of {N} arrived; {}", ep.count(), agent.log());
    for r in ep.requests() {
        verify(&r, fleethook::sign::Scheme::Standard, "X-Fleethook");
    }
    assert_eq!(agent.cli_json(&["status"])["clock"], "unsynced");
}
