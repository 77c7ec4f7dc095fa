//! No input kills the agent and no mistake doubles it: a second agent pointed at the same
//! outbox is refused, naming the first. Real mosquitto, the real binary.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

#[test]
fn a_second_agent_on_the_same_outbox_is_refused() {
    let ep = Endpoint::start(Reply::Status(200));
    let bed = Bed::new().subscription("ops", &ep.url(), "").start();
    // A copied config with only the socket changed.
    let copy = bed.config().replace("status.sock", "second.sock").replace("{dir}", &bed.dir.display().to_string());
    let copy_path = bed.dir.join("second.toml");
    std::fs::write(&copy_path, copy).unwrap();
    let out = Command::new(agent_binary())
        .args(["run", "--config"])
        .arg(&copy_path)
        .env("RUST_LOG", "fleethook=info")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the second agent ran:\n{said}");
    assert!(said.contains("another fleethook") && said.contains(&bed.pid().to_string()), "{said}");
    // The first one is unharmed.
    bed.missions(3);
    assert!(wait_until(Duration::from_secs(20), || all_arrived(&ep, 3)));
}
