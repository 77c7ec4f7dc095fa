//! The socket itself: binding, one task per client with a line limit and an idle timeout,
//! a cap on clients, and the SO_PEERCRED check for commands that change state.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::handlers::Context;
use super::{ErrorBody, MAX_LINE, Request, error_line, ok_line};

/// Clients served at once; more get a `busy` error.
const MAX_CLIENTS: usize = 64;
/// A client that says nothing for this long is disconnected.
const IDLE: Duration = Duration::from_secs(30);

/// Binds the socket: replaces a stale file (refusing if an agent still answers there)
/// and sets its mode.
pub fn bind(path: &Path, mode: u32) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(std::io::Error::other(format!("{} exists and is not a socket", path.display())));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::other(format!("another agent is answering on {}", path.display())));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(listener)
}

/// Serves until `shutdown`, then removes the socket file.
pub async fn serve(listener: UnixListener, ctx: Arc<Context>, shutdown: CancellationToken) {
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    let path = listener.local_addr().ok().and_then(|a| a.as_pathname().map(Path::to_path_buf));
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "Status socket accept failed.");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tokio::spawn(async move {
                let mut s = stream;
                let line = error_line(&ErrorBody::new("busy", "too many status clients; try again"));
                let _ = s.write_all(format!("{line}\n").as_bytes()).await;
            });
            continue;
        };
        let ctx = ctx.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = client(stream, &ctx) => {}
                _ = stop.cancelled() => {}
            }
            drop(permit);
        });
    }
    if let Some(p) = path {
        let _ = std::fs::remove_file(p);
    }
}

async fn client(stream: UnixStream, ctx: &Context) {
    let trusted = stream.peer_cred().map(|c| trusted_peer(c.uid(), c.gid(), c.pid())).unwrap_or(false);
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let mut buf = Vec::new();
        let read =
            tokio::time::timeout(IDLE, (&mut reader).take(MAX_LINE as u64 + 1).read_until(b'\n', &mut buf)).await;
        let response = match read {
            Err(_) => {
                let _ = write
                    .write_all(format!("{}\n", error_line(&ErrorBody::new("timeout", "idle for 30 s"))).as_bytes())
                    .await;
                return;
            }
            Ok(Err(_)) | Ok(Ok(0)) => return,
            Ok(Ok(_)) if buf.len() > MAX_LINE => {
                let e = ErrorBody::new("too_long", format!("a request line is at most {MAX_LINE} bytes"));
                let _ = write.write_all(format!("{}\n", error_line(&e)).as_bytes()).await;
                return;
            }
            Ok(Ok(_)) => respond(&buf, trusted, ctx).await,
        };
        if write.write_all(format!("{response}\n").as_bytes()).await.is_err() {
            return;
        }
    }
}

async fn respond(line: &[u8], trusted: bool, ctx: &Context) -> String {
    let text = String::from_utf8_lossy(line);
    let text = text.trim();
    if text.is_empty() {
        return error_line(&ErrorBody::new(
            "bad_request",
            "empty line; send one JSON object like {\"cmd\":\"status\"}",
        ));
    }
    let value: serde_json::Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return error_line(&ErrorBody::new("bad_request", format!("not JSON: {e}"))),
    };
    let request: Request = match serde_json::from_value(value.clone()) {
        Ok(r) => r,
        Err(e) => {
            let code = match value.get("cmd").and_then(|c| c.as_str()) {
                Some(cmd) if !KNOWN.contains(&cmd) => "unknown_command",
                _ => "bad_request",
            };
            return error_line(&ErrorBody::new(code, e.to_string()));
        }
    };
    if request.changes_state() && !trusted {
        return error_line(&ErrorBody::new(
            "forbidden",
            "this command changes state: run it as root, as the agent's user, or as a member of its group",
        ));
    }
    match ctx.handle(request).await {
        Ok(result) => ok_line(result),
        Err(e) => error_line(&e),
    }
}

const KNOWN: [&str; 10] = ["status", "queue", "log", "show", "retry", "replay", "pause", "resume", "test", "emit"];

/// Root, the agent's own user, or a member of the agent's group (primary or supplementary).
fn trusted_peer(uid: u32, gid: u32, pid: Option<i32>) -> bool {
    // SAFETY: these calls only read the process's own credentials.
    let (my_uid, my_gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    if uid == 0 || uid == my_uid || gid == my_gid {
        return true;
    }
    let Some(pid) = pid else { return false };
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Groups:"))
                .map(|g| g.split_whitespace().any(|x| x == my_gid.to_string()))
        })
        .unwrap_or(false)
}
