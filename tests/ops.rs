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
    _dir: tempfile::TempDir,
}

impl NotifySocket {
    fn bind() -> NotifySocket {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        NotifySocket { socket, path, _dir: dir }
    }

    fn env(&self) -> &str {
        self.path.to_str().unwrap()
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
    let ep = Endpoint::start(Reply::Status(200));
    let notify = NotifySocket::bind();
    let mut bed = Bed::new()
        .env("NOTIFY_SOCKET", notify.env())
        .env("WATCHDOG_USEC", "2000000")
        .subscription("ops", &ep.url(), "")
        .configure();
    bed.spawn();
    let msgs = notify.collect(Duration::from_secs(6));
    assert_eq!(count(&msgs, "READY=1"), 1, "{msgs:?}");
    let pings = count(&msgs, "WATCHDOG=1");
    assert!(pings >= 3, "{pings} watchdog pings in 6 s at WATCHDOG_USEC=2000000: {msgs:?}");
    assert!(bed.terminate().success());
    let tail = notify.collect(Duration::from_millis(300));
    assert!(count(&msgs, "STOPPING=1") + count(&tail, "STOPPING=1") >= 1, "STOPPING=1 on shutdown");
}

#[test]
fn a_wedged_loop_stops_the_watchdog_pings() {
    let notify = NotifySocket::bind();
    let mut bed = Bed::new()
        .env("NOTIFY_SOCKET", notify.env())
        .env("WATCHDOG_USEC", "1000000")
        .env("FLEETHOOK_FAULT_WEDGE", "writer")
        .env("FLEETHOOK_FAULT_WEDGE_AFTER", "3")
        .subscription("ops", &Down::new().url(), "")
        .configure();
    bed.spawn();
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
    assert!(bed.log().contains("not making progress") && bed.log().contains("writer"), "{}", bed.log());
}

#[test]
fn logs_go_to_journald_under_systemd() {
    let path = std::path::Path::new("/run/systemd/journal/socket");
    // Under journald the agent's stderr stays quiet: nothing to wait on there.
    let mut bed = Bed::new().env("JOURNAL_STREAM", "8:1234").subscription("ops", &Down::new().url(), "").configure();
    let journald_listening = path.exists() && UnixDatagram::unbound().and_then(|s| s.send_to(b"", path)).is_ok();
    if path.exists() && !journald_listening {
        // A stale socket file from an earlier run: nobody reads it.
        let _ = std::fs::remove_file(path);
    }
    if journald_listening {
        // A real journald: ask it.
        bed.spawn();
        std::thread::sleep(Duration::from_secs(2));
        assert!(bed.terminate().success());
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
    bed.spawn();
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
    let status = bed.terminate();
    assert!(status.success(), "{status:?}: {}", bed.log());
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
    assert!(!bed.log().contains("fleethook is running"), "under journald, stderr stays quiet");
}

#[test]
fn sighup_reloads_good_configs_and_refuses_bad_ones() {
    let first = Endpoint::start(Reply::Status(200));
    let second = Endpoint::start(Reply::Status(200));
    let down = Down::new();
    let bed = Bed::new().subscription("first", &first.url(), "").subscription("later", &down.url(), "").start();
    bed.publish(&[mission("agv-1", 0, "started")]);
    first.wait_for(1, LONG);
    assert!(bed.wait_deliveries("pending", 1));

    let after = bed.config().to_string() + &subscription("second", &second.url(), "");
    bed.rewrite_config(&after);
    bed.signal("HUP");
    assert!(wait_until(LONG, || bed.log().contains("Configuration reloaded")), "{}", bed.log());
    assert!(wait_until(LONG, || bed.log().matches("Subscribed to the route topics").count() >= 2));
    bed.publish(&[mission("agv-1", 1, "completed")]);
    assert_eq!(second.wait_for(1, LONG)[0].json()["data"]["seq"], 1, "the new subscription gets new events");
    first.wait_for(2, LONG);

    bed.rewrite_config(&after.replace("[[subscription]]", "[[subscripton]]"));
    bed.signal("HUP");
    assert!(wait_until(LONG, || bed.log().contains("invalid; the old one stays")), "{}", bed.log());
    bed.publish(&[mission("agv-1", 2, "completed")]);
    second.wait_for(2, LONG);
    assert_eq!(first.wait_for(3, LONG).len(), 3, "the old configuration keeps working");

    // Queued work survived both reloads.
    let later = down.up(Reply::Status(200));
    assert_eq!(later.wait_for(3, LONG).len(), 3);
}

#[test]
fn heartbeats_carry_the_robots_vitals_in_json_logs() {
    let ep = Endpoint::start(Reply::Status(200));
    let mut bed = Bed::new()
        .edit("interval = \"0s\"", "interval = \"1s\"")
        .env("FLEETHOOK_LOG_FORMAT", "json")
        .subscription("vitals", &ep.url(), "events = [\"agent.heartbeat\"]")
        .configure();
    bed.spawn();
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
    let log = bed.log();
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
