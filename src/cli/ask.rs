//! Commands that talk to the running agent over its status socket, and how their
//! answers are printed.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use fleethook::config::{self, Config};
use fleethook::status::{Request, client, render};

use super::args::{Cli, Talk};

/// The socket to talk to: --socket, else the config's, else the default.
pub(crate) fn socket_path(config: &std::path::Path, socket: Option<&PathBuf>) -> PathBuf {
    if let Some(s) = socket {
        return s.clone();
    }
    match Config::load(config) {
        Ok(c) => c.status.socket,
        Err(_) => PathBuf::from(config::DEFAULT_SOCKET),
    }
}

/// Sends one request and prints the result, as JSON or through `human`.
pub(crate) fn ask(
    cli: &Cli,
    talk: &Talk,
    request: Request,
    human: fn(&serde_json::Value) -> String,
) -> anyhow::Result<ExitCode> {
    ask_then(cli, talk, request, human, |_| true)
}

/// `ask`, exiting non-zero when the answer says the command did not do what it was
/// asked (`succeeded` is false): a script must notice a failed test delivery or a stale
/// quarantine number.
pub(crate) fn ask_then(
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

pub(crate) fn top(socket: PathBuf, once: bool, interval: Duration) -> anyhow::Result<ExitCode> {
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

/// `pause` and `resume`: what the subscription is now.
pub(crate) fn held(v: &serde_json::Value) -> String {
    format!("ok: {} is {}\n", v["subscription"].as_str().unwrap_or("?"), v["state"].as_str().unwrap_or("?"))
}

pub(crate) fn tested(v: &serde_json::Value) -> String {
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
    ) + &v["note"].as_str().map(|n| format!("note: {n}\n")).unwrap_or_default()
}

pub(crate) fn emitted(v: &serde_json::Value) -> String {
    format!(
        "queued event {} for {} subscription(s)\n",
        v["event_id"].as_str().unwrap_or("?"),
        v["delivery_ids"].as_array().map_or(0, |a| a.len())
    )
}
