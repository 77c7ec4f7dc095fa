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
