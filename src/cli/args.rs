//! The command line, as clap reads it: every subcommand and its options.

use std::path::PathBuf;
use std::time::Duration;

use clap::builder::PossibleValuesParser;
use clap::{Args, Parser, Subcommand};
use fleethook::config;
use fleethook::status::{LOG_OUTCOMES, QUEUE_STATES};

#[derive(Parser)]
#[command(name = "fleethook", version, about = "Robot events from MQTT to signed webhooks, durably.")]
pub(crate) struct Cli {
    /// The config file.
    #[arg(long, global = true, env = "FLEETHOOK_CONFIG", default_value = config::DEFAULT_PATH)]
    pub(crate) config: PathBuf,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// How a command that asks the running agent reaches it and prints its answer.
#[derive(Args, Clone)]
pub(crate) struct Talk {
    /// The agent's status socket (default: the config's status.socket).
    #[arg(long, env = "FLEETHOOK_SOCKET")]
    pub(crate) socket: Option<PathBuf>,
    /// Print the socket's JSON result instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

/// Where a long-running command logs.
#[derive(Args, Clone, Copy)]
pub(crate) struct Logs {
    /// Where logs go: journald under systemd, else human-readable stderr (auto), or json.
    #[arg(long, value_enum, env = "FLEETHOOK_LOG_FORMAT", default_value = "auto")]
    pub(crate) log_format: fleethook::logging::LogFormat,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Run the agent (what the systemd unit starts).
    Run {
        #[command(flatten)]
        logs: Logs,
    },
    /// Validate the config and print it resolved, secrets redacted; exit 1 on errors.
    Check,
    /// Print a new `whsec_` signing secret.
    Secret,
    /// A local endpoint that verifies signatures and prints each event (for bring-up).
    Receive {
        /// Port to listen on.
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        bind: String,
        /// A secret to verify with; repeat for rotation or for several senders. Without
        /// one, nothing is verified.
        #[arg(long = "secret")]
        secrets: Vec<String>,
        /// Print each request's body too.
        #[arg(long)]
        body: bool,
        #[command(flatten)]
        logs: Logs,
    },
    /// The agent's overview: MQTT, storage, and every subscription's state and counts.
    Status {
        #[command(flatten)]
        talk: Talk,
    },
    /// The status as Prometheus text, for node_exporter's textfile collector (the same
    /// as `[metrics] listen` serves at /metrics).
    Metrics {
        #[command(flatten)]
        talk: Talk,
    },
    /// Pending and failed deliveries.
    Queue {
        /// Only this subscription's deliveries.
        #[arg(long)]
        subscription: Option<String>,
        /// Only deliveries in this state (default: pending and failed).
        #[arg(long, value_parser = PossibleValuesParser::new(QUEUE_STATES))]
        state: Option<String>,
        /// At most this many rows, oldest first.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[command(flatten)]
        talk: Talk,
    },
    /// The audit log of attempts, newest first.
    Log {
        /// Only this subscription's attempts.
        #[arg(long)]
        subscription: Option<String>,
        /// Only attempts with this outcome.
        #[arg(long, value_parser = PossibleValuesParser::new(LOG_OUTCOMES))]
        outcome: Option<String>,
        /// At most this many rows, newest first.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[command(flatten)]
        talk: Talk,
    },
    /// One event (by event or delivery id) with its deliveries and attempts, or a batch by its id.
    Show {
        /// An event id or a delivery id (as `queue`, `log` and the receiver's headers show).
        #[arg(value_name = "ID")]
        id: String,
        #[command(flatten)]
        talk: Talk,
    },
    /// Put failed deliveries back in the queue with a fresh retry budget.
    Retry {
        /// Delivery or event ids.
        ids: Vec<String>,
        /// Every failed delivery (of --subscription, if given).
        #[arg(long)]
        failed: bool,
        /// With --failed: only this subscription's.
        #[arg(long)]
        subscription: Option<String>,
        #[command(flatten)]
        talk: Talk,
    },
    /// Send a subscription's delivered events again.
    Replay {
        /// The subscription to send them to.
        #[arg(long)]
        subscription: String,
        /// A time (2026-05-10T18:00:00Z) or an age (2h).
        #[arg(long)]
        since: String,
        /// A time or an age, as --since (default: now).
        #[arg(long)]
        until: Option<String>,
        #[command(flatten)]
        talk: Talk,
    },
    /// Stop delivering to a subscription (kept across restarts).
    Pause {
        /// A subscription's name, as in the config.
        subscription: String,
        #[command(flatten)]
        talk: Talk,
    },
    /// Deliver to a paused or gone subscription again.
    Resume {
        /// A subscription's name, as in the config.
        subscription: String,
        #[command(flatten)]
        talk: Talk,
    },
    /// Switch the bandwidth profile: `metered` applies `[link.metered]` and each
    /// subscription's `metered = { … }` (kept across restarts); `unmetered` ends it.
    Link {
        #[arg(value_parser = ["metered", "unmetered"])]
        profile: String,
        #[command(flatten)]
        talk: Talk,
    },
    /// Send a `fleethook.test` event to a subscription now and print the outcome; exits
    /// non-zero unless it was delivered.
    Test {
        /// A subscription's name, as in the config.
        subscription: String,
        #[command(flatten)]
        talk: Talk,
    },
    /// Queue an event from a script on the robot.
    Emit {
        /// The event type, e.g. `mission.completed`.
        #[arg(value_name = "TYPE")]
        event_type: String,
        /// A JSON object.
        #[arg(long)]
        data: Option<String>,
        #[command(flatten)]
        talk: Talk,
    },
    /// Messages ingest could not take in, with the reason; take them in after a route fix.
    Quarantine {
        #[command(subcommand)]
        action: Option<QuarantineAction>,
        /// At most this many rows, newest first.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[command(flatten)]
        talk: Talk,
    },
    /// A live view of the queue and endpoints.
    Top {
        /// Render one frame and exit.
        #[arg(long)]
        once: bool,
        /// How often to redraw.
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        interval: Duration,
        /// The agent's status socket (default: the config's status.socket).
        #[arg(long, env = "FLEETHOOK_SOCKET")]
        socket: Option<PathBuf>,
    },
    /// The whole pipeline on this machine, no setup: broker, simulated AGV, agent, receiver.
    Demo {
        /// Run this many seconds, then drain and exit (non-zero if anything was lost).
        #[arg(long)]
        seconds: Option<u64>,
        #[command(flatten)]
        logs: Logs,
    },
}

/// What `quarantine` does besides listing.
#[derive(Subcommand)]
pub(crate) enum QuarantineAction {
    /// One quarantined message with its reason and payload.
    Show {
        /// Its number, as `fleethook quarantine` lists it.
        #[arg(value_name = "N")]
        seq: i64,
        #[command(flatten)]
        talk: Talk,
    },
    /// Route messages again with the running config; those that now make an event are
    /// queued and leave the quarantine, the others stay with their new reason. Exits
    /// non-zero when a number names no message.
    Release(Chosen),
    /// Delete quarantined messages: they are gone for good. Exits non-zero when a number
    /// names no message (numbers are never reused).
    Purge(Chosen),
}

/// The quarantined messages a `release` or `purge` takes.
#[derive(Args)]
pub(crate) struct Chosen {
    /// Their numbers.
    #[arg(value_name = "N", required_unless_present = "all", conflicts_with = "all")]
    pub(crate) seqs: Vec<i64>,
    /// Every quarantined message.
    #[arg(long)]
    pub(crate) all: bool,
    #[command(flatten)]
    pub(crate) talk: Talk,
}
