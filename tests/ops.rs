//! What an OEM relies on: sd_notify readiness and a watchdog that notices a wedged loop,
//! journald logging, SIGHUP reload, the agent heartbeat, and JSON logs.

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use common::*;

const LONG: Duration = Duration::from_secs(20);

/// Collects sd_notify datagrams sent to a socket the test binds.
struct NotifySocket {
    socket: UnixDatagram,
    path: std::path::PathBuf,
}

impl NotifySocket {
    fn bind(dir: &std::path::Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        NotifySocket { socket, path }
    }

    /// (arrival time, message) for `duration`.
    fn collect(&self, duration: Duration) -> Vec<(Instant, String)> {
        let end = Instant::now() + duration;
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while Instant::now() < end {
            if let Ok(n) = self.socket.recv(&mut buf) {
                out.push((Instant::now(), String::from_utf8_lossy(&buf[..n]).into_owned()));
            }
        }
        out
    }
}

fn count(msgs: &[(Instant, String)], what: &str) -> usize {
    msgs.iter().filter(|(_, m)| m.lines().any(|l| l == what)).count()
}

#[test]
fn ready_watchdog_and_stopping_reach_systemd() {
    let broker = Mosquitto::start();
    let ep = Endpoint::start(Reply::Status(200));
    let dir = tempfile::tempdir().unwrap();
    let notify = NotifySocket::bind(dir.path());
    let config = base_config(broker.port) + &subscription("ops", &ep.url(), "");
    let mut agent = Agent::start_env(
        dir.path(),
        &config,
        &[("NOTIFY_SOCKET", notify.path.to_str().unwrap()), ("WATCHDOG_USEC", "2000000")],
    );
    let msgs = notify.collect(Duration::from_secs(6));
    assert_eq!(count(&msgs, "READY=1"), 1, "{msgs:?}");
    let pings = count(&msgs, "WATCHDOG=1");
    assert!(pings >= 3, "{pings} watchdog pings in 6 s at WATCHDOG_USEC=2000000: {msgs:?}");
    assert!(agent.terminate().success());
    let tail = notify.collect(Duration::from_millis(300));
    assert!(count(&msgs, "STOPPING=1") + count(&tail, "STOPPING=1") >= 1, "STOPPING=1 on shutdown");
}

#[test]
fn a_wedged_loop_stops_the_watchdog_pings() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let notify = NotifySocket::bind(dir.path());
    let config = base_config(broker.port) + &subscription("ops", "http://127.0.0.1:9/hook", "");
    let agent = Agent::start_env(
        dir.path(),
        &config,
        &[
            ("NOTIFY_SOCKET", notify.path.to_str().unwrap()),
            ("WATCHDOG_USEC", "1000000"),
            ("FLEETHOOK_FAULT_WEDGE", "writer"),
            ("FLEETHOOK_FAULT_WEDGE_AFTER", "3"),
        ],
    );
    // The writer wedges 3 s after it starts; pings stop once it has missed beats for
    // STALL_AFTER (2 s). A slow start under a loaded CI machine shifts both by a little.
    let start = Instant::now();
    let msgs = notify.collect(Duration::from_secs(9));
    let before = msgs
        .iter()
        .filter(|(t, m)| m.contains("WATCHDOG=1") && t.duration_since(start) < Duration::from_millis(2800))
        .count();
    let late = msgs
        .iter()
        .filter(|(t, m)| m.contains("WATCHDOG=1") && t.duration_since(start) > Duration::from_millis(7000))
        .count();
    assert!(before >= 1, "pings while healthy: {msgs:?}");
    assert_eq!(late, 0, "no pings once the writer is wedged: {msgs:?}");
    assert!(agent.log().contains("not making progress") && agent.log().contains("writer"), "{}", agent.log());
}

