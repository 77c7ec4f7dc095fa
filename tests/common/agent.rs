//! The real `fleethook` binary, run with a config file in its own directory.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{signal, wait_until};

/// The real agent binary, run with a config file in its own directory.
pub struct Agent {
    pub dir: PathBuf,
    pub config: PathBuf,
    /// Extra environment for the agent process.
    pub env: Vec<(String, String)>,
    child: Option<Child>,
    log: PathBuf,
    starts: usize,
}

impl Agent {
    /// Writes `config` (with `{dir}` replaced by the agent's directory) and starts it.
    pub fn start(dir: &Path, config: &str) -> Agent {
        Agent::start_env(dir, config, &[])
    }

    pub fn start_env(dir: &Path, config: &str, env: &[(&str, &str)]) -> Agent {
        let mut a = Agent::configure(dir, config);
        a.env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        a.spawn();
        a
    }

    /// Writes the config without starting the agent.
    pub fn configure(dir: &Path, config: &str) -> Agent {
        let config_path = dir.join("fleethook.toml");
        std::fs::write(&config_path, config.replace("{dir}", &dir.display().to_string())).unwrap();
        Agent {
            dir: dir.to_path_buf(),
            config: config_path,
            env: Vec::new(),
            child: None,
            log: PathBuf::new(),
            starts: 0,
        }
    }

    /// Replaces the config file (for SIGHUP).
    pub fn rewrite_config(&self, config: &str) {
        std::fs::write(&self.config, config.replace("{dir}", &self.dir.display().to_string())).unwrap();
    }

    pub fn signal(&self, sig: &str) {
        signal(self.child.as_ref().expect("agent running").id(), sig);
    }

    pub fn spawn(&mut self) {
        self.starts += 1;
        self.log = self.dir.join(format!("agent-{}.log", self.starts));
        let log = std::fs::File::create(&self.log).unwrap();
        let child = Command::new(agent_binary())
            .args(["run", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "fleethook=debug")
            // Whatever the host's time service is doing, a test's clock is good unless
            // the test says otherwise (tests/clocks.rs lies to the agent on purpose).
            .env("FLEETHOOK_CLOCK", "synced")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// Runs `fleethook ARGS --config <this agent's config>`: a socket command reaches it.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(agent_binary()).args(args).arg("--config").arg(&self.config).output().unwrap()
    }

    /// The same with `--json`: asserts that it succeeded and parses what it printed.
    pub fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.cli(&[args, &["--json"]].concat());
        assert!(out.status.success(), "fleethook {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Waits until the agent has subscribed to its routes' topics.
    pub fn wait_subscribed(&self) {
        assert!(
            wait_until(Duration::from_secs(15), || self.log().contains("Subscribed to the route topics")),
            "the agent did not subscribe; log:\n{}",
            self.log()
        );
    }

    /// SIGTERM, and the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("agent running");
        signal(c.id(), "TERM");
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < end, "the agent did not exit within 20 s of SIGTERM; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no chance to commit, ack or say goodbye.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(c.id(), "KILL");
            let _ = c.wait();
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("agent running").id()
    }

    /// CPU time the agent has used so far (user + system), from /proc.
    pub fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        // Fields after the command name, which is in parentheses and may hold spaces.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        // SAFETY: sysconf only reads a constant.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        Duration::from_millis(ticks * 1000 / hz)
    }

    /// Waits for the agent to end by itself (a signal, a crash) and returns how it ended.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let c = self.child.as_mut()?;
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if let Some(status) = c.try_wait().unwrap() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// A read-only view of the agent's outbox.
    pub fn db(&self) -> rusqlite::Connection {
        let c = rusqlite::Connection::open_with_flags(
            self.dir.join("outbox.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        c.busy_timeout(Duration::from_secs(5)).unwrap();
        c
    }

    pub fn count(&self, sql: &str) -> i64 {
        self.db().query_row(sql, [], |r| r.get(0)).unwrap()
    }

    /// The first column of every row `sql` reads, as text.
    pub fn texts(&self, sql: &str) -> Vec<String> {
        self.db().prepare(sql).unwrap().query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The real CLI as uid 65534, outside the agent's group.
pub fn as_nobody(socket: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", &agent_binary()])
        .args(args)
        .arg("--socket")
        .arg(socket)
        .output()
        .unwrap()
}

/// The binary under test: this build's, or `FLEETHOOK_TEST_BIN` (to show that a test
/// fails on an older build: `FLEETHOOK_TEST_BIN=/path/to/old/fleethook cargo test …`).
pub fn agent_binary() -> String {
    std::env::var("FLEETHOOK_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_fleethook").to_string())
}
