//! Faults a robot meets (issue #14): hostile payloads, hanging endpoints, retained
//! storms, extreme configs. Real mosquitto, the real binary, real HTTP servers.

mod common;

use std::time::Duration;

use common::*;

const LONG: Duration = Duration::from_secs(20);

#[test]
fn a_payload_cannot_forge_a_log_line_or_a_header() {
    let broker = Mosquitto::start();
    let ep = Endpoint::start(Reply::Status(200));
    let dir = tempfile::tempdir().unwrap();
    let config = base_config(broker.port) + &subscription("ops", &ep.url(), "");
    let agent = Agent::start(dir.path(), &config);
    agent.wait_subscribed();

    let forged = "x\n2026-01-01T00:00:00.000000Z ERROR fleethook::outbox: FORGED line\n\u{1b}[31mRED";
    let payload = serde_json::json!({"status": forged}).to_string();
    publish(broker.port, &[("fleet/agv-1/mission".to_string(), payload.into_bytes())]);
    // A device id from the topic that is not ASCII goes out percent-encoded in the header.
    publish(broker.port, &[mission("agv-ü", 1, "completed")]);
    let got = ep.wait_for(1, LONG);
    assert_eq!(got[0].header("x-fleethook-device"), Some("agv-%C3%BC"));
    assert_eq!(got[0].json()["device_id"], "agv-ü", "the body keeps the exact text");
    assert!(wait_until(LONG, || agent.log().contains("Quarantined")));

    let log = agent.log();
    assert!(!log.contains('\u{1b}'), "a live escape reached the log:\n{log}");
    assert!(!log.lines().any(|l| l.contains("FORGED") && !l.contains("Quarantined")), "a forged line:\n{log}");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_fleethook"))
        .args(["log", "--config"])
        .arg(&agent.config)
        .output()
        .unwrap();
    assert!(status.status.success());
    let table = String::from_utf8_lossy(&status.stdout);
    assert!(!table.contains('\u{1b}') && !table.contains("\nRED"), "{table}");
}

/// `hanging` subscriptions whose endpoints accept and never answer, and one healthy one
/// listed last: 40 events 50 ms apart. Returns what the healthy one got while they hang,
/// and its p99 publish → endpoint in ms.
fn healthy_beside_hanging(hanging: usize) -> (usize, u128) {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let stuck: Vec<Endpoint> = (0..hanging).map(|_| Endpoint::start(Reply::Hang)).collect();
    let healthy = Endpoint::start(Reply::Status(200));
    let mut config = base_config(broker.port);
    for (i, ep) in stuck.iter().enumerate() {
        config += &subscription(&format!("hang{i}"), &ep.url(), "timeout = \"60s\"");
    }
    config += &subscription("healthy", &healthy.url(), "");
    let agent = Agent::start(dir.path(), &config);
    agent.wait_subscribed();
    let mut sent = Vec::new();
    for n in 0..40 {
        sent.push(std::time::Instant::now());
        publish(broker.port, &[mission("agv-1", n, "completed")]);
        std::thread::sleep(Duration::from_millis(50));
    }
    let got = healthy.wait_for(40, LONG);
    let mut latency: Vec<u128> = got
        .iter()
        .map(|r| {
            let seq = r.json()["data"]["seq"].as_u64().unwrap() as usize;
            r.at.saturating_duration_since(sent[seq]).as_millis()
        })
        .collect();
    latency.sort_unstable();
    let p99 = latency.get(latency.len() * 99 / 100).or(latency.last()).copied().unwrap_or(0);
    if hanging > 0 {
        assert!(stuck.iter().all(|ep| ep.count() > 0), "every hanging endpoint was tried");
    }
    (got.len(), p99)
}

#[test]
fn hanging_endpoints_do_not_starve_a_healthy_one() {
    let (alone, p99_alone) = healthy_beside_hanging(0);
    let (beside_4, p99_4) = healthy_beside_hanging(4);
    let (beside_13, p99_13) = healthy_beside_hanging(13);
    println!(
        "healthy p99 publish → endpoint: alone {p99_alone} ms, beside 4 hanging {p99_4} ms, beside 13 {p99_13} ms"
    );
    assert_eq!((alone, beside_4, beside_13), (40, 40, 40), "the healthy subscription got everything");
}

