//! No message may kill the agent twice (issue #29): a message that makes the agent die
//! while it decodes it is quarantined, undecoded, at the next start, and the messages
//! behind it are delivered. The decoder bug is planted on purpose with the test builds'
//! `FLEETHOOK_TEST_ABORT_ON` hook, which aborts as a release build does on a panic.
//! Real mosquitto, the real binary, a real endpoint.

mod common;

use std::time::Duration;

use common::*;

const LONG: Duration = Duration::from_secs(20);

#[test]
fn a_message_the_agent_died_on_is_quarantined_at_the_next_start_and_the_rest_delivered() {
    let broker = Mosquitto::start();
    let ep = Endpoint::start(Reply::Status(200));
    let dir = tempfile::tempdir().unwrap();
    let config = base_config(broker.port) + &subscription("ops", &ep.url(), "");
    let env = [("FLEETHOOK_TEST_ABORT_ON", "POISON")];
    let mut agent = Agent::start_env(dir.path(), &config, &env);
    agent.wait_subscribed();

    let mut messages: Vec<_> = (0..5).map(|n| mission("agv-1", n, "completed")).collect();
    let poison = br#"{"mission_id":"m-poison","status":"completed","note":"POISON"}"#.to_vec();
    messages.push(("fleet/agv-1/mission".to_string(), poison.clone()));
    messages.extend((5..10).map(|n| mission("agv-1", n, "completed")));
    publish(broker.port, &messages);
    assert!(wait_until(LONG, || !agent.is_running()), "the planted bug kills the agent");
    assert!(agent.log().contains("aborting while decoding, on purpose"), "{}", agent.log());

    // The broker sends the message again; the agent, still with the bug, must not die on it.
    agent.spawn();
    let got = ep.wait_for(10, LONG);
    let mut seqs: Vec<u64> = got.iter().map(|r| r.json()["data"]["seq"].as_u64().unwrap()).collect();
    seqs.sort();
    seqs.dedup();
    assert_eq!(seqs, (0..10).collect::<Vec<_>>(), "every message behind the poison is delivered");
    assert!(agent.is_running(), "{}", agent.log());
    assert!(wait_until(LONG, || agent.count("SELECT COUNT(*) FROM quarantine") == 1));
    let (reason, payload): (String, Vec<u8>) =
        agent.db().query_row("SELECT reason, payload FROM quarantine", [], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
    assert!(reason.contains("stopped while decoding"), "{reason}");
    assert_eq!(payload, poison, "kept whole, for `quarantine release` after a fix");
    assert!(agent.log().contains("The agent stopped while decoding a message"), "{}", agent.log());

    // Once quarantined it is forgotten: a restart neither quarantines nor dies again.
    agent.terminate();
    agent.spawn();
    agent.wait_subscribed();
    publish(broker.port, &[mission("agv-1", 10, "completed")]);
    ep.wait_for(11, LONG);
    assert!(agent.is_running());
    assert_eq!(agent.count("SELECT COUNT(*) FROM quarantine"), 1);
}

/// systemd's watchdog sends SIGABRT to a hung agent. It must die of it (not carry on, and
/// not wait for the SIGKILL 90 s later), and the message it hung on is quarantined at the
/// next start, as after any crash while decoding.
#[test]
fn a_sigabrt_from_outside_mid_decode_ends_the_agent_and_quarantines_the_message() {
    use std::os::unix::process::ExitStatusExt;
    let broker = Mosquitto::start();
    let ep = Endpoint::start(Reply::Status(200));
    let dir = tempfile::tempdir().unwrap();
    let config = base_config(broker.port) + &subscription("ops", &ep.url(), "");
    let mut agent = Agent::start_env(dir.path(), &config, &[("FLEETHOOK_TEST_STALL_ON", "HANG")]);
    agent.wait_subscribed();
    let hang = br#"{"mission_id":"m-hang","status":"completed","note":"HANG"}"#.to_vec();
    publish(broker.port, &[("fleet/agv-1/mission".to_string(), hang.clone())]);
    assert!(wait_until(LONG, || agent.log().contains("hanging while decoding, on purpose")));
    agent.signal("ABRT");
    let status = agent.wait_exit(Duration::from_secs(10)).expect("SIGABRT ends the agent");
    assert_eq!(status.signal(), Some(libc::SIGABRT), "it dies of the signal: {status:?}");
    agent.spawn();
    assert!(wait_until(LONG, || agent.count("SELECT COUNT(*) FROM quarantine") == 1), "{}", agent.log());
    let reason: String = agent.db().query_row("SELECT reason FROM quarantine", [], |r| r.get(0)).unwrap();
    assert!(reason.contains("stopped while decoding"), "{reason}");

    // An idle agent dies of it too.
    agent.wait_subscribed();
    agent.signal("ABRT");
    let status = agent.wait_exit(Duration::from_secs(10)).expect("SIGABRT ends an idle agent");
    assert_eq!(status.signal(), Some(libc::SIGABRT));
}

/// The breaker's file is the agent's own: a symlink in its place is never written through.
#[test]
fn the_breakers_file_is_never_opened_through_a_symlink() {
    let broker = Mosquitto::start();
    let ep = Endpoint::start(Reply::Status(200));
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, vec![7u8; 8192]).unwrap();
    std::os::unix::fs::symlink(&victim, dir.path().join("outbox.db-decoding")).unwrap();
    let config = base_config(broker.port) + &subscription("ops", &ep.url(), "");
    let agent = Agent::start(dir.path(), &config);
    agent.wait_subscribed();
    publish(broker.port, &(0..3).map(|n| mission("agv-1", n, "completed")).collect::<Vec<_>>());
    assert!(wait_until(LONG, || all_arrived(&ep, 3)));
    assert_eq!(std::fs::read(&victim).unwrap(), vec![7u8; 8192], "the symlink's target was written");
    assert!(agent.log().contains("poison-message breaker"), "the agent says it runs without it:\n{}", agent.log());
}

/// The breaker's file truncated under a running agent (an operator, a cleanup script)
/// costs nothing: the next message is decoded and delivered, no SIGBUS.
#[test]
fn truncating_the_breakers_file_under_a_running_agent_is_harmless() {
    let broker = Mosquitto::start();
    let ep = Endpoint::start(Reply::Status(200));
    let dir = tempfile::tempdir().unwrap();
    let config = base_config(broker.port) + &subscription("ops", &ep.url(), "");
    let mut agent = Agent::start(dir.path(), &config);
    agent.wait_subscribed();
    publish(broker.port, &[mission("agv-1", 0, "completed")]);
    assert!(wait_until(LONG, || all_arrived(&ep, 1)));
    std::fs::OpenOptions::new().write(true).open(dir.path().join("outbox.db-decoding")).unwrap().set_len(0).unwrap();
    publish(broker.port, &(1..4).map(|n| mission("agv-1", n, "completed")).collect::<Vec<_>>());
    assert!(wait_until(LONG, || all_arrived(&ep, 4)), "{}", agent.log());
    assert!(agent.is_running(), "the agent survived: {}", agent.log());
}
