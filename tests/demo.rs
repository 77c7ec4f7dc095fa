//! The README's first command is a test: `fleethook demo --seconds 15` runs the whole
//! pipeline on its embedded broker (rumqttd), and must deliver and verify everything it
//! published, with no reconnect and no duplicate event.

use std::process::Command;

/// The numbers in the demo's summary line.
fn summary_field(line: &str, name: &str) -> u64 {
    let after = line.split(&format!("{name} ")).nth(1).unwrap_or_else(|| panic!("no {name} in {line:?}"));
    after.split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
}

#[test]
fn the_demo_delivers_everything_once_without_a_reconnect() {
    let out = Command::new(env!("CARGO_BIN_EXE_fleethook"))
        .args(["demo", "--seconds", "15"])
        .env_remove("RUST_LOG")
        .output()
        .expect("the demo runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let all = format!("{stdout}\n{stderr}");
    let line = stdout.lines().find(|l| l.starts_with("summary:")).unwrap_or_else(|| panic!("no summary:\n{all}"));
    println!("{line}");
    assert!(out.status.success(), "the demo failed:\n{all}");
    assert!(!all.contains("Lost the MQTT connection"), "the agent reconnected:\n{all}");
    assert!(!all.contains("reconnecting"), "the agent reconnected:\n{all}");
    assert!(!all.contains(" WARN "), "a warning in the demo:\n{all}");
    let published = summary_field(line, "published");
    assert!(published >= 20, "{line}");
    assert_eq!(summary_field(line, "delivered"), published, "{line}");
    assert_eq!(summary_field(line, "verified"), published, "{line}");
    assert_eq!(summary_field(line, "duplicates"), 0, "{line}");
}
