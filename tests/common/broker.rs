//! A mosquitto per test, on a free port with its own persistence directory, and a
//! publisher that waits for every PUBACK.

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, pki, signal, wait_until};

pub struct Mosquitto {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Lines for the listener: TLS files and options.
    tls: String,
    /// Settings that replace the defaults below (`max_queued_messages 5`).
    extra: String,
}

impl Mosquitto {
    pub fn start() -> Mosquitto {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Mosquitto { port: free_port(), dir, child: None, tls: String::new(), extra: String::new() };
        m.spawn();
        m
    }

    /// A broker with `extra` settings, one per line, in place of the defaults.
    pub fn start_with(extra: &str) -> Mosquitto {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Mosquitto { port: free_port(), dir, child: None, tls: String::new(), extra: extra.to_string() };
        m.spawn();
        m
    }

    /// A broker on TLS only, whose certificate `pki` issued for `localhost`, that
    /// accepts only clients with a certificate `pki` issued.
    pub fn start_requiring_client_certs(pki: &pki::Pki) -> Mosquitto {
        let dir = tempfile::tempdir().unwrap();
        let files = pki.write(dir.path(), "broker", &["localhost"]);
        let tls = format!(
            "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n",
            files.ca.display(),
            files.cert.display(),
            files.key.display()
        );
        let mut m = Mosquitto { port: free_port(), dir, child: None, tls, extra: String::new() };
        m.spawn();
        m
    }

    fn spawn(&mut self) {
        let conf = self.dir.path().join("mosquitto.conf");
        let base = format!(
            "user root\nlistener {} 127.0.0.1\n{}allow_anonymous true\npersistence true\npersistence_location {}/\nmax_inflight_messages 100\nmax_queued_messages 100000\n",
            self.port,
            self.tls,
            self.dir.path().display()
        );
        let replaced: Vec<&str> = self.extra.lines().filter_map(|l| l.split_whitespace().next()).collect();
        let kept: String = base
            .lines()
            .filter(|l| !replaced.contains(&l.split_whitespace().next().unwrap_or("")))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&conf, format!("{kept}{}\n", self.extra)).unwrap();
        let bin = if Path::new("/usr/sbin/mosquitto").exists() { "/usr/sbin/mosquitto" } else { "mosquitto" };
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto is installed (run ./scripts/test.sh, which installs it)");
        self.child = Some(child);
        let port = self.port;
        assert!(
            wait_until(Duration::from_secs(10), || TcpStream::connect(("127.0.0.1", port)).is_ok()),
            "mosquitto did not start listening"
        );
    }

    /// Stops the broker cleanly (it writes its persistence file) and starts it again.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(c.id(), "TERM");
            let _ = c.wait();
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Publishes QoS 1 messages and returns once the broker has acked every one.
pub fn publish(port: u16, messages: &[(String, Vec<u8>)]) {
    publish_flagged(port, messages, false, None)
}

/// [`publish`] as a broker user.
pub fn publish_as(port: u16, user: &str, password: &str, messages: &[(String, Vec<u8>)]) {
    publish_flagged(port, messages, false, Some((user, password)))
}

/// Publishes QoS 1 messages with the retain flag.
pub fn publish_retained(port: u16, messages: &[(String, Vec<u8>)]) {
    publish_flagged(port, messages, true, None)
}

fn publish_flagged(port: u16, messages: &[(String, Vec<u8>)], retain: bool, user: Option<(&str, &str)>) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut opts = rumqttc::MqttOptions::new(format!("test-pub-{}", free_port()), "127.0.0.1", port);
        opts.set_max_packet_size(16 << 20, 16 << 20);
        if let Some((user, password)) = user {
            opts.set_credentials(user, password);
        }
        let (client, mut events) = rumqttc::AsyncClient::new(opts, messages.len() + 10);
        for (topic, payload) in messages {
            client.publish(topic.clone(), rumqttc::QoS::AtLeastOnce, retain, payload.clone()).await.unwrap();
        }
        let mut acked = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while acked < messages.len() {
            let ev = tokio::time::timeout_at(deadline, events.poll()).await.expect("broker acked in time").unwrap();
            if let rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)) = ev {
                acked += 1;
            }
        }
        let _ = client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_millis(200), events.poll()).await;
    });
}

pub fn mission(device: &str, n: usize, status: &str) -> (String, Vec<u8>) {
    let body = serde_json::json!({"mission_id": format!("m-{n}"), "seq": n, "status": status});
    (format!("fleet/{device}/mission"), body.to_string().into_bytes())
}