#[test]
fn a_config_at_the_edges_of_its_ranges_runs_without_spinning() {
    let broker = Mosquitto::start();
    let ep = Endpoint::start(Reply::Status(200));
    let dead = free_port();
    let dir = tempfile::tempdir().unwrap();
    let config = base_config(broker.port)
        .replace("interval = \"0s\"", "interval = \"1s\"")
        .replace("offline_probe_max = \"500ms\"", "offline_probe_max = \"100ms\"\nmax_in_flight = 4096")
        + &subscription("ok", &ep.url(), "max_age = \"3650d\"\nmax_in_flight = 1024\nevents = [\"mission.*\"]")
        + &subscription("slow", &ep.url(), "rate_limit = \"1/h\"\nevents = [\"mission.*\"]")
        + &subscription("dead", &format!("http://127.0.0.1:{dead}/hook"), "max_age = \"3650d\"");
    let agent = Agent::start(dir.path(), &config);
    agent.wait_subscribed();
    publish(broker.port, &(0..5).map(|n| mission("agv-1", n, "completed")).collect::<Vec<_>>());
    // "ok" gets all 5, "slow" its one token.
    ep.wait_for(6, LONG);
    let before = agent.cpu();
    std::thread::sleep(Duration::from_secs(4));
    let used = agent.cpu() - before;
    println!("CPU over 4 s at the edges of the ranges: {used:?}");
    assert!(used < Duration::from_secs(2), "a busy loop: {used:?} of CPU in 4 s");
    assert_eq!(ep.count(), 6, "the 1/h rate limit let one more through: {}", ep.count());
}

#[test]
fn configs_out_of_range_are_refused_with_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = base_config(1883).replace("offline_probe_max = \"500ms\"", "max_in_flight = 9223372036854775807")
        + &subscription("ops", "http://127.0.0.1:9/hook", "rate_limit = \"1e-300/h\"\nmax_age = \"300000000y\"");
    let path = dir.path().join("fleethook.toml");
    std::fs::write(&path, config.replace("{dir}", &dir.path().display().to_string())).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fleethook"))
        .arg("check")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    for key in ["delivery.max_in_flight", "subscription[0].rate_limit", "subscription[0].max_age"] {
        assert!(err.contains("fleethook.toml:") && err.contains(key), "{key} not named: {err}");
    }
    assert!(err.contains("out of range"), "{err}");
}

