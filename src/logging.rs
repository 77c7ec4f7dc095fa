//! Where logs go: journald when running under systemd, human-readable stderr otherwise,
//! JSON lines for people who ship logs elsewhere. `RUST_LOG` sets levels, as targets
//! and levels (`info`, `fleethook=debug,hyper=warn`); span and field filters are not
//! taken: matching them needs a regex engine, a quarter of a megabyte of binary on every
//! robot for a feature nobody filters its logs by.

use tracing_subscriber::filter::Targets;
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
    let filter = || levels(std::env::var("RUST_LOG").ok().as_deref(), default);
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
    let stderr = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(colour);
    if format == LogFormat::Json {
        tracing_subscriber::registry().with(stderr.json().flatten_event(true)).with(filter()).init();
    } else {
        tracing_subscriber::registry().with(stderr).with(filter()).init();
    }
}

/// The levels `rust_log` asks for, else `default`'s; one that cannot be read is said on
/// stderr (logging is not up yet) and `default` applies.
fn levels(rust_log: Option<&str>, default: &str) -> Targets {
    let fallback = || default.parse().unwrap_or_else(|_| Targets::new().with_default(tracing::Level::INFO));
    match rust_log.map(str::trim).filter(|s| !s.is_empty()) {
        None => fallback(),
        Some(asked) => asked.parse().unwrap_or_else(|e| {
            eprintln!("fleethook: RUST_LOG={asked:?} is not `target=level,…` ({e}); using {default:?}");
            fallback()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;

    #[test]
    fn rust_log_sets_levels_per_target_and_a_bad_one_falls_back() {
        let t = levels(Some("fleethook=debug,hyper=warn"), "info");
        assert!(t.would_enable("fleethook::delivery", &Level::DEBUG));
        assert!(!t.would_enable("hyper::proto", &Level::INFO));
        let t = levels(Some("warn"), "info");
        assert!(!t.would_enable("fleethook", &Level::INFO) && t.would_enable("fleethook", &Level::WARN));
        let t = levels(Some("fleethook=[span]{x=1}"), "fleethook=info");
        assert!(t.would_enable("fleethook", &Level::INFO) && !t.would_enable("fleethook", &Level::DEBUG));
        let t = levels(None, "fleethook=info");
        assert!(!t.would_enable("hyper", &Level::INFO), "the default names only the agent");
    }
}
