//! Commands that run on their own, without an agent: `check`, `receive`, `demo`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use fleethook::config::Config;
use tokio_util::sync::CancellationToken;

use super::runtime;

pub(crate) fn check(path: &std::path::Path) -> anyhow::Result<ExitCode> {
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
pub(crate) fn cancelled_by_ctrl_c() -> CancellationToken {
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        s.cancel();
    });
    stop
}

pub(crate) fn receive(bind: &str, port: u16, secrets: Vec<String>, body: bool) -> anyhow::Result<ExitCode> {
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

pub(crate) fn demo(seconds: Option<u64>) -> anyhow::Result<ExitCode> {
    let rt = runtime()?;
    let summary = rt.block_on(async {
        fleethook::demo::run(fleethook::demo::DemoOptions { seconds }, cancelled_by_ctrl_c()).await
    })?;
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(if summary.ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
