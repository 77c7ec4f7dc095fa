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

/// An outbox a newer build wrote is refused without a byte of it changed; one whose
/// schema version was set back by hand is refused with a sentence, not a migration's SQL.
#[test]
fn an_outbox_this_build_cannot_use_is_refused_untouched_and_in_words() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let config = base_config(broker.port) + &subscription("ops", "http://127.0.0.1:9/hook", "");
    let db = dir.path().join("outbox.db");
    let run = |dir: &std::path::Path| {
        let mut agent = Agent::configure(dir, &config);
        agent.spawn();
        let status = agent.wait_exit(Duration::from_secs(20)).expect("the agent refuses and exits");
        (status, agent.log())
    };

    // A newer build's outbox.
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute_batch("PRAGMA journal_mode = DELETE; CREATE TABLE future (x); PRAGMA user_version = 99;").unwrap();
    }
    let before = std::fs::read(&db).unwrap();
    let (status, log) = run(dir.path());
    assert!(!status.success(), "{log}");
    assert!(log.contains("newer fleethook"), "{log}");
    assert_eq!(std::fs::read(&db).unwrap(), before, "the newer outbox was written to");
    std::fs::remove_file(&db).unwrap();

    // A current outbox whose version was set back by hand.
    {
        let mut agent = Agent::configure(dir.path(), &config);
        agent.spawn();
        assert!(wait_until(Duration::from_secs(20), || db.exists() && agent.log().contains("fleethook is running")));
        agent.terminate();
    }
    rusqlite::Connection::open(&db).unwrap().execute_batch("PRAGMA user_version = 1;").unwrap();
    let (status, log) = run(dir.path());
    assert!(!status.success(), "{log}");
    assert!(log.contains("changed by hand"), "{log}");
    assert!(!log.contains("CREATE TABLE"), "no SQL in the error: {log}");
}
