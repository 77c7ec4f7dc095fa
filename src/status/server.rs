//! The socket itself: binding, one task per client with a line limit and an idle timeout,
//! a cap on clients, and the SO_PEERCRED check for commands that change state.
//!
//! A local user must not be able to lock a field tech out (64 silent connections once
//! did): a quarter of the slots are kept for trusted peers (root, the agent's user and
//! group), any other uid holds at most `PER_UID` at once, and a client must send its
//! first request within `FIRST_REQUEST`.

use std::collections::HashMap;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::context::Context;
use super::{ErrorBody, MAX_LINE, Request, error_line, ok_line, parse_unique};

/// Clients served at once; more get a `busy` error.
const MAX_CLIENTS: usize = 64;
/// Of those, kept for trusted peers only.
const TRUSTED_ONLY: usize = 16;
/// Connections one untrusted uid may hold at once.
const PER_UID: usize = 4;
/// A client that has not sent its first request by then is disconnected.
const FIRST_REQUEST: Duration = Duration::from_secs(5);
/// A client that says nothing for this long is disconnected.
const IDLE: Duration = Duration::from_secs(30);

/// Who holds which slots.
struct Slots {
    shared: Arc<Semaphore>,
    trusted_only: Arc<Semaphore>,
    per_uid: Mutex<HashMap<u32, usize>>,
}

/// A client's hold on a slot, given back on drop.
struct Slot {
    _permit: OwnedSemaphorePermit,
    uid: Option<u32>,
    slots: Arc<Slots>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(uid) = self.uid
            && let Ok(mut held) = self.slots.per_uid.lock()
            && let Some(n) = held.get_mut(&uid)
        {
            *n -= 1;
            if *n == 0 {
                held.remove(&uid);
            }
        }
    }
}

impl Slots {
    fn new() -> Arc<Slots> {
        Arc::new(Slots {
            shared: Arc::new(Semaphore::new(MAX_CLIENTS - TRUSTED_ONLY)),
            trusted_only: Arc::new(Semaphore::new(TRUSTED_ONLY)),
            per_uid: Mutex::new(HashMap::new()),
        })
    }

    fn take(self: &Arc<Slots>, uid: u32, trusted: bool) -> Option<Slot> {
        if trusted {
            let permit =
                self.shared.clone().try_acquire_owned().or_else(|_| self.trusted_only.clone().try_acquire_owned());
            return permit.ok().map(|p| Slot { _permit: p, uid: None, slots: self.clone() });
        }
        let mut held = self.per_uid.lock().ok()?;
        let n = held.entry(uid).or_insert(0);
        if *n >= PER_UID {
            return None;
        }
        let permit = self.shared.clone().try_acquire_owned().ok()?;
        *n += 1;
        Some(Slot { _permit: permit, uid: Some(uid), slots: self.clone() })
    }
}

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
    let slots = Slots::new();
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
        let peer = stream.peer_cred().ok();
        let uid = peer.map(|c| c.uid()).unwrap_or(u32::MAX);
        let trusted = peer.map(|c| trusted_peer(c.uid(), c.gid(), c.pid())).unwrap_or(false);
        let Some(slot) = slots.take(uid, trusted) else {
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
            client(stream, trusted, &ctx, &stop).await;
            drop(slot);
        });
    }
    if let Some(p) = path {
        let _ = std::fs::remove_file(p);
    }
}

async fn say(write: &mut OwnedWriteHalf, code: &str, message: &str) {
    let _ = write.write_all(format!("{}\n", error_line(&ErrorBody::new(code, message))).as_bytes()).await;
}

async fn client(stream: UnixStream, trusted: bool, ctx: &Context, shutdown: &CancellationToken) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut wait = FIRST_REQUEST;
    loop {
        let mut buf = Vec::new();
        let mut limited = (&mut reader).take(MAX_LINE as u64 + 1);
        let line = tokio::time::timeout(wait, limited.read_until(b'\n', &mut buf));
        let read = tokio::select! {
            read = line => read,
            _ = shutdown.cancelled() => {
                say(&mut write, "shutting_down", "the agent is shutting down").await;
                return;
            }
        };
        wait = IDLE;
        let response = match read {
            Err(_) => {
                say(&mut write, "timeout", "no request in time").await;
                return;
            }
            Ok(Err(_)) | Ok(Ok(0)) => return,
            Ok(Ok(_)) if buf.len() > MAX_LINE => {
                say(&mut write, "too_long", &format!("a request line is at most {MAX_LINE} bytes")).await;
                return;
            }
            Ok(Ok(_)) => tokio::select! {
                response = respond(&buf, trusted, ctx) => response,
                _ = shutdown.cancelled() => {
                    say(&mut write, "shutting_down", "the agent is shutting down").await;
                    return;
                }
            },
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
    let value = match parse_unique(text) {
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

const KNOWN: [&str; 11] =
    ["status", "queue", "log", "show", "retry", "replay", "pause", "resume", "link", "test", "emit"];

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
