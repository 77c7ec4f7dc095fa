//! Batches (issue #18): several envelopes per request, one signature over the body as
//! sent, a batch id stable across retries. Each batch is verified and decoded by
//! libraries nobody here wrote: PyPI's `standardwebhooks` for plain batches, the
//! README's stdlib snippet plus Python's `gzip` / PyPI's `zstandard` for compressed ones.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(30);

/// Each request verified and decoded in Python: `{"id", "size", "envelopes": […]}`.
fn verified_batches(requests: &[Request]) -> Vec<Value> {
    let script = r#"
import gzip, zstandard
from standardwebhooks import Webhook
out = []
for r in requests:
    raw, h = r["body"], r["headers"]
    enc = h.get("content-encoding")
    if enc is None:
        # The Standard Webhooks library checks the signature and parses the JSON array.
        if h.get("content-type") == "application/json":
            envelopes = Webhook(SECRET).verify(raw, h)
        else:
            assert verify(SECRET, h, raw), "the README snippet rejects it"
            envelopes = [json.loads(l) for l in raw.decode().splitlines()]
    else:
        assert verify(SECRET, h, raw), "the README snippet rejects it"
        raw = gzip.decompress(raw) if enc == "gzip" else zstandard.ZstdDecompressor().decompressobj().decompress(raw)
        text = raw.decode()
        if h.get("content-type") == "application/x-ndjson":
            assert text.endswith("\n")
            envelopes = [json.loads(l) for l in text.splitlines()]
        else:
            envelopes = json.loads(text)
    out.append({"id": h["webhook-id"], "batch": h.get("x-fleethook-batch"), "size": h.get("x-fleethook-batch-size"),
                "encoding": enc, "envelopes": envelopes})
print(json.dumps(out))
"#;
    serde_json::from_value(python_over(requests, script)).unwrap()
}

/// Mission seqs in the order the batches carried them.
fn seqs(batches: &[Value]) -> Vec<u64> {
    batches
        .iter()
        .flat_map(|b| b["envelopes"].as_array().unwrap().iter().map(|e| e["data"]["seq"].as_u64().unwrap()))
        .collect()
}

/// Waits until `ep` has been sent every seq of `1..=n` (in its 2xx-answered requests).
fn wait_all(ep: &Endpoint, n: u64, skip_first: usize) -> Vec<Value> {
    let ok = wait_until(LONG, || {
        let reqs = ep.requests();
        let got: std::collections::HashSet<u64> = reqs
            .iter()
            .skip(skip_first)
            .flat_map(|r| {
                let body = &r.body;
                let text = decode_local(r.header("content-encoding"), body);
                parse_envelopes(&text).into_iter().map(|e| e["data"]["seq"].as_u64().unwrap())
            })
            .collect();
        (1..=n).all(|s| got.contains(&s))
    });
    assert!(ok, "not every event arrived: {} requests", ep.count());
    verified_batches(&ep.requests()[skip_first..])
}

fn decode_local(encoding: Option<&str>, body: &[u8]) -> String {
    use std::io::Read;
    let mut out = String::new();
    match encoding {
        Some("gzip") => {
            flate2::read::GzDecoder::new(body).read_to_string(&mut out).unwrap();
        }
        Some("zstd") => {
            zstd::stream::read::Decoder::new(body).unwrap().read_to_string(&mut out).unwrap();
        }
        _ => out = String::from_utf8_lossy(body).into_owned(),
    }
    out
}

fn parse_envelopes(text: &str) -> Vec<Value> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Array(a)) => a,
        _ => text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect(),
    }
}

