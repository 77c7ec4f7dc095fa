//! Brokers other than mosquitto, each a real implementation on a free loopback port, for
//! the broker matrix (tests/brokers.rs): rumqttd (the crate the demo embeds, in this
//! process), aedes (Node-RED's broker, `aedes-cli` from npm) and amqtt (PyPI).
//! `scripts/test.sh` installs aedes under `target/brokers` and amqtt in its venv.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::{Mosquitto, free_port, wait_until};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BrokerKind {
    Mosquitto,
    Rumqttd,
    Aedes,
    Amqtt,
}

/// A route filter the broker refuses when started with [`AnyBroker::start_refusing`].
pub const REFUSED_FILTER: &str = "secret/+/mission";
/// rumqttd refuses any filter that starts with `$` (but `$share`), by hanging up.
pub const REFUSED_BY_RUMQTTD: &str = "$fleet/+/mission";

pub struct AnyBroker {
    pub port: u16,
    /// Lines for the agent's `[mqtt]` (credentials, where the broker needs them).
    pub mqtt_lines: String,
    /// The filter it refuses, when started refusing.
    pub refused: &'static str,
    /// A user to publish as, where the broker needs one.
    pub user: Option<(&'static str, &'static str)>,
    child: Option<Child>,
    _mosquitto: Option<Mosquitto>,
    dir: tempfile::TempDir,
}

impl Drop for AnyBroker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn aedes_bin() -> PathBuf {
    let bin = repo().join("target/brokers/node_modules/.bin/aedes");
    assert!(bin.exists(), "aedes is not installed under target/brokers: run ./scripts/test.sh, which installs it");
    bin
}

fn amqtt_bin() -> PathBuf {
    let venv = repo().join("target/pyenv/bin/amqtt");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("amqtt")
}

impl AnyBroker {
    /// Publishes QoS 1 messages (as its user, where it has one) and waits for every PUBACK.
    pub fn publish(&self, messages: &[(String, Vec<u8>)]) {
        match self.user {
            Some((user, password)) => crate::common::publish_as(self.port, user, password, messages),
            None => crate::common::publish(self.port, messages),
        }
    }

    /// What the broker logged (amqtt), for a failure's message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("broker.log")).unwrap_or_default()
    }

    pub fn start(kind: BrokerKind) -> AnyBroker {
        AnyBroker::start_as(kind, false)
    }

    /// A broker whose ACL (or, for rumqttd, whose filter validation) refuses one route
    /// filter: [`AnyBroker::refused`].
    pub fn start_refusing(kind: BrokerKind) -> AnyBroker {
        AnyBroker::start_as(kind, true)
    }

    fn start_as(kind: BrokerKind, refusing: bool) -> AnyBroker {
        let dir = tempfile::tempdir().unwrap();
        let mut b = AnyBroker {
            port: 0,
            mqtt_lines: String::new(),
            refused: if kind == BrokerKind::Rumqttd { REFUSED_BY_RUMQTTD } else { REFUSED_FILTER },
            user: None,
            child: None,
            _mosquitto: None,
            dir,
        };
        match kind {
            BrokerKind::Mosquitto => {
                let acl = b.dir.path().join("acl");
                std::fs::write(&acl, "topic readwrite fleet/#\n").unwrap();
                let m = if refusing {
                    Mosquitto::start_with(&format!("acl_file {}", acl.display()))
                } else {
                    Mosquitto::start()
                };
                b.port = m.port;
                b._mosquitto = Some(m);
                return b;
            }
            BrokerKind::Rumqttd => {
                b.port = free_port();
                start_rumqttd(b.port);
            }
            BrokerKind::Aedes => {
                b.port = free_port();
                let mut cmd = Command::new(aedes_bin());
                cmd.args(["start", "--host", "127.0.0.1", "--port", &b.port.to_string(), "--protos", "tcp"]);
                if refusing {
                    let creds = b.dir.path().join("credentials.json");
                    let ok = Command::new(aedes_bin())
                        .args(["adduser", "robot", "robot-pass", "--credentials"])
                        .arg(&creds)
                        .args(["--authorize-subscribe", "fleet/**", "--authorize-publish", "**"])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status()
                        .unwrap();
                    assert!(ok.success(), "aedes adduser");
                    cmd.arg("--credentials").arg(&creds);
                    let pass = b.dir.path().join("mqtt-password");
                    std::fs::write(&pass, "robot-pass").unwrap();
                    b.mqtt_lines = format!("username = \"robot\"\npassword_file = \"{}\"\n", pass.display());
                    b.user = Some(("robot", "robot-pass"));
                }
                b.child = Some(cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("aedes starts"));
            }
            BrokerKind::Amqtt => {
                b.port = free_port();
                let acl = if refusing {
                    "  amqtt.plugins.topic_checking.TopicAccessControlListPlugin:\n    acl:\n      anonymous: [\"fleet/#\"]\n"
                } else {
                    ""
                };
                let conf = b.dir.path().join("amqtt.yaml");
                std::fs::write(
                    &conf,
                    format!(
                        "listeners:\n  default:\n    type: tcp\n    bind: 127.0.0.1:{}\nplugins:\n  amqtt.plugins.authentication.AnonymousAuthPlugin:\n    allow_anonymous: true\n{acl}",
                        b.port
                    ),
                )
                .unwrap();
                let log = std::fs::File::create(b.dir.path().join("broker.log")).unwrap();
                b.child = Some(
                    Command::new(amqtt_bin())
                        .arg("-c")
                        .arg(&conf)
                        .stdout(Stdio::null())
                        .stderr(log)
                        .spawn()
                        .expect("amqtt is installed (run ./scripts/test.sh, which installs it)"),
                );
            }
        }
        let port = b.port;
        assert!(
            wait_until(Duration::from_secs(30), || TcpStream::connect(("127.0.0.1", port)).is_ok()),
            "{kind:?} did not start listening"
        );
        // A listener is up before the broker serves (rumqttd's router, amqtt's plugins).
        std::thread::sleep(Duration::from_millis(300));
        b
    }
}

/// rumqttd in this process, on a thread of its own, as the demo runs it.
fn start_rumqttd(port: u16) {
    let config = fleethook::demo::rumqttd_config(port).unwrap();
    std::thread::spawn(move || {
        let mut broker = rumqttd::Broker::new(config);
        let _ = broker.start();
    });
}
