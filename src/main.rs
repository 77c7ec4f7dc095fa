//! The `fleethook` command: parses the CLI and hands each subcommand to the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::builder::PossibleValuesParser;
use clap::{Args, Parser, Subcommand};
use fleethook::config::{self, Config};
use fleethook::status::{LOG_OUTCOMES, QUEUE_STATES, Request, client, render};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "fleethook", version, about = "Robot events from MQTT to signed webhooks, durably.")]
struct Cli {
    /// The config file.
    #[arg(long, global = true, env = "FLEETHOOK_CONFIG", default_value = config::DEFAULT_PATH)]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

/// How a command that asks the running agent reaches it and prints its answer.
#[derive(Args, Clone)]
struct Talk {
    /// The agent's status socket (default: the config's status.socket).
    #[arg(long, env = "FLEETHOOK_SOCKET")]
    socket: Option<PathBuf>,
    /// Print the socket's JSON result instead of a table.
    #[arg(long)]
    json: bool,
}

/// Where a long-running command logs.
#[derive(Args, Clone, Copy)]
struct Logs {
    /// Where logs go: journald under systemd, else human-readable stderr (auto), or json.
    #[arg(long, value_enum, env = "FLEETHOOK_LOG_FORMAT", default_value = "auto")]
    log_format: fleethook::logging::LogFormat,
}

#[derive(Subcommand)]
enum Command {
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
enum QuarantineAction {
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
struct Chosen {
    /// Their numbers.
    #[arg(value_name = "N", required_unless_present = "all", conflicts_with = "all")]
    seqs: Vec<i64>,
    /// Every quarantined message.
    #[arg(long)]
    all: bool,
    #[command(flatten)]
    talk: Talk,
}

fn main() -> ExitCode {
    // glibc keeps an allocation arena per thread that touched malloc; on a small robot
    // that idle memory is better given back. Two arenas are plenty for this agent.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator tuning; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("fleethook: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The agent's runtime: one thread, which leaves the robot's other core to ROS
/// (docs/decisions.md: "A single-threaded runtime").
fn agent_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the async runtime")
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")
}

/// The socket to talk to: --socket, else the config's, else the default.
fn socket_path(config: &std::path::Path, socket: Option<&PathBuf>) -> PathBuf {
    if let Some(s) = socket {
        return s.clone();
    }
    match Config::load(config) {
        Ok(c) => c.status.socket,
        Err(_) => PathBuf::from(config::DEFAULT_SOCKET),
    }
}

/// Sends one request and prints the result, as JSON or through `human`.
fn ask(cli: &Cli, talk: &Talk, request: Request, human: fn(&serde_json::Value) -> String) -> anyhow::Result<ExitCode> {
    ask_then(cli, talk, request, human, |_| true)
}

/// `ask`, exiting non-zero when the answer says the command did not do what it was
/// asked (`succeeded` is false): a script must notice a failed test delivery or a stale
/// quarantine number.
fn ask_then(
    cli: &Cli,
    talk: &Talk,
    request: Request,
    human: fn(&serde_json::Value) -> String,
    succeeded: fn(&serde_json::Value) -> bool,
) -> anyhow::Result<ExitCode> {
    match client::call(&socket_path(&cli.config, talk.socket.as_ref()), &request) {
        Ok(v) => {
            if talk.json {
                println!("{v}");
            } else {
                print!("{}", human(&v));
            }
            Ok(if succeeded(&v) { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Err(e) => {
            eprintln!("fleethook: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn top(socket: PathBuf, once: bool, interval: Duration) -> anyhow::Result<ExitCode> {
    let mut previous: Option<(serde_json::Value, std::time::Instant)> = None;
    loop {
        let v = client::call(&socket, &Request::Status)?;
        let now = std::time::Instant::now();
        let frame = render::top(
            &v,
            previous.as_ref().map(|p| &p.0),
            previous.as_ref().map_or(1.0, |p| (now - p.1).as_secs_f64()),
        );
        if once {
            print!("{frame}");
            return Ok(ExitCode::SUCCESS);
        }
        // Clear the screen and home the cursor, then draw the frame; piped, frames follow
        // each other with a blank line, with no terminal codes in the way.
        use std::io::{IsTerminal, Write};
        if std::io::stdout().is_terminal() {
            print!("\x1b[2J\x1b[H{frame}");
        } else {
            println!("{frame}");
        }
        let _ = std::io::stdout().flush();
        previous = Some((v, now));
        std::thread::sleep(interval);
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Status { talk } => ask(&cli, talk, Request::Status, render::status),
        Command::Metrics { talk } => ask(&cli, talk, Request::Metrics, |v| v.as_str().unwrap_or_default().to_string()),
        Command::Queue { subscription, state, limit, talk } => {
            let r = Request::Queue { subscription: subscription.clone(), state: state.clone(), limit: Some(*limit) };
            ask(&cli, talk, r, render::queue)
        }
        Command::Log { subscription, outcome, limit, talk } => {
            let r = Request::Log { subscription: subscription.clone(), outcome: outcome.clone(), limit: Some(*limit) };
            ask(&cli, talk, r, render::log)
        }
        Command::Show { id, talk } => ask(&cli, talk, Request::Show { id: id.clone() }, render::show),
        Command::Retry { ids, failed, subscription, talk } => {
            if ids.is_empty() && !failed {
                anyhow::bail!("name delivery or event ids, or use --failed");
            }
            let r = Request::Retry { ids: ids.clone(), failed: *failed, subscription: subscription.clone() };
            ask(&cli, talk, r, |v| format!("{} deliveries put back in the queue\n", v["retried"]))
        }
        Command::Replay { subscription, since, until, talk } => {
            let r = Request::Replay { subscription: subscription.clone(), since: since.clone(), until: until.clone() };
            ask(&cli, talk, r, |v| format!("{} deliveries queued again\n", v["replayed"]))
        }
        Command::Pause { subscription, talk } => {
            ask(&cli, talk, Request::Pause { subscription: subscription.clone() }, held)
        }
        Command::Resume { subscription, talk } => {
            ask(&cli, talk, Request::Resume { subscription: subscription.clone() }, held)
        }
        Command::Link { profile, talk } => ask(&cli, talk, Request::Link { profile: profile.clone() }, |v| {
            let state = if v["changed"] == true { "now" } else { "already" };
            format!("ok: the link is {state} {}\n", v["profile"].as_str().unwrap_or("?"))
        }),
        Command::Test { subscription, talk } => {
            ask_then(&cli, talk, Request::Test { subscription: subscription.clone() }, tested, |v| {
                v["outcome"] == "delivered"
            })
        }
        Command::Emit { event_type, data, talk } => {
            let data = data.as_deref().map(serde_json::from_str).transpose().context("--data is not JSON")?;
            ask(&cli, talk, Request::Emit { event_type: event_type.clone(), data }, emitted)
        }
        Command::Quarantine { action, limit, talk } => match action {
            None => ask(&cli, talk, Request::Quarantine { limit: Some(*limit) }, render::quarantine),
            Some(QuarantineAction::Show { seq, talk }) => {
                ask(&cli, talk, Request::QuarantineShow { seq: *seq }, render::quarantined)
            }
            Some(QuarantineAction::Release(Chosen { seqs, all, talk })) => {
                let r = Request::QuarantineRelease { seqs: seqs.clone(), all: *all };
                ask_then(&cli, talk, r, render::released, |v| {
                    v["results"].as_array().is_some_and(|all| all.iter().all(|r| r["missing"] != true))
                })
            }
            Some(QuarantineAction::Purge(Chosen { seqs, all, talk })) => {
                let r = Request::QuarantinePurge { seqs: seqs.clone(), all: *all };
                ask_then(&cli, talk, r, render::purged, |v| v["missing"].as_array().is_none_or(|m| m.is_empty()))
            }
        },
        Command::Top { once, interval, socket } => top(socket_path(&cli.config, socket.as_ref()), *once, *interval),
        Command::Secret => {
            println!("{}", fleethook::sign::new_secret());
            Ok(ExitCode::SUCCESS)
        }
        Command::Check => check(&cli.config),
        Command::Run { logs } => {
            fleethook::logging::init(logs.log_format, "info");
            let config = Config::load(&cli.config)?;
            agent_runtime()?.block_on(fleethook::app::run(config, cli.config.clone()))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Receive { port, bind, secrets, body, logs } => {
            fleethook::logging::init(logs.log_format, "info");
            receive(bind, *port, secrets.clone(), *body)
        }
        Command::Demo { seconds, logs } => {
            fleethook::logging::init(logs.log_format, "warn,rumqttd=off");
            demo(*seconds)
        }
    }
}

/// `pause` and `resume`: what the subscription is now.
fn held(v: &serde_json::Value) -> String {
    format!("ok: {} is {}\n", v["subscription"].as_str().unwrap_or("?"), v["state"].as_str().unwrap_or("?"))
}

fn tested(v: &serde_json::Value) -> String {
    let answer = match v["status"].as_u64() {
        Some(status) => format!("HTTP {status}"),
        None => "no answer".to_string(),
    };
    format!(
        "{} → {} ({answer}, {} ms){}\n{}",
        v["subscription"].as_str().unwrap_or("?"),
        v["outcome"].as_str().unwrap_or("?"),
        v["duration_ms"],
        v["error"].as_str().map(|e| format!(": {e}")).unwrap_or_default(),
        v["clock_skew"].as_str().map(|s| format!("note: {s} (by its Date header)\n")).unwrap_or_default()
    )
}

fn emitted(v: &serde_json::Value) -> String {
    format!(
        "queued event {} for {} subscription(s)\n",
        v["event_id"].as_str().unwrap_or("?"),
        v["delivery_ids"].as_array().map_or(0, |a| a.len())
    )
}

fn check(path: &std::path::Path) -> anyhow::Result<ExitCode> {
    match Config::load_for_check(path) {
        Ok(c) => {
            print!("{}", c.to_redacted_toml());
            for w in &c.warnings {
                eprintln!("warning: {w}");
            }
            eprintln!("{}: OK", path.display());
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{e:#}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// A token cancelled by Ctrl-C.
fn cancelled_by_ctrl_c() -> CancellationToken {
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        s.cancel();
    });
    stop
}

fn receive(bind: &str, port: u16, secrets: Vec<String>, body: bool) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let listener = tokio::net::TcpListener::bind((bind, port))
            .await
            .with_context(|| format!("cannot listen on {bind}:{port}"))?;
        let verifying = if secrets.is_empty() {
            "no secret given: signatures are not checked".to_string()
        } else {
            format!("verifying with {} secret(s)", secrets.len())
        };
        eprintln!("fleethook receive: listening on http://{}/ ({verifying})", listener.local_addr()?);
        let opts = fleethook::receive::ReceiveOptions {
            secrets,
            tolerance: fleethook::sign::DEFAULT_TOLERANCE,
            print: true,
            print_body: body,
        };
        fleethook::receive::serve(listener, opts, None, cancelled_by_ctrl_c()).await;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

fn demo(seconds: Option<u64>) -> anyhow::Result<ExitCode> {
    let rt = runtime()?;
    let summary = rt.block_on(async {
        fleethook::demo::run(fleethook::demo::DemoOptions { seconds }, cancelled_by_ctrl_c()).await
    })?;
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(if summary.ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