#[test]
fn batches_carry_every_event_once_verified_and_decoded_by_stock_libraries() {
    let broker = Mosquitto::start();
    let eps: Vec<Endpoint> = (0..3).map(|_| Endpoint::start(Reply::Status(200))).collect();
    let dir = tempfile::tempdir().unwrap();
    let batch = "batch = { max_events = 100, max_wait = \"300ms\" }";
    let config = base_config(broker.port)
        + &subscription("plain", &eps[0].url(), batch)
        + &subscription(
            "gz",
            &eps[1].url(),
            "compression = \"gzip\"\nbatch = { max_events = 100, format = \"ndjson\", max_wait = \"300ms\" }",
        )
        + &subscription("zs", &eps[2].url(), &format!("compression = \"zstd\"\n{batch}"));
    let agent = Agent::start(dir.path(), &config);
    agent.wait_subscribed();
    publish(broker.port, &(1..=250).map(|n| mission("agv-1", n, "completed")).collect::<Vec<_>>());
    for (ep, name) in eps.iter().zip(["plain", "gz", "zs"]) {
        let batches = wait_all(ep, 250, 0);
        let mut got = seqs(&batches);
        got.sort_unstable();
        assert_eq!(got, (1..=250).collect::<Vec<_>>(), "{name}: every event exactly once");
        // A batch fills to max_events when the events are there: 250 take 3 to 6 requests.
        assert!((3..=6).contains(&batches.len()), "{name}: {} requests for 250 events", batches.len());
        for b in &batches {
            let n = b["envelopes"].as_array().unwrap().len();
            assert!(n <= 100, "{name}: max_events is 100, a batch had {n}");
            assert_eq!(b["size"], n.to_string(), "{name}: the size header counts the envelopes");
            assert_eq!(b["batch"], b["id"], "{name}: webhook-id is the batch id");
            assert!(b["envelopes"].as_array().unwrap().iter().all(|e| e["type"] == "mission.completed"
                && e["device_id"] == "agv-1"
                && e["delivery_id"].as_str().is_some_and(|d| !d.is_empty())));
        }
        let ids: std::collections::HashSet<&str> = batches.iter().map(|b| b["id"].as_str().unwrap()).collect();
        assert_eq!(ids.len(), batches.len(), "{name}: each batch has its own id");
        // The audit log names each delivery's batch.
        let audited: i64 = agent.count(&format!(
            "SELECT COUNT(DISTINCT batch_id) FROM attempts WHERE subscription = '{name}' AND outcome = 'delivered'"
        ));
        assert_eq!(audited as usize, batches.len(), "{name}: audit rows name the batches");
        // `show` finds a batch by the webhook-id its receiver saw.
        let first = &batches[0];
        let shown = agent.cli_json(&["show", first["id"].as_str().unwrap()]);
        let in_it: std::collections::HashSet<&str> =
            first["envelopes"].as_array().unwrap().iter().map(|e| e["delivery_id"].as_str().unwrap()).collect();
        let listed: std::collections::HashSet<&str> =
            shown["attempts"].as_array().unwrap().iter().map(|a| a["delivery_id"].as_str().unwrap()).collect();
        assert_eq!(listed, in_it, "{name}: show <batch id> lists the batch's deliveries");
        let text = String::from_utf8(agent.cli(&["show", first["id"].as_str().unwrap()]).stdout).unwrap();
        assert!(
            text.starts_with(&format!("batch {}: {} deliveries", first["id"].as_str().unwrap(), in_it.len())),
            "{text}"
        );
    }
    assert_eq!(eps[1].requests()[0].header("content-type"), Some("application/x-ndjson"));
    assert_eq!(eps[2].requests()[0].header("content-encoding"), Some("zstd"));
}

