//! The `fleethook` command: parses the CLI and hands each subcommand to the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use fleethook::config::{self, Config};
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

#[derive(Subcommand)]
enum Command {
    /// Run the agent (what the systemd unit starts).
    Run,
    /// Validate the config and print it resolved, secrets redacted; exit 1 on errors.
    Check,
    /// Print a new `whsec_` signing secret.
    Secret,
    /// A local endpoint that verifies signatures and prints each event (for bring-up).
    Receive {
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        bind: String,
        /// A secret to verify with; repeat for rotation. Without one, nothing is verified.
        #[arg(long = "secret")]
        secrets: Vec<String>,
        /// Print each request's body too.
        #[arg(long)]
        body: bool,
    },
    /// The whole pipeline on this machine, no setup: broker, simulated AGV, agent, receiver.
    Demo {
        /// Run this many seconds, then drain and exit (non-zero if anything was lost).
        #[arg(long)]
        seconds: Option<u64>,
    },
}

fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("fleethook: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Secret => {
            println!("{}", fleethook::sign::new_secret());
            Ok(ExitCode::SUCCESS)
        }
        Command::Check => match Config::load(&cli.config) {
            Ok(c) => {
                print!("{}", c.to_redacted_toml());
                eprintln!("{}: OK", cli.config.display());
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("{e:#}");
                Ok(ExitCode::FAILURE)
            }
        },
        Command::Run => {
            init_logging("info");
            let config = Config::load(&cli.config)?;
            runtime()?.block_on(fleethook::app::run(config))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Receive { port, bind, secrets, body } => {
            init_logging("info");
            let rt = runtime()?;
            rt.block_on(async {
                let listener = tokio::net::TcpListener::bind((bind.as_str(), port))
                    .await
                    .with_context(|| format!("cannot listen on {bind}:{port}"))?;
                eprintln!(
                    "fleethook receive: listening on http://{}/ ({})",
                    listener.local_addr()?,
                    if secrets.is_empty() {
                        "no secret given: signatures are not checked".to_string()
                    } else {
                        format!("verifying with {} secret(s)", secrets.len())
                    }
                );
                let opts = fleethook::receive::ReceiveOptions {
                    secrets,
                    tolerance: fleethook::sign::DEFAULT_TOLERANCE,
                    print: true,
                    print_body: body,
                };
                let stop = CancellationToken::new();
                let s = stop.clone();
                tokio::spawn(async move {
                    let _ = tokio::signal::ctrl_c().await;
                    s.cancel();
                });
                fleethook::receive::serve(listener, opts, None, stop).await;
                anyhow::Ok(())
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { seconds } => {
            init_logging("warn,rumqttd=off");
            let rt = runtime()?;
            let summary = rt.block_on(async {
                let stop = CancellationToken::new();
                let s = stop.clone();
                tokio::spawn(async move {
                    let _ = tokio::signal::ctrl_c().await;
                    s.cancel();
                });
                fleethook::demo::run(fleethook::demo::DemoOptions { seconds }, stop).await
            })?;
            rt.shutdown_timeout(Duration::from_secs(1));
            Ok(if summary.ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
    }
}
