//! Compressed bodies (issue #18, part): `compression = "gzip" | "zstd"` sends
//! `Content-Encoding`, and the signature covers the bytes as sent. Each request is
//! verified by the README's own Python snippet over the raw body, then decoded by
//! libraries nobody here wrote: Python's `gzip` or PyPI's `zstandard`. An endpoint that answers 415
//! gets the same delivery again uncompressed, and from then on.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

const LONG: Duration = Duration::from_secs(20);

/// Verifies each request with the README's stdlib snippet over the bytes as sent, then
/// decodes it with Python's `gzip` or PyPI's `zstandard`; returns the envelopes.
fn verified_and_decoded(requests: &[Request]) -> Vec<Value> {
    let script = r#"
import gzip, zstandard
out = []
for r in requests:
    raw = r["body"]
    assert verify(SECRET, r["headers"], raw), "the README snippet rejects it"
    enc = r["headers"].get("content-encoding")
    if enc == "gzip":
        raw = gzip.decompress(raw)
    elif enc == "zstd":
        raw = zstandard.ZstdDecompressor().decompressobj().decompress(raw)
    out.append({"encoding": enc, "envelope": json.loads(raw)})
print(json.dumps(out))
"#;
    serde_json::from_value(python_over(requests, script)).unwrap()
}

#[test]
fn gzip_and_zstd_bodies_verify_as_sent_and_decode_with_stock_libraries() {
    let broker = Mosquitto::start();
    let (gz, zs) = (Endpoint::start(Reply::Status(200)), Endpoint::start(Reply::Status(200)));
    let dir = tempfile::tempdir().unwrap();
    let config = base_config(broker.port)
        + &subscription("gz", &gz.url(), "compression = \"gzip\"")
        + &subscription("zs", &zs.url(), "compression = \"zstd\"");
    let agent = Agent::start(dir.path(), &config);
    agent.wait_subscribed();
    publish(broker.port, &(1..=3).map(|n| mission("agv-1", n, "completed")).collect::<Vec<_>>());
    for (ep, encoding) in [(&gz, "gzip"), (&zs, "zstd")] {
        let got = verified_and_decoded(&ep.wait_for(3, LONG));
        let mut ids: Vec<&str> = got.iter().map(|r| r["envelope"]["data"]["mission_id"].as_str().unwrap()).collect();
        ids.sort();
        assert_eq!(ids, ["m-1", "m-2", "m-3"], "{encoding}");
        assert!(got.iter().all(|r| r["encoding"] == encoding && r["envelope"]["type"] == "mission.completed"));
    }
    // The bytes on the wire are the compressed ones.
    let raw = &gz.requests()[0];
    assert_eq!(&raw.body[..2], &[0x1f, 0x8b], "a gzip member");
    assert_eq!(raw.header("content-type"), Some("application/json"));
}

#[test]
fn an_endpoint_that_answers_415_gets_the_same_delivery_uncompressed_and_no_more_compression() {
    let broker = Mosquitto::start();
    let ep = Endpoint::scripted(vec![Reply::Status(415)], Reply::Status(200));
    let dir = tempfile::tempdir().unwrap();
    let config =
        base_config(broker.port) + &subscription("picky", &ep.url(), "compression = \"gzip\"\nordering = \"fifo\"");
    let agent = Agent::start(dir.path(), &config);
    agent.wait_subscribed();
    publish(broker.port, &[mission("agv-1", 1, "completed")]);
    ep.wait_for(2, LONG);
    publish(broker.port, &[mission("agv-1", 2, "completed")]);
    let got = ep.wait_for(3, LONG);
    let encodings: Vec<Option<&str>> = got.iter().map(|r| r.header("content-encoding")).collect();
    assert_eq!(encodings, [Some("gzip"), None, None]);
    assert_eq!(got[0].header("x-fleethook-delivery"), got[1].header("x-fleethook-delivery"), "the same delivery");
    let decoded = verified_and_decoded(&got);
    assert_eq!(decoded[1]["envelope"]["data"]["mission_id"], "m-1");
    assert_eq!(decoded[2]["envelope"]["data"]["mission_id"], "m-2");
    assert!(agent.log().contains("refused a compressed body (415)"), "{}", agent.log());
    let state: String = agent
        .db()
        .query_row("SELECT outcome FROM attempts ORDER BY seq DESC LIMIT 1", [], |r| r.get(0))
        .unwrap_or_default();
    assert_ne!(state, "failed", "a 415 to a compressed body is not the delivery's failure");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(ep.count(), 3);
    // Every request is an attempt in the metrics: the refused one under `resent`.
    let metrics = String::from_utf8(agent.cli(&["metrics"]).stdout).unwrap();
    let value = |name: &str| -> f64 {
        metrics.lines().find(|l| l.starts_with(name)).and_then(|l| l.rsplit(' ').next()?.parse().ok()).unwrap_or(-1.0)
    };
    assert_eq!(value(r#"fleethook_attempts_total{result="resent",subscription="picky"}"#), 1.0, "{metrics}");
    assert_eq!(value(r#"fleethook_attempts_total{result="delivered",subscription="picky"}"#), 2.0, "{metrics}");
    assert!(value(r#"fleethook_sent_bytes_total{subscription="picky"}"#) > 0.0, "{metrics}");
    assert_eq!(agent.log().matches("refused a compressed body").count(), 1, "said once");
    assert!(
        agent.log().contains("compression=gzip") || agent.log().contains("compression=\"gzip\""),
        "{}",
        agent.log()
    );
}