#[test]
fn logs_go_to_journald_under_systemd() {
    let path = std::path::Path::new("/run/systemd/journal/socket");
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let config = base_config(broker.port) + &subscription("ops", "http://127.0.0.1:9/hook", "");
    let journald_listening = path.exists() && UnixDatagram::unbound().and_then(|s| s.send_to(b"", path)).is_ok();
    if path.exists() && !journald_listening {
        // A stale socket file from an earlier run: nobody reads it.
        let _ = std::fs::remove_file(path);
    }
    if journald_listening {
        // A real journald: ask it.
        let mut agent = Agent::start_env(dir.path(), &config, &[("JOURNAL_STREAM", "8:1234")]);
        std::thread::sleep(Duration::from_secs(2));
        assert!(agent.terminate().success());
        let out = std::process::Command::new("journalctl")
            .args(["-t", "fleethook", "--since", "-1min", "-o", "cat"])
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).contains("fleethook is running"));
        return;
    }
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let journal = UnixDatagram::bind(path).unwrap();
    struct Remove(&'static str);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(self.0);
        }
    }
    let _remove = Remove("/run/systemd/journal/socket");
    journal.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut agent = Agent::start_env(dir.path(), &config, &[("JOURNAL_STREAM", "8:1234")]);
    let mut got: Vec<std::collections::HashMap<String, String>> = Vec::new();
    let end = Instant::now() + LONG;
    let mut buf = vec![0u8; 65536];
    let running = |m: &std::collections::HashMap<String, String>| {
        m.get("MESSAGE").is_some_and(|v| v.contains("fleethook is running"))
    };
    while Instant::now() < end && !got.iter().any(running) {
        if let Ok(n) = journal.recv(&mut buf) {
            got.push(journal_fields(&buf[..n]));
        }
    }
    let status = agent.terminate();
    assert!(status.success(), "{status:?}: {}", agent.log());
    let entry = got.iter().find(|m| running(m)).unwrap_or_else(|| panic!("no journald datagram: {got:?}"));
    assert_eq!(entry.get("SYSLOG_IDENTIFIER").map(String::as_str), Some("fleethook"), "{entry:?}");
    assert!(
        matches!(entry.get("PRIORITY").map(String::as_str), Some("5" | "6")),
        "INFO maps to a journald priority: {entry:?}"
    );
    assert_eq!(
        entry.get("F_DEVICE_ID").map(String::as_str),
        Some("test-robot"),
        "structured fields travel as journald fields"
    );
    assert!(!agent.log().contains("fleethook is running"), "under journald, stderr stays quiet");
}

#[test]
fn sighup_reloads_good_configs_and_refuses_bad_ones() {
    let broker = Mosquitto::start();
    let first = Endpoint::start(Reply::Status(200));
    let second = Endpoint::start(Reply::Status(200));
    let down = free_port();
    let dir = tempfile::tempdir().unwrap();
    let before = base_config(broker.port)
        + &subscription("first", &first.url(), "")
        + &subscription("later", &format!("http://127.0.0.1:{down}/hook"), "");
    let agent = Agent::start(dir.path(), &before);
    agent.wait_subscribed();
    publish(broker.port, &[mission("agv-1", 0, "started")]);
    first.wait_for(1, LONG);
    assert!(wait_until(LONG, || agent.count("SELECT COUNT(*) FROM deliveries WHERE state = 'pending'") == 1));

    let after = before.clone() + &subscription("second", &second.url(), "");
    agent.rewrite_config(&after);
    agent.signal("HUP");
    assert!(wait_until(LONG, || agent.log().contains("Configuration reloaded")), "{}", agent.log());
    assert!(wait_until(LONG, || agent.log().matches("Subscribed to the route topics").count() >= 2));
    publish(broker.port, &[mission("agv-1", 1, "completed")]);
    assert_eq!(second.wait_for(1, LONG)[0].json()["data"]["seq"], 1, "the new subscription gets new events");
    first.wait_for(2, LONG);

    agent.rewrite_config(&after.replace("[[subscription]]", "[[subscripton]]"));
    agent.signal("HUP");
    assert!(wait_until(LONG, || agent.log().contains("invalid; the old one stays")), "{}", agent.log());
    publish(broker.port, &[mission("agv-1", 2, "completed")]);
    second.wait_for(2, LONG);
    assert_eq!(first.wait_for(3, LONG).len(), 3, "the old configuration keeps working");

    // Queued work survived both reloads.
    let later = Endpoint::start_on(down, Reply::Status(200), Vec::new());
    assert_eq!(later.wait_for(3, LONG).len(), 3);
}

