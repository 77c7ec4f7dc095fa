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
