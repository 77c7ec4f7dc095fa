//! Metrics a fleet can scrape (issue #19): `/metrics` on `[metrics] listen` and
//! `fleethook metrics`, checked by Prometheus's own `promtool` and against what the
//! receiver got. Real mosquitto, the real binary, a real HTTP scrape.

mod common;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const LONG: Duration = Duration::from_secs(20);

/// GET /metrics over plain HTTP/1.1: the status line, the headers and the body.
fn scrape(addr: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    (head.to_string(), body.to_string())
}

/// The value of the sample line that starts with `name`.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn metrics_count_what_the_receiver_got_and_promtool_accepts_them() {
    let broker = Mosquitto::start();
    let ep = Endpoint::start(Reply::Status(200));
    let dir = tempfile::tempdir().unwrap();
    let down = format!("http://127.0.0.1:{}/hook", free_port());
    let config = base_config(broker.port).replace("[delivery]", "[metrics]\nlisten = \"127.0.0.1:0\"\n\n[delivery]")
        + &subscription("ops", &ep.url(), "")
        + &subscription("later", &down, "");
    let agent = Agent::start(dir.path(), &config);
    agent.wait_subscribed();
    let log = agent.log();
    let addr = log
        .lines()
        .find(|l| l.contains("Serving metrics"))
        .and_then(|l| l.split("listen=").nth(1))
        .map(|a| a.split_whitespace().next().unwrap().to_string())
        .unwrap_or_else(|| panic!("no metrics address in the log:\n{log}"));

    const N: usize = 20;
    let messages: Vec<_> = (0..N).map(|n| mission("agv-1", n, "completed")).collect();
    publish(broker.port, &messages);
    // Scraped while events flow, then once they have arrived.
    let (head, _) = scrape(&addr);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.to_ascii_lowercase().contains("content-type: text/plain; version=0.0.4"), "{head}");
    ep.wait_for(N, LONG);
    let delivered = r#"fleethook_deliveries_total{outcome="delivered",subscription="ops"}"#;
    let mut text = String::new();
    assert!(
        wait_until(LONG, || {
            text = scrape(&addr).1;
            sample(&text, delivered) == Some(ep.count() as f64)
                && sample(&text, r#"fleethook_pending{subscription="later"}"#) == Some(N as f64)
        }),
        "receiver got {}:\n{text}",
        ep.count()
    );
    assert_eq!(sample(&text, "fleethook_mqtt_connected"), Some(1.0));
    assert!(sample(&text, "fleethook_mqtt_messages_total") >= Some(N as f64), "{text}");
    let attempts = r#"fleethook_attempts_total{result="delivered",subscription="ops"}"#;
    assert_eq!(
        sample(&text, attempts),
        Some(ep.count() as f64),
        "one attempt per delivery:
{text}"
    );
    assert_eq!(
        sample(&text, r#"fleethook_attempt_duration_seconds_count{subscription="ops"}"#),
        Some(ep.count() as f64)
    );
    // What went on the wire is at least the bodies the receiver read.
    let bodies: usize = ep.requests().iter().map(|r| r.body.len()).sum();
    let sent = sample(&text, r#"fleethook_sent_bytes_total{subscription="ops"}"#).unwrap_or(0.0);
    assert!(sent > bodies as f64 && sent < (bodies * 4) as f64, "{sent} bytes sent for {bodies} bytes of bodies");
    assert!(sample(&text, r#"fleethook_attempts_total{result="offline",subscription="later"}"#) >= Some(1.0), "{text}");
    // Probes that found no connection put nothing on the wire (nor on a bandwidth budget).
    assert_eq!(sample(&text, r#"fleethook_sent_bytes_total{subscription="later"}"#), Some(0.0), "{text}");
    assert_eq!(sample(&text, r#"fleethook_endpoint_state{state="offline",subscription="later"}"#), Some(1.0));
    assert_eq!(sample(&text, r#"fleethook_endpoint_state{state="online",subscription="ops"}"#), Some(1.0));
    assert!(sample(&text, r#"fleethook_oldest_pending_age_seconds{subscription="later"}"#).is_some());
    assert!(text.contains("fleethook_build_info{device_id=\"test-robot\",version=\""), "{text}");

    // What a textfile collector gets is the same text.
    let out = agent.cli(&["metrics"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed = String::from_utf8(out.stdout).unwrap();
    assert_eq!(sample(&printed, delivered), Some(N as f64));

    // Prometheus's own checker accepts it.
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (scripts/test.sh installs the prometheus package)");
    promtool.stdin.take().unwrap().write_all(printed.as_bytes()).unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool: {}{}\n{printed}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    let (head, _) = {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.write_all(b"GET /other HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut a = String::new();
        s.read_to_string(&mut a).unwrap();
        (a, ())
    };
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
}

/// The red team's slowloris: 1100 connections that send half a request took every file
/// descriptor of an agent limited to 1024, and with them the status socket, scrapes and
/// deliveries to an endpoint that closes its connections after each answer.
#[test]
fn half_open_connections_cannot_starve_the_agent() {
    let broker = Mosquitto::start();
    let ep = Endpoint::start(Reply::WithHeaders(200, vec![("connection", "close".to_string())]));
    let dir = tempfile::tempdir().unwrap();
    let config = base_config(broker.port).replace("[delivery]", "[metrics]\nlisten = \"127.0.0.1:0\"\n\n[delivery]")
        + &subscription("ops", &ep.url(), "");
    let agent = Agent::start(dir.path(), &config);
    agent.wait_subscribed();
    // What systemd gives a unit by default, and what the red team's agent had.
    let limited = Command::new("prlimit")
        .args(["--pid", &agent.pid().to_string(), "--nofile=1024:1024"])
        .status()
        .expect("prlimit (util-linux)");
    assert!(limited.success());
    let log = agent.log();
    let addr = log
        .lines()
        .find(|l| l.contains("Serving metrics"))
        .and_then(|l| l.split("listen=").nth(1))
        .map(|a| a.split_whitespace().next().unwrap().to_string())
        .unwrap_or_else(|| panic!("no metrics address in the log:\n{log}"));

    // This process needs 1100 descriptors of its own.
    raise_nofile(4096);
    let mut held = Vec::new();
    for _ in 0..1100 {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n");
        held.push(s);
    }

    // A scrape, the status socket and a delivery, while all of them are held.
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    let read = s.read_to_string(&mut answer);
    assert!(read.is_ok() && answer.starts_with("HTTP/1.1 200"), "scrape: {read:?} {answer:.200}");
    let status = agent.cli(&["status", "--json"]);
    assert!(status.status.success(), "status: {}", String::from_utf8_lossy(&status.stderr));
    let messages: Vec<_> = (0..5).map(|n| mission("agv-1", n, "completed")).collect();
    publish(broker.port, &messages);
    let got = ep.wait_for(5, Duration::from_secs(10));
    assert_eq!(got.len(), 5, "deliveries while the listener is flooded");
    drop(held);
    assert!(agent.log().contains("Serving metrics"));
}

fn raise_nofile(want: u64) {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit with a valid pointer to an rlimit.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max.min(want.max(lim.rlim_cur));
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
}