#[test]
fn heartbeats_carry_the_robots_vitals_in_json_logs() {
    let broker = Mosquitto::start();
    let ep = Endpoint::start(Reply::Status(200));
    let dir = tempfile::tempdir().unwrap();
    let config = base_config(broker.port).replace("interval = \"0s\"", "interval = \"1s\"")
        + &subscription("vitals", &ep.url(), "events = [\"agent.heartbeat\"]");
    let agent = Agent::start_env(dir.path(), &config, &[("FLEETHOOK_LOG_FORMAT", "json")]);
    let got = ep.wait_for(2, LONG);
    assert!(got.len() >= 2, "a heartbeat a second");
    let hb = got[1].json();
    assert_eq!(hb["type"], "agent.heartbeat");
    assert_eq!(hb["device_id"], "test-robot");
    let d = &hb["data"];
    for key in [
        "cpu_percent",
        "memory_used_bytes",
        "memory_total_bytes",
        "disk_free_bytes",
        "uptime_s",
        "agent_uptime_s",
        "queue_depth",
    ] {
        assert!(d[key].is_number(), "{key} in {d}");
    }
    assert!(d["memory_total_bytes"].as_u64().unwrap() > d["memory_used_bytes"].as_u64().unwrap());
    assert_eq!(d["agent_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(d["mqtt"]["connected"], true);
    assert_eq!(d["endpoints"]["vitals"], "online");
    // What the link costs: the first heartbeat went out before the second was taken.
    assert_eq!(d["link"]["profile"], "unmetered");
    let sent = d["link"]["sent_bytes_24h"]["vitals"].as_u64().unwrap_or(0);
    assert!(sent as usize > got[0].body.len(), "{d}");
    let log = agent.log();
    let first = log.lines().next().unwrap_or("");
    let line: serde_json::Value =
        serde_json::from_str(first).unwrap_or_else(|e| panic!("--log-format json: {e}: {first}"));
    assert!(line["level"].is_string() && line["message"].is_string(), "{line}");
}

/// Parses journald's native protocol: `KEY=value\n`, or `KEY\n<u64 le length><bytes>\n`.
fn journal_fields(mut data: &[u8]) -> std::collections::HashMap<String, String> {
    let mut out = std::collections::HashMap::new();
    while !data.is_empty() {
        let Some(end) = data.iter().position(|&b| b == b'=' || b == b'\n') else { break };
        let key = String::from_utf8_lossy(&data[..end]).into_owned();
        if data[end] == b'=' {
            let rest = &data[end + 1..];
            let stop = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
            out.insert(key, String::from_utf8_lossy(&rest[..stop]).into_owned());
            data = &rest[(stop + 1).min(rest.len())..];
        } else {
            let rest = &data[end + 1..];
            if rest.len() < 8 {
                break;
            }
            let len = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
            let value = &rest[8..(8 + len).min(rest.len())];
            out.insert(key, String::from_utf8_lossy(value).into_owned());
            data = &rest[(8 + len + 1).min(rest.len())..];
        }
    }
    out
}

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/fleethook.service")).unwrap();
    for needed in [
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "StateDirectory=fleethook",
        "ProtectSystem=strict",
        "SystemCallFilter=@system-service",
        "UMask=0077",
    ] {
        assert!(unit.contains(needed), "the unit sets {needed}");
    }
    // Verify against the binary just built (the packaged one lives in /usr/bin).
    let path = dir.path().join("fleethook.service");
    std::fs::write(&path, unit.replace("/usr/bin/fleethook", env!("CARGO_BIN_EXE_fleethook"))).unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze is installed (.ci/run installs the systemd package)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let problems: Vec<&str> = stderr.lines().filter(|l| l.contains("fleethook")).collect();
    assert!(out.status.success() && problems.is_empty(), "systemd-analyze verify: {stderr}");
}
