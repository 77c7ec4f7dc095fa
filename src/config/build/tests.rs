use super::*;

const GOOD: &str = r#"
device_id = "agv-007"

[mqtt]
url = "mqtt://127.0.0.1:1883"

[storage]
path = "/tmp/x.db"
max_bytes = "256MiB"

[[route]]
topic = "fleet/+/mission"
event = "mission.{/status}"
device_id = "{topic.1}"
priority = "high"
ttl = "7d"

[[subscription]]
name = "ops"
url = "https://hooks.example.com/fleet"
events = ["mission.*"]
secret = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_c2Vjb25k"]
retry = ["5s", "30s"]
rate_limit = "5/s"
headers = { Authorization = "Bearer topsecret", X-Team = "robots" }
"#;

fn errors(src: &str) -> Vec<ConfigError> {
    Config::parse(src, Path::new("f.toml")).expect_err("config should be refused").0
}

#[test]
fn a_good_config_resolves_with_defaults() {
    let c = Config::parse(GOOD, Path::new("f.toml")).unwrap();
    assert_eq!(c.device_id, "agv-007");
    assert_eq!(c.mqtt.client_id, "fleethook-agv-007");
    assert_eq!(c.storage.max_bytes, 256 << 20);
    let s = &c.subscriptions[0];
    assert_eq!(s.retry, vec![Duration::from_secs(5), Duration::from_secs(30)]);
    assert_eq!(s.keys.0.len(), 2);
    let debug = format!("{c:?}");
    assert!(!debug.contains("MfKQ9r8") && !debug.contains("topsecret"), "{debug}");
    assert_eq!(s.signature, Scheme::Standard);
    assert_eq!(c.routes[0].ttl, Some(Duration::from_secs(7 * 86400)));
    assert_eq!(s.rate_limit.unwrap().per_second, 5.0);
    let shown = c.to_redacted_toml();
    assert!(!shown.contains("MfKQ9r8"), "{shown}");
    assert!(!shown.contains("topsecret"), "{shown}");
    assert!(shown.contains("robots"), "{shown}");
}

#[test]
fn unknown_keys_name_line_and_key() {
    let e = errors("[mqtt]\nurl = \"mqtt://h\"\nurll = \"x\"\n");
    assert_eq!(e[0].line, 3, "{e:?}");
    assert!(e[0].message.contains("urll"), "{e:?}");
}

#[test]
fn bad_durations_and_sizes_name_the_key() {
    let src = GOOD
        .replace("retry = [\"5s\", \"30s\"]", "retry = [\"5s\", \"30 parsecs\"]")
        .replace("max_bytes = \"256MiB\"", "max_bytes = \"lots\"");
    let e = errors(&src);
    let keys: Vec<_> = e.iter().map(|e| e.key.as_str()).collect();
    assert!(keys.contains(&"storage.max_bytes"), "{e:?}");
    assert!(keys.contains(&"subscription[0].retry[1]"), "{e:?}");
    let retry = e.iter().find(|e| e.key == "subscription[0].retry[1]").unwrap();
    assert_eq!(retry.line, GOOD.lines().position(|l| l.starts_with("retry")).unwrap() + 1);
}

#[test]
fn http_needs_allow_http_and_secrets_are_required() {
    let src = GOOD
        .replace("https://hooks.example.com/fleet", "http://hooks.example.com/fleet")
        .replace("secret = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\", \"whsec_c2Vjb25k\"]", "");
    let e = errors(&src);
    assert!(e.iter().any(|e| e.key == "subscription[0].url" && e.message.contains("allow_http")), "{e:?}");
    assert!(e.iter().any(|e| e.key == "subscription[0].secret" && e.message.contains("required")), "{e:?}");
}

#[test]
fn templates_that_reference_nothing_are_errors() {
    let e = errors(&GOOD.replace("device_id = \"{topic.1}\"", "device_id = \"{topic.7}\""));
    assert_eq!(e[0].key, "route[0].device_id");
    assert!(e[0].message.contains("references nothing"), "{e:?}");
}

#[test]
fn bad_urls_and_schemes() {
    let e = errors(&GOOD.replace("mqtt://127.0.0.1:1883", "tcp://broker"));
    assert_eq!(e[0].key, "mqtt.url");
    let e = errors(&GOOD.replace("whsec_c2Vjb25k", "not-a-whsec"));
    assert!(e[0].key.starts_with("subscription[0].secret"), "{e:?}");
    assert!(e[0].message.contains("whsec_"), "{e:?}");
}

#[test]
fn syntax_errors_have_a_line() {
    let e = errors("device_id = \"a\"\n[mqtt\nurl = 1\n");
    assert_eq!(e[0].line, 2, "{e:?}");
}

#[test]
fn wrong_types_name_the_key() {
    let e = errors("[delivery]\nmax_in_flight = \"many\"\n");
    assert_eq!(e[0].key, "delivery.max_in_flight", "{e:?}");
    assert_eq!(e[0].line, 2);
}

#[test]
fn rates_parse() {
    assert_eq!(super::range::parse_rate("100/m").unwrap().per_second, 100.0 / 60.0);
    assert!(super::range::parse_rate("5/week").is_err());
    assert!(super::range::parse_rate("0/s").is_err());
}

