//! The `fleethook` command: parses the CLI and hands each subcommand to the library.

mod cli;

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use fleethook::config::Config;
use fleethook::status::{Request, render};

use cli::args::{Chosen, Cli, Command, QuarantineAction};
use cli::ask::{ask, ask_then, emitted, held, socket_path, tested, top};
use cli::local::{check, demo, receive};

fn main() -> ExitCode {
    // glibc keeps an allocation arena per thread that touched malloc; on a small robot
    // that idle memory is better given back. Two arenas are plenty for this agent.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator tuning; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run { .. }) {
        // A command whose reader went away (`fleethook check | head -1`) ends quietly, as
        // `ls` or `git` do, instead of panicking on EPIPE. Not the agent: its sockets use
        // MSG_NOSIGNAL anyway, and nothing may stop it but a stop.
        // SAFETY: resets one signal's disposition before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
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
            // The dead zone is staged and narrated: the lane's WARN that the endpoint is
            // unreachable would only say it again. Any other WARN is worth seeing.
            fleethook::logging::init(logs.log_format, "warn,rumqttd=off,fleethook::delivery::lane=error");
            demo(*seconds)
        }
    }
}