#[test]
fn a_retained_message_is_one_event_across_restarts() {
    let broker = Mosquitto::start();
    let ep = Endpoint::start(Reply::Status(200));
    let dir = tempfile::tempdir().unwrap();
    let config = base_config(broker.port)
        .replace("event = \"alert.{/kind}\"", "event = \"alert.{/kind}\"\nretained = \"ignore\"")
        + &subscription("ops", &ep.url(), "");
    // A retained state and a retained alert are on the broker before the agent starts.
    publish_retained(broker.port, &[mission("agv-1", 1, "docked")]);
    publish_retained(broker.port, &[("fleet/agv-1/alert".into(), br#"{"kind":"estop"}"#.to_vec())]);
    let mut agent = Agent::start(dir.path(), &config);
    agent.wait_subscribed();
    ep.wait_for(1, LONG);
    for _ in 0..3 {
        assert!(agent.terminate().success());
        agent.spawn();
        agent.wait_subscribed();
        std::thread::sleep(Duration::from_millis(300));
    }
    // While it is away, the retained state changes: one more event at the next start.
    assert!(agent.terminate().success());
    publish_retained(broker.port, &[mission("agv-1", 2, "charging")]);
    agent.spawn();
    agent.wait_subscribed();
    ep.wait_for(2, LONG);
    std::thread::sleep(Duration::from_millis(500));
    let types: Vec<String> = ep.requests().iter().map(|r| r.json()["type"].as_str().unwrap().to_string()).collect();
    assert_eq!(
        types,
        ["mission.docked", "mission.charging"],
        "one event per retained state, none for the ignored route"
    );
    for r in ep.requests() {
        verify(&r, fleethook::sign::Scheme::Standard, "X-Fleethook");
    }
}

/// Peak resident memory of a process, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).unwrap().trim().trim_end_matches(" kB").trim();
    kb.parse::<u64>().unwrap() * 1024
}

/// Publishes a 12 MiB message and then a normal one; returns what the peak RSS grew by.
fn oversize_message_growth(version: &str) -> u64 {
    let broker = Mosquitto::start();
    let ep = Endpoint::start(Reply::Status(200));
    let dir = tempfile::tempdir().unwrap();
    let config = base_config(broker.port).replace("[storage]", &format!("{version}\n[storage]"))
        + &subscription("ops", &ep.url(), "");
    let agent = Agent::start(dir.path(), &config);
    agent.wait_subscribed();
    publish(broker.port, &[mission("agv-1", 0, "started")]);
    ep.wait_for(1, LONG);
    let before = peak_rss(agent.pid());
    let big = serde_json::json!({"status": "huge", "blob": "x".repeat(12 << 20)}).to_string();
    publish(broker.port, &[("fleet/agv-1/mission".into(), big.into_bytes()), mission("agv-1", 1, "completed")]);
    let got = ep.wait_for(2, LONG);
    assert_eq!(got.len(), 2, "the message after the oversize one arrives: nothing stalls");
    assert_eq!(got[1].json()["type"], "mission.completed");
    peak_rss(agent.pid()).saturating_sub(before)
}

#[test]
fn mqtt5_refuses_oversize_messages_before_they_reach_memory() {
    let v5 = oversize_message_growth("version = 5");
    let v311 = oversize_message_growth("version = 3");
    println!("peak RSS grew by {v5} bytes with MQTT 5, {v311} with 3.1.1, for a 12 MiB message");
    assert!(v5 < 4 << 20, "MQTT 5 read the oversize message into memory: +{v5} bytes");
}

/// What the agent holds per message counts the decoded and enveloped copies too, not
/// only the payload: a burst of 250 KiB messages into an endpoint that takes its time
/// stays within the unit's memory (it once peaked at 143 MiB, over `MemoryHigh=128M`).
#[test]
fn a_burst_of_large_messages_is_held_within_bounds_and_all_arrive() {
    let broker = Mosquitto::start_with("max_inflight_messages 0\nmax_queued_messages 0\n");
    let ep = Endpoint::start(Reply::Status(200));
    let dir = tempfile::tempdir().unwrap();
    let config = base_config(broker.port) + &subscription("ops", &ep.url(), "max_in_flight = 2");
    let agent = Agent::start(dir.path(), &config);
    agent.wait_subscribed();
    publish(broker.port, &[mission("agv-1", 0, "started")]);
    ep.wait_for(1, LONG);
    let before = peak_rss(agent.pid());
    const N: usize = 400;
    let blob = "x".repeat(250 << 10);
    let big: Vec<_> = (1..=N)
        .map(|n| {
            let body = serde_json::json!({"status": "completed", "seq": n, "blob": blob}).to_string();
            ("fleet/agv-1/mission".to_string(), body.into_bytes())
        })
        .collect();
    for chunk in big.chunks(100) {
        publish(broker.port, chunk);
    }
    assert!(wait_until(LONG * 4, || ep.count() > N), "{} of {} arrived", ep.count(), N + 1);
    let grew = peak_rss(agent.pid()).saturating_sub(before);
    println!("peak RSS grew by {} MiB for {N} messages of 250 KiB", grew >> 20);
    assert!(grew < 48 << 20, "the agent held {} MiB for 250 KiB messages", grew >> 20);
}

/// QoS 0 messages are held within the same bound as QoS 1 ones until they are committed:
/// a flood into an agent whose endpoint is down once took it to 214 MiB.
#[test]
fn a_qos0_flood_is_held_within_bounds() {
    let broker = Mosquitto::start_with("max_queued_messages 0\n");
    let dir = tempfile::tempdir().unwrap();
    let config = base_config(broker.port) + &subscription("ops", "http://127.0.0.1:9/hook", "");
    let agent = Agent::start(dir.path(), &config);
    agent.wait_subscribed();
    let before = peak_rss(agent.pid());
    const N: usize = 150_000;
    let pad = "x".repeat(180);
    let lines: String =
        (0..N).map(|n| format!("{{\"status\":\"completed\",\"mission_id\":\"m{n}\",\"pad\":\"{pad}\"}}\n")).collect();
    let mut publisher = std::process::Command::new("mosquitto_pub")
        .args(["-p", &broker.port.to_string(), "-q", "0", "-l", "-t", "fleet/agv-1/mission"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    publisher.stdin.take().unwrap().write_all(lines.as_bytes()).unwrap();
    assert!(publisher.wait().unwrap().success());
    // QoS 0 may be dropped on the way; what matters is what the agent held meanwhile.
    let taken = || agent.count("SELECT COUNT(*) FROM events");
    let mut last = -1;
    while taken() != last {
        last = taken();
        std::thread::sleep(Duration::from_secs(2));
    }
    let grew = peak_rss(agent.pid()).saturating_sub(before);
    println!("peak RSS grew by {} MiB for a QoS 0 flood of {N} ({last} taken)", grew >> 20);
    assert!(last > 0, "the flood reached the agent");
    assert!(grew < 48 << 20, "the agent held {} MiB in a QoS 0 flood", grew >> 20);
}

#[test]
fn an_mqtt5_session_keeps_what_arrives_while_the_agent_is_killed() {
    let broker = Mosquitto::start();
    let ep = Endpoint::start(Reply::Status(200));
    let dir = tempfile::tempdir().unwrap();
    let config =
        base_config(broker.port).replace("[storage]", "version = 5\n[storage]") + &subscription("ops", &ep.url(), "");
    let mut agent = Agent::start(dir.path(), &config);
    agent.wait_subscribed();
    publish(broker.port, &(0..5).map(|n| mission("agv-1", n, "completed")).collect::<Vec<_>>());
    ep.wait_for(5, LONG);
    agent.kill9();
    publish(broker.port, &(5..15).map(|n| mission("agv-1", n, "completed")).collect::<Vec<_>>());
    agent.spawn();
    assert!(wait_until(LONG, || all_arrived(&ep, 15)), "the broker kept the session's messages");
    for r in ep.requests() {
        verify(&r, fleethook::sign::Scheme::Standard, "X-Fleethook");
    }
}
