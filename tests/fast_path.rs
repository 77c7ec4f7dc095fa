//! The fast path (DESIGN guarantees 1 and 6): with the endpoint keeping up, events are
//! delivered from memory and acked without being stored; anything slower, failing or
//! unreachable is stored before its ack. Real mosquitto, real HTTP, the real binary.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;

const LONG: Duration = Duration::from_secs(60);

fn delivered(agent: &Agent, subscription: &str) -> u64 {
    let status = agent.cli_json(&["status"]);
    status["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == subscription)
        .map(|s| s["delivered"].as_u64().unwrap())
        .unwrap_or(0)
}

#[test]
fn an_online_endpoint_is_fed_from_memory_and_nothing_is_stored_but_the_audit() {
    let broker = Mosquitto::start();
    let ep = Endpoint::start(Reply::Status(200));
    let dir = tempfile::tempdir().unwrap();
    let config = base_config(broker.port) + &subscription("ops", &ep.url(), "");
    let agent = Agent::start(dir.path(), &config);
    agent.wait_subscribed();
    const N: u64 = 200;
    for chunk in (0..N as usize).collect::<Vec<_>>().chunks(20) {
        let messages: Vec<_> = chunk.iter().map(|&n| mission("agv-1", n, "completed")).collect();
        publish(broker.port, &messages);
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(wait_until(LONG, || all_arrived(&ep, N)));
    report("fast_path", &ep, N, "0 kills");
    for r in ep.requests() {
        verify(&r, fleethook::sign::Scheme::Standard, "X-Fleethook");
        assert_eq!(r.header("x-fleethook-attempt"), Some("1"));
    }
    assert_eq!(agent.count("SELECT COUNT(*) FROM events"), 0, "no event was stored");
    assert_eq!(agent.count("SELECT COUNT(*) FROM deliveries"), 0);
    // The counters count it before it reaches the tables, and `log` writes it first.
    assert_eq!(delivered(&agent, "ops"), N);
    let log = agent.cli_json(&["log", "--limit", "1000"]);
    let logged: std::collections::HashSet<String> = log
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["outcome"] == "delivered")
        .map(|r| r["delivery_id"].as_str().unwrap().to_string())
        .collect();
    let sent: std::collections::HashSet<String> =
        ep.requests().iter().map(|r| r.header("x-fleethook-delivery").unwrap().to_string()).collect();
    assert_eq!(logged, sent, "every delivery from memory has its audit row");
    // The counts survive a restart.
    let mut agent = agent;
    assert!(agent.terminate().success());
    agent.spawn();
    agent.wait_subscribed();
    assert_eq!(delivered(&agent, "ops"), N);
}

#[test]
fn an_event_for_a_fast_and_an_offline_subscription_is_stored_once_and_reaches_both() {
    let broker = Mosquitto::start();
    let up = Endpoint::start(Reply::Status(200));
    let down_port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let config = base_config(broker.port)
        + &subscription("up", &up.url(), "")
        + &subscription("down", &format!("http://127.0.0.1:{down_port}/hook"), "");
    let agent = Agent::start(dir.path(), &config);
    agent.wait_subscribed();
    const N: u64 = 20;
    let messages: Vec<_> = (0..N as usize).map(|n| mission("agv-1", n, "completed")).collect();
    publish(broker.port, &messages);
    assert!(wait_until(LONG, || all_arrived(&up, N)));
    // Those that went from memory to `up` are stored once `down`'s attempt fails.
    assert!(wait_until(LONG, || agent.count("SELECT COUNT(*) FROM events") == N as i64), "each event stored once");
    let down = Endpoint::start_on(down_port, Reply::Status(200), Vec::new());
    assert!(wait_until(LONG, || all_arrived(&down, N)));
    let ids = |ep: &Endpoint| -> HashMap<u64, String> {
        ep.requests().iter().map(|r| (r.json()["data"]["seq"].as_u64().unwrap(), r.json()["id"].to_string())).collect()
    };
    assert_eq!(ids(&up), ids(&down), "one event id per event at both receivers");
}

#[test]
fn fifo_keeps_event_order_across_the_fast_and_the_durable_path() {
    let broker = Mosquitto::start();
    // Fast answers, then answers slower than write_behind, then errors, then fast again.
    let mut script = vec![Reply::Status(200); 8];
    script.extend(vec![Reply::Slow(Duration::from_millis(300), 200); 4]);
    script.extend(vec![Reply::Status(503); 3]);
    script.extend(vec![Reply::Status(200); 8]);
    script.extend(vec![Reply::Slow(Duration::from_millis(250), 200); 2]);
    let ep = Endpoint::scripted(script, Reply::Status(200));
    let dir = tempfile::tempdir().unwrap();
    let config = base_config(broker.port) + &subscription("ordered", &ep.url(), "ordering = \"fifo\"");
    let agent = Agent::start(dir.path(), &config);
    agent.wait_subscribed();
    const N: u64 = 90;
    for n in 0..10 {
        publish(broker.port, &[mission("agv-1", n, "completed")]);
        std::thread::sleep(Duration::from_millis(15));
    }
    // A burst behind a slow head: many jobs pass their deadline at once while others
    // queued behind them have not yet (stored in one go, they must keep their order).
    let burst: Vec<_> = (10..40).map(|n| mission("agv-1", n, "completed")).collect();
    publish(broker.port, &burst);
    for n in 40..N as usize {
        publish(broker.port, &[mission("agv-1", n, "completed")]);
        std::thread::sleep(Duration::from_millis(15));
    }
    assert!(wait_until(LONG, || all_arrived(&ep, N)));
    let order: Vec<u64> = ep.requests().iter().map(|r| r.json()["data"]["seq"].as_u64().unwrap()).collect();
    assert!(order.windows(2).all(|w| w[0] <= w[1]), "a FIFO subscription was reordered: {order:?}");
    assert!(agent.count("SELECT COUNT(*) FROM events") > 0, "the slow and failing answers took the durable path");
}

/// A message delivered from memory whose ack had not reached the broker when the agent
/// was killed comes again after the restart (DUP): the fast log recognises it.
#[test]
fn after_kill9_a_redelivery_of_what_was_delivered_is_not_sent_again() {
    let broker = Mosquitto::start();
    let ok = Endpoint::start(Reply::Status(200));
    let hang = Endpoint::start(Reply::Hang);
    let dir = tempfile::tempdir().unwrap();
    let config = base_config(broker.port)
        + &subscription("missions", &ok.url(), "events = [\"mission.*\"]")
        + &subscription("alerts", &hang.url(), "events = [\"alert.*\"]\ntimeout = \"30s\"");
    let mut agent = Agent::start(dir.path(), &config);
    agent.wait_subscribed();
    const ROUNDS: usize = 5;
    const PER_ROUND: usize = 4;
    let mut redelivered = 0;
    for round in 0..ROUNDS {
        // The alert holds the acks behind it (receive order) until it is stored at its
        // write_behind deadline; the missions behind it are delivered meanwhile.
        let alert = ("fleet/agv-1/alert".to_string(), format!(r#"{{"kind":"lidar","round":{round}}}"#).into_bytes());
        let mut messages = vec![alert];
        messages.extend((0..PER_ROUND).map(|i| mission("agv-1", round * PER_ROUND + i, "completed")));
        let before = ok.count();
        publish(broker.port, &messages);
        let end = Instant::now() + Duration::from_secs(10);
        while ok.count() < before + PER_ROUND && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(1));
        }
        // Answered, surely kept by the agent, and still behind the alert (its deadline is
        // write_behind, 100 ms, after it arrived): unacked.
        std::thread::sleep(Duration::from_millis(30));
        agent.kill9();
        agent.spawn();
        agent.wait_subscribed();
        std::thread::sleep(Duration::from_millis(1500));
        if agent.cli_json(&["status"])["storage"]["duplicates"].as_u64().unwrap_or(0) > 0 {
            redelivered += 1;
        }
    }
    let n = (ROUNDS * PER_ROUND) as u64;
    assert!(wait_until(LONG, || all_arrived(&ok, n)));
    let seen = arrivals(&ok);
    let duplicates: usize = seen.values().map(|c| c - 1).sum();
    println!(
        "kill9 after fast delivery: {n} missions, {duplicates} duplicates, {redelivered} rounds with redeliveries"
    );
    assert_eq!(duplicates, 0, "a mission delivered before the kill was sent again: {seen:?}");
    assert!(redelivered > 0, "no round had the broker send a delivered mission again: the test proved nothing");
}

/// Kill -9 storms with the fast path on while the endpoint goes fast, slow (over
/// write_behind) and away: every published id arrives, and no duplicate is of a
/// delivery that had been answered well before a kill.
#[test]
fn kill9_storm_with_the_fast_path_loses_nothing() {
    let mut rng = ::fastrand::Rng::with_seed(seed());
    let broker = Mosquitto::start();
    let port = free_port();
    let mut ep = Some(Endpoint::start_on(port, Reply::Status(200), Vec::new()));
    let mut arrived: Vec<common::Request> = Vec::new();
    let dir = tempfile::tempdir().unwrap();
    let config = base_config(broker.port).replace("synchronous = \"normal\"", "synchronous = \"full\"")
        + &subscription("ops", &format!("http://127.0.0.1:{port}/hook"), "");
    let mut agent = Agent::start(dir.path(), &config);
    agent.wait_subscribed();
    const N: u64 = 1200;
    let bport = broker.port;
    let publisher = std::thread::spawn(move || {
        for chunk in 0..(N / 20) {
            let messages: Vec<_> =
                (chunk * 20..(chunk + 1) * 20).map(|n| mission("agv-1", n as usize, "completed")).collect();
            publish(bport, &messages);
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let mut kills = Vec::new();
    let mut phase = 0;
    while kills.len() < 30 {
        std::thread::sleep(Duration::from_millis(rng.u64(100..400)));
        // Every few kills the endpoint changes: fast, slow, away.
        if kills.len() % 4 == 0 {
            phase += 1;
            match phase % 3 {
                0 => {
                    if ep.is_none() {
                        ep = Some(Endpoint::start_on(port, Reply::Status(200), Vec::new()));
                    }
                    ep.as_ref().unwrap().set_default(Reply::Status(200));
                }
                1 => {
                    if ep.is_none() {
                        ep = Some(Endpoint::start_on(port, Reply::Status(200), Vec::new()));
                    }
                    ep.as_ref().unwrap().set_default(Reply::Slow(Duration::from_millis(250), 200));
                }
                _ => {
                    if let Some(e) = ep.take() {
                        arrived.extend(e.requests());
                    }
                }
            }
        }
        agent.kill9();
        kills.push(Instant::now());
        agent.spawn();
    }
    publisher.join().unwrap();
    let ep = match ep {
        Some(e) => {
            e.set_default(Reply::Status(200));
            e
        }
        None => Endpoint::start_on(port, Reply::Status(200), Vec::new()),
    };
    let everything = |ep: &Endpoint| -> Vec<common::Request> { arrived.iter().cloned().chain(ep.requests()).collect() };
    let all_in = || {
        let seen: std::collections::HashSet<u64> =
            everything(&ep).iter().map(|r| r.json()["data"]["seq"].as_u64().unwrap()).collect();
        (0..N).all(|i| seen.contains(&i))
    };
    assert!(wait_until(Duration::from_secs(120), all_in), "not everything arrived after {} kills", kills.len());
    let mut first: HashMap<u64, Instant> = HashMap::new();
    let mut count: HashMap<u64, usize> = HashMap::new();
    for r in everything(&ep) {
        let seq = r.json()["data"]["seq"].as_u64().unwrap();
        first.entry(seq).and_modify(|t| *t = (*t).min(r.at)).or_insert(r.at);
        *count.entry(seq).or_default() += 1;
    }
    let duplicates: usize = count.values().map(|c| c - 1).sum();
    // A duplicate is the agent's doing only if the first copy was answered long before
    // the next kill: the page cache (the fast log) and the commits had time to hold it.
    let stale: Vec<u64> = count
        .iter()
        .filter(|(_, c)| **c > 1)
        .map(|(seq, _)| *seq)
        .filter(|seq| {
            let t = first[seq];
            kills.iter().find(|k| **k >= t).is_none_or(|k| k.duration_since(t) > Duration::from_secs(1))
        })
        .collect();
    println!("kill9_storm_fast_path: {N} published, {duplicates} duplicates, {} kills", kills.len());
    assert!(stale.is_empty(), "sent again though delivered over a second before any kill: {stale:?}");
}
