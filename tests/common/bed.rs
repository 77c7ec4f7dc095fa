//! The test bed: a broker and the real agent with the shared config head, in a few lines.
//!
//! ```ignore
//! let ep = Endpoint::start(Reply::Status(200));
//! let bed = Bed::new().subscription("ops", &ep.url(), "").start();
//! bed.publish(&[mission("agv-1", 1, "completed")]);
//! assert!(bed.wait_count("SELECT COUNT(*) FROM deliveries WHERE state = 'delivered'", 1));
//! ```
//!
//! A `Bed` derefs to its [`Agent`], so `bed.cli(..)`, `bed.count(..)` and `bed.kill9()`
//! read as they do on an agent. The config is [`base_config`] (quick probes, `synchronous
//! = "normal"`, two routes) with the test's edits, extra sections and subscriptions.

use std::ops::{Deref, DerefMut};
use std::time::Duration;

use super::{Agent, Endpoint, Mosquitto, Reply, base_config, free_port, publish, subscription, wait_until};

/// How long a bed waits for something the agent should do promptly.
pub const PROMPTLY: Duration = Duration::from_secs(20);

/// What a test asks for before anything starts; [`BedBuilder::start`] starts it.
#[must_use]
pub struct BedBuilder {
    broker: Option<String>,
    edits: Vec<(String, String)>,
    tail: String,
    env: Vec<(String, String)>,
    dir: Option<std::path::PathBuf>,
}

pub struct Bed {
    pub broker: Mosquitto,
    pub agent: Agent,
    config: String,
    _home: Option<tempfile::TempDir>,
}

impl Bed {
    #[allow(clippy::new_ret_no_self)]
    pub fn new() -> BedBuilder {
        BedBuilder { broker: None, edits: Vec::new(), tail: String::new(), env: Vec::new(), dir: None }
    }
}

impl BedBuilder {
    /// mosquitto settings, one per line, in place of the test broker's defaults.
    pub fn broker(mut self, settings: &str) -> Self {
        self.broker = Some(settings.to_string());
        self
    }

    /// Replaces `from` with `to` in the shared config head (the first occurrence must exist).
    pub fn edit(mut self, from: &str, to: &str) -> Self {
        self.edits.push((from.to_string(), to.to_string()));
        self
    }

    /// `synchronous = "full"`, as shipped (the head uses `normal` for speed).
    pub fn full_sync(self) -> Self {
        self.edit("synchronous = \"normal\"", "synchronous = \"full\"")
    }

    /// Lines added to `[storage]`.
    pub fn storage(self, lines: &str) -> Self {
        self.edit("[storage]\n", &format!("[storage]\n{lines}\n"))
    }

    /// Lines added to `[delivery]`.
    pub fn delivery(self, lines: &str) -> Self {
        self.edit("[delivery]\n", &format!("[delivery]\n{lines}\n"))
    }

    /// Raw TOML appended after the head: routes, tables.
    pub fn toml(mut self, text: &str) -> Self {
        self.tail.push('\n');
        self.tail.push_str(text);
        self.tail.push('\n');
        self
    }

    /// A `[[route]]` with these keys.
    pub fn route(self, keys: &str) -> Self {
        self.toml(&format!("[[route]]\n{keys}"))
    }

    /// A subscription signed with the test secret (see [`subscription`]).
    pub fn subscription(mut self, name: &str, url: &str, extra: &str) -> Self {
        self.tail.push_str(&subscription(name, url, extra));
        self
    }

    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_string(), value.to_string()));
        self
    }

    /// The agent's directory (config, log, outbox) is `dir`, not a fresh temporary one.
    pub fn in_dir(mut self, dir: &std::path::Path) -> Self {
        self.dir = Some(dir.to_path_buf());
        self
    }

    /// Starts the broker and the agent, and waits until the agent has subscribed.
    pub fn start(self) -> Bed {
        let mut bed = self.configure();
        bed.agent.spawn();
        bed.agent.wait_subscribed();
        bed
    }

    /// Starts the broker and writes the agent's config, without starting the agent.
    pub fn configure(self) -> Bed {
        let broker = match &self.broker {
            Some(settings) => Mosquitto::start_with(settings),
            None => Mosquitto::start(),
        };
        let mut config = base_config(broker.port);
        for (from, to) in &self.edits {
            assert!(config.contains(from.as_str()), "the config head has no {from:?} to edit");
            config = config.replacen(from.as_str(), to, 1);
        }
        config.push_str(&self.tail);
        let (home, dir) = match self.dir {
            Some(dir) => (None, dir),
            None => {
                let home = tempfile::tempdir().unwrap();
                let dir = home.path().to_path_buf();
                (Some(home), dir)
            }
        };
        let mut agent = Agent::configure(&dir, &config);
        agent.env = self.env;
        Bed { broker, agent, config, _home: home }
    }
}

impl Bed {
    /// Publishes QoS 1 messages to the bed's broker and waits for every PUBACK.
    pub fn publish(&self, messages: &[(String, Vec<u8>)]) {
        publish(self.broker.port, messages)
    }

    /// Publishes `n` missions from `agv-1`, seqs `0..n`, status `completed`.
    pub fn missions(&self, n: usize) {
        self.publish(&(0..n).map(|i| super::mission("agv-1", i, "completed")).collect::<Vec<_>>())
    }

    /// The outbox's counter of `outcome` for subscription `sub`.
    pub fn counter(&self, sub: &str, outcome: &str) -> i64 {
        self.db()
            .query_row(
                "SELECT COALESCE(SUM(n), 0) FROM counters WHERE subscription = ?1 AND outcome = ?2",
                [sub, outcome],
                |r| r.get(0),
            )
            .unwrap()
    }

    /// The config as written (with `{dir}` not yet replaced): edit it for a SIGHUP test.
    pub fn config(&self) -> &str {
        &self.config
    }

    /// Waits until the count `sql` returns reaches `n`; returns whether it did.
    pub fn wait_count(&self, sql: &str, n: i64) -> bool {
        wait_until(PROMPTLY, || self.count(sql) >= n)
    }

    /// Deliveries in state `state`.
    pub fn deliveries(&self, state: &str) -> i64 {
        self.count(&format!("SELECT COUNT(*) FROM deliveries WHERE state = '{state}'"))
    }

    /// Waits until exactly `n` deliveries are in state `state`; returns whether they were.
    pub fn wait_deliveries(&self, state: &str, n: i64) -> bool {
        wait_until(PROMPTLY, || self.deliveries(state) == n)
    }
}

impl Deref for Bed {
    type Target = Agent;
    fn deref(&self) -> &Agent {
        &self.agent
    }
}

impl DerefMut for Bed {
    fn deref_mut(&mut self) -> &mut Agent {
        &mut self.agent
    }
}

/// An endpoint that is not there yet: its URL refuses connections until [`Down::up`].
pub struct Down {
    pub port: u16,
}

impl Down {
    pub fn new() -> Down {
        Down { port: free_port() }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    /// The endpoint comes up on the same port, answering `reply`.
    pub fn up(&self, reply: Reply) -> Endpoint {
        Endpoint::start_on(self.port, reply, Vec::new())
    }

    /// The same, with `script` answered first.
    pub fn up_scripted(&self, script: Vec<Reply>, reply: Reply) -> Endpoint {
        Endpoint::start_on(self.port, reply, script)
    }
}