#[test]
fn a_413_splits_the_batch_in_halves_down_to_one_event_which_alone_fails() {
    let broker = Mosquitto::start();
    // About four envelopes fit; the big one never does.
    let ep = Endpoint::start(Reply::BodyLimit(1400));
    let dir = tempfile::tempdir().unwrap();
    let config = base_config(broker.port)
        + &subscription("small", &ep.url(), "batch = { max_events = 20, max_wait = \"500ms\" }");
    let agent = Agent::start(dir.path(), &config);
    agent.wait_subscribed();
    let mut messages: Vec<_> = (1..=9).map(|n| mission("agv-1", n, "completed")).collect();
    let big = json!({"mission_id": "m-big", "seq": 100, "status": "completed", "map": "x".repeat(2000)});
    messages.insert(4, ("fleet/agv-1/mission".to_string(), big.to_string().into_bytes()));
    publish(broker.port, &messages);
    assert!(
        wait_until(LONG, || agent.count("SELECT COUNT(*) FROM deliveries WHERE state = 'pending'") == 0
            && agent.count("SELECT COUNT(*) FROM deliveries") == 10),
        "every delivery ends"
    );
    let reqs = ep.requests();
    let accepted: Vec<&Request> = reqs.iter().filter(|r| r.body.len() <= 1400).collect();
    let batches = verified_batches(&accepted.iter().map(|r| (*r).clone()).collect::<Vec<_>>());
    let mut got = seqs(&batches);
    got.sort_unstable();
    assert_eq!(got, (1..=9).collect::<Vec<_>>(), "each small event delivered once, in a smaller batch");
    let refused = reqs.len() - accepted.len();
    assert!(refused >= 3, "the whole batch, the half with the big event, … down to the big one alone: {refused}");
    let last_refused = reqs.iter().rev().find(|r| r.body.len() > 1400).unwrap();
    assert_eq!(last_refused.header("x-fleethook-batch-size"), Some("1"), "split down to one event");
    let failed: (String, i64, String) = agent
        .db()
        .query_row(
            "SELECT e.data, d.last_status, d.state FROM deliveries d JOIN events e ON e.seq = d.event_seq WHERE d.state != 'delivered'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert!(failed.0.contains("m-big") && failed.1 == 413 && failed.2 == "failed", "{failed:?}");
    assert_eq!(agent.count("SELECT COUNT(*) FROM deliveries WHERE state = 'delivered'"), 9);
    assert!(agent.log().contains("sending it in halves"), "{}", agent.log());
}

#[test]
fn a_fifo_subscription_keeps_event_order_across_batches_and_a_retried_batch_keeps_its_id() {
    let broker = Mosquitto::start();
    let ep = Endpoint::scripted(vec![Reply::Status(503)], Reply::Status(200));
    let dir = tempfile::tempdir().unwrap();
    let config = base_config(broker.port)
        + &subscription(
            "ordered",
            &ep.url(),
            "ordering = \"fifo\"\nretry = [\"300ms\", \"300ms\"]\nbatch = { max_events = 10, max_wait = \"200ms\" }",
        );
    let agent = Agent::start(dir.path(), &config);
    agent.wait_subscribed();
    publish(broker.port, &(1..=45).map(|n| mission("agv-1", n, "completed")).collect::<Vec<_>>());
    let batches = wait_all(&ep, 45, 1);
    assert_eq!(seqs(&batches), (1..=45).collect::<Vec<_>>(), "in event order, each once after the 503");
    let first = verified_batches(&ep.requests()[..1]);
    let first_seqs = seqs(&first);
    assert_eq!(first_seqs, seqs(&batches[..1]), "the refused batch goes again with the same members…");
    assert_eq!(first[0]["id"], batches[0]["id"], "…and the same id");
    assert_eq!(ep.requests()[1].header("x-fleethook-attempt"), Some("2"));
    drop(agent);
}

#[test]
fn kill9_with_batches_in_flight_loses_nothing() {
    let broker = Mosquitto::start();
    let ep = Endpoint::start(Reply::Slow(Duration::from_millis(400), 200));
    let dir = tempfile::tempdir().unwrap();
    let config = base_config(broker.port)
        + &subscription("slow", &ep.url(), "batch = { max_events = 25, max_wait = \"100ms\" }");
    let mut agent = Agent::start(dir.path(), &config);
    agent.wait_subscribed();
    let n = 300;
    let messages: Vec<_> = (1..=n).map(|i| mission("agv-1", i, "completed")).collect();
    let mut kills = 0;
    for chunk in messages.chunks(60) {
        publish(broker.port, chunk);
        // Kill while a batch is out (the endpoint holds each 400 ms).
        let before = ep.count();
        wait_until(Duration::from_secs(5), || ep.count() > before);
        std::thread::sleep(Duration::from_millis(150));
        agent.kill9();
        kills += 1;
        agent.spawn();
        agent.wait_subscribed();
    }
    ep.set_default(Reply::Status(200));
    let batches = wait_all(&ep, n as u64, 0);
    let mut counts: HashMap<u64, usize> = HashMap::new();
    for s in seqs(&batches) {
        *counts.entry(s).or_default() += 1;
    }
    let duplicates: usize = counts.values().map(|c| c - 1).sum();
    println!(
        "kill9_with_batches_in_flight: {n} published, {} delivered, {duplicates} duplicates, {kills} kills",
        counts.len()
    );
    assert_eq!(counts.len(), n, "every event arrived at least once");
}