#[test]
fn secrets_come_from_files_env_and_credentials() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ops-secret"), "whsec_c2Vjb25k\n").unwrap();
    // SAFETY: these variable names are used by this test only.
    unsafe {
        std::env::set_var("FLEETHOOK_TEST_SECRET_ENV", "whsec_dGhpcmQ=");
        std::env::set_var("CREDENTIALS_DIRECTORY", dir.path());
    }
    let src = GOOD.replace(
        "secret = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\", \"whsec_c2Vjb25k\"]",
        &format!(
            "secret_file = \"{}\"\nsecret_env = \"FLEETHOOK_TEST_SECRET_ENV\"\nsecret_credential = \"ops-secret\"",
            dir.path().join("ops-secret").display()
        ),
    );
    let c = Config::parse(&src, Path::new("f.toml")).unwrap();
    let secrets: Vec<_> = c.subscriptions[0].secrets.0.iter().map(|s| s.expose().to_string()).collect();
    assert_eq!(secrets, ["whsec_c2Vjb25k", "whsec_dGhpcmQ=", "whsec_c2Vjb25k"]);
    let e = errors(&src.replace("FLEETHOOK_TEST_SECRET_ENV", "FLEETHOOK_TEST_UNSET_VAR"));
    assert!(e[0].key == "subscription[0].secret_env" && e[0].message.contains("not set"), "{e:?}");
}

#[test]
fn oauth2_auth_needs_its_keys_and_prints_without_its_secret() {
    let sub = |auth: &str| {
        format!(
            "[[subscription]]\nname = \"a\"\nurl = \"https://h.example/x\"\nsignature = \"none\"\nauth = {{ {auth} }}\n"
        )
    };
    let c = Config::parse(
        &sub(r#"token_url = "https://id.example/token", client_id = "robot-7", client_secret = "hush", scope = "w""#),
        Path::new("f.toml"),
    )
    .unwrap();
    let Some(Auth::OAuth2(o)) = &c.subscriptions[0].auth else { panic!("{:?}", c.subscriptions[0].auth) };
    assert_eq!((o.client_id.as_str(), o.client_secret.expose(), o.scope.as_deref()), ("robot-7", "hush", Some("w")));
    let printed = toml::to_string(&c).unwrap();
    assert!(printed.contains("client_secret = \"<redacted sha256:") && !printed.contains("hush"), "{printed}");
    assert!(printed.contains("token_url = \"https://id.example/token\""), "{printed}");

    let keys = |src: &str| errors(&sub(src)).into_iter().map(|e| (e.key, e.message)).collect::<Vec<_>>();
    let e = keys(r#"token_url = "http://id.example/token""#);
    assert!(e.iter().any(|(k, m)| k == "subscription[0].auth.token_url" && m.contains("https://")), "{e:?}");
    assert!(e.iter().any(|(k, _)| k == "subscription[0].auth.client_id"), "{e:?}");
    assert!(
        e.iter().any(|(k, m)| k == "subscription[0].auth.client_secret" && m.contains("client_secret_file")),
        "{e:?}"
    );
    let e = keys(r#"bearer_file = "/t", token_url = "https://id.example/token""#);
    assert!(e.iter().any(|(_, m)| m.contains("two ways")), "{e:?}");
    let e = keys("");
    assert!(e.iter().any(|(k, m)| k == "subscription[0].auth" && m.contains("bearer_file, or token_url")), "{e:?}");
}

#[test]
fn batch_takes_defaults_and_is_refused_where_a_service_takes_one_event_per_request() {
    let with = |extra: &str| format!("{GOOD}{extra}\n");
    let c = Config::parse(
        &with("batch = { max_wait = \"250ms\", format = \"ndjson\" }\nmetered = { batch = { max_events = 500 } }"),
        Path::new("f.toml"),
    )
    .unwrap();
    let b = c.subscriptions[0].batch.clone().expect("batched");
    assert_eq!((b.max_events, b.max_bytes, b.max_wait), (100, 256 << 10, Duration::from_millis(250)));
    assert_eq!(b.format, crate::config::BatchFormat::Ndjson);
    // metered.batch changes what it names and keeps the rest of the subscription's batch.
    let m = c.subscriptions[0].metered.clone().and_then(|m| m.batch).expect("a metered batch");
    assert_eq!((m.max_events, m.max_wait, m.format), (500, b.max_wait, b.format));
    let e = errors(&with("metered = { batch = { max_events = 5 } }"));
    assert!(e.iter().any(|x| x.key.ends_with("metered.batch") && x.message.contains("own batch first")), "{e:?}");
    let slack = GOOD.replace("events = [\"mission.*\"]", "events = [\"mission.*\"]\nformat = \"slack\"");
    let e = errors(&format!("{slack}batch = {{ max_events = 10 }}\n"));
    let batch = e.iter().find(|e| e.key.ends_with("batch")).expect("batch refused");
    assert!(batch.message.contains("slack takes one event per request"), "{}", batch.message);
    assert!(batch.line > 20, "the line of the batch key: {}", batch.line);
    let e = errors(&with("batch = { max_events = 0, max_bytes = \"1B\", format = \"xml\" }"));
    for key in ["batch.max_events", "batch.max_bytes", "batch.format"] {
        assert!(e.iter().any(|x| x.key.ends_with(key)), "{key}: {e:?}");
    }
}

#[test]
fn a_socket_path_too_long_to_bind_and_a_directory_as_the_outbox_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let long = format!("/run/{}/status.sock", "x".repeat(100));
    let src = GOOD.replace("path = \"/tmp/x.db\"", &format!("path = \"{}\"", dir.path().display()))
        + &format!("\n[status]\nsocket = \"{long}\"\n");
    let e = errors(&src);
    assert!(e.iter().any(|e| e.key == "status.socket" && e.message.contains("at most 107")), "{e:?}");
    assert!(e.iter().any(|e| e.key == "storage.path" && e.message.contains("is a directory")), "{e:?}");
}
