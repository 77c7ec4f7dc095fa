//! Where logs go: journald when running under systemd, human-readable stderr otherwise,
//! JSON lines for people who ship logs elsewhere. `RUST_LOG` sets levels.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// journald under systemd (JOURNAL_STREAM is set), else human.
    Auto,
    Human,
    Json,
    Journald,
}

/// Installs the global subscriber; `default` is the filter when `RUST_LOG` is unset.
pub fn init(format: LogFormat, default: &str) {
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let want_journald = match format {
        LogFormat::Journald => true,
        LogFormat::Auto => std::env::var_os("JOURNAL_STREAM").is_some(),
        _ => false,
    };
    if want_journald {
        match tracing_journald::layer() {
            Ok(layer) => {
                tracing_subscriber::registry()
                    .with(filter())
                    .with(layer.with_syslog_identifier("fleethook".into()))
                    .init();
                return;
            }
            Err(e) if format == LogFormat::Journald => {
                eprintln!("fleethook: journald is not reachable ({e}); logging to stderr");
            }
            Err(_) => {}
        }
    }
    // Colour only for a person at a terminal: never into a file, a pipe or journald.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter()).with_writer(std::io::stderr).with_ansi(colour);
    if format == LogFormat::Json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}
