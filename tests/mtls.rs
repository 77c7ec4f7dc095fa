//! Client certificates (issue #19): an endpoint and a broker that require one get it from
//! `client_cert`/`client_key`; a subscription without one fails with an ERROR that names
//! it and says what to set. A local CA made with rcgen; a real mosquitto on TLS.

mod common;

use std::time::Duration;

use common::pki::Pki;
use common::*;

const LONG: Duration = Duration::from_secs(20);

fn toml_path(p: &std::path::Path) -> String {
    p.display().to_string()
}

#[test]
fn an_endpoint_that_requires_a_client_certificate_gets_it_and_a_subscription_without_one_is_named() {
    let pki = Pki::new();
    let ep = Endpoint::start_with_tls(Reply::Status(200), pki.acceptor_requiring_client_certs());
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let files = pki.write(dir.path(), "robot", &["agv-1"]);
    let (ca, cert, key) = (toml_path(&files.ca), toml_path(&files.cert), toml_path(&files.key));
    let config = base_config(broker.port)
        + &subscription(
            "certified",
            &ep.https_url(),
            &format!("ca_file = \"{ca}\"\nclient_cert = \"{cert}\"\nclient_key = \"{key}\""),
        )
        + &subscription("uncertified", &ep.https_url(), &format!("ca_file = \"{ca}\""));
    let agent = Agent::start(dir.path(), &config);
    agent.wait_subscribed();
    publish(broker.port, &[mission("agv-1", 1, "completed"), mission("agv-1", 2, "completed")]);

    let got = ep.wait_for(2, LONG);
    for r in &got {
        verify(r, fleethook::sign::Scheme::Standard, "X-Fleethook");
    }
    let ids: Vec<String> = got.iter().map(|r| r.json()["data"]["mission_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.contains(&"m-1".to_string()) && ids.contains(&"m-2".to_string()), "{ids:?}");
    assert!(
        wait_until(LONG, || agent
            .log()
            .lines()
            .any(|l| l.contains("ERROR") && l.contains("uncertified") && l.contains("requires a client certificate"))),
        "the refused subscription is named at ERROR with what to set:\n{}",
        agent.log()
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(ep.count(), 2, "nothing got through without a certificate");

    // `check` prints the paths, never the key.
    let out = agent.cli(&["check"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("client_key = \"{key}\"")), "{text}");
    assert!(!text.contains("PRIVATE KEY"));
}

#[test]
fn a_broker_that_requires_a_client_certificate_accepts_the_agent() {
    let pki = Pki::new();
    let broker = Mosquitto::start_requiring_client_certs(&pki);
    let ep = Endpoint::start(Reply::Status(200));
    let dir = tempfile::tempdir().unwrap();
    let files = pki.write(dir.path(), "robot", &["agv-1"]);
    let mqtt = format!(
        "[mqtt]\nurl = \"mqtts://localhost:{}\"\nca_file = \"{}\"\nclient_cert = \"{}\"\nclient_key = \"{}\"\n",
        broker.port,
        toml_path(&files.ca),
        toml_path(&files.cert),
        toml_path(&files.key)
    );
    let config = base_config(broker.port)
        .replace(&format!("[mqtt]\nurl = \"mqtt://127.0.0.1:{}\"\n", broker.port), &mqtt)
        + &subscription("ops", &ep.url(), "");
    assert!(config.contains("mqtts://"), "{config}");
    let agent = Agent::start(dir.path(), &config);
    agent.wait_subscribed();

    // The test's own publisher presents a certificate from the same CA.
    let publisher = pki.write(dir.path(), "publisher", &["publisher"]);
    let body = r#"{"status":"completed","mission_id":"m-9"}"#;
    let out = std::process::Command::new("mosquitto_pub")
        .args(["-h", "localhost", "-p", &broker.port.to_string(), "-q", "1", "-t", "fleet/agv-1/mission", "-m", body])
        .arg("--cafile")
        .arg(&publisher.ca)
        .arg("--cert")
        .arg(&publisher.cert)
        .arg("--key")
        .arg(&publisher.key)
        .output()
        .unwrap();
    assert!(out.status.success(), "mosquitto_pub: {}", String::from_utf8_lossy(&out.stderr));
    let got = ep.wait_for(1, LONG);
    assert_eq!(got[0].json()["data"]["mission_id"], "m-9");
    verify(&got[0], fleethook::sign::Scheme::Standard, "X-Fleethook");
}

#[test]
fn a_client_certificate_without_its_key_or_without_tls_is_refused_with_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleethook.toml");
    let config = "[mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\nclient_cert = \"/c.pem\"\nclient_key = \"/c.key\"\n\n\
                  [[subscription]]\nname = \"a\"\nurl = \"https://example.com/h\"\nsignature = \"none\"\nclient_cert = \"/c.pem\"\n";
    std::fs::write(&path, config).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fleethook"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("fleethook.toml:3: mqtt.client_cert: a client certificate needs TLS"), "{err}");
    assert!(err.contains("subscription[0].client_key: client_cert is set but client_key is not"), "{err}");
}
