//! Proxies (issue #19): a subscription's requests go through the proxy the config names,
//! plain HTTP and CONNECT to a TLS endpoint alike, through Debian's `tinyproxy`; its
//! credentials never show. Real mosquitto, the real binary, a real proxy.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

const LONG: Duration = Duration::from_secs(20);

/// A tinyproxy on a free loopback port, logging every request.
struct Tinyproxy {
    port: u16,
    log: std::path::PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Tinyproxy {
    fn start() -> Tinyproxy {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let log = dir.path().join("tinyproxy.log");
        let conf = dir.path().join("tinyproxy.conf");
        std::fs::write(
            &conf,
            format!(
                "User root\nGroup root\nPort {port}\nListen 127.0.0.1\nTimeout 30\nAllow 127.0.0.1\n\
                 LogFile \"{}\"\nLogLevel Connect\nMaxClients 20\n",
                log.display()
            ),
        )
        .unwrap();
        let child = Command::new("tinyproxy")
            .args(["-d", "-c"])
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tinyproxy (scripts/test.sh installs it)");
        assert!(
            wait_until(Duration::from_secs(10), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()),
            "tinyproxy did not listen"
        );
        Tinyproxy { port, log, child, _dir: dir }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn deliveries_go_through_the_configured_proxy_and_its_password_never_shows() {
    let broker = Mosquitto::start();
    let proxy = Tinyproxy::start();
    let plain = Endpoint::start(Reply::Status(200));
    let (tls, ca_pem) = Endpoint::start_tls(Reply::Status(200));
    let direct = Endpoint::start(Reply::Status(200));
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, ca_pem).unwrap();
    let proxy_url = format!("http://fleet:s3cr3t-proxy-pw@127.0.0.1:{}", proxy.port);
    let config = base_config(broker.port).replace("[delivery]\n", &format!("[delivery]\nproxy = \"{proxy_url}\"\n"))
        + &subscription("plain", &plain.url(), "")
        + &subscription("tls", &tls.https_url(), &format!("ca_file = \"{}\"", ca.display()))
        + &subscription("direct", &direct.url(), "proxy = \"none\"");
    let agent = Agent::start(dir.path(), &config);
    agent.wait_subscribed();
    const N: usize = 5;
    let messages: Vec<_> = (0..N).map(|n| mission("agv-1", n, "completed")).collect();
    publish(broker.port, &messages);
    for (name, ep) in [("plain", &plain), ("tls", &tls), ("direct", &direct)] {
        let got = ep.wait_for(N, LONG);
        assert_eq!(got.len(), N, "{name}: {}", agent.log());
        got.iter().for_each(|r| verify(r, fleethook::sign::Scheme::Standard, "X-Fleethook"));
    }
    let log = proxy.log();
    assert!(log.contains(&format!("CONNECT localhost:{}", tls.port)), "TLS went through the proxy:\n{log}");
    assert!(log.contains(&format!("127.0.0.1:{}/hook", plain.port)), "plain HTTP went through the proxy:\n{log}");
    assert!(!log.contains(&format!(":{}", direct.port)), "proxy = \"none\" goes straight:\n{log}");
    let printed =
        Command::new(env!("CARGO_BIN_EXE_fleethook")).args(["check", "--config"]).arg(&agent.config).output().unwrap();
    let shown = String::from_utf8_lossy(&printed.stdout).into_owned() + &agent.log();
    assert!(!shown.contains("s3cr3t-proxy-pw"), "the proxy password leaked:\n{shown}");
    assert!(shown.contains(&format!("proxy = \"http://127.0.0.1:{}/\"", proxy.port)), "{shown}");
}
