//! A plain HTTP/1 server loop, shared by the metrics endpoint and `fleethook receive`:
//! accept, one task per connection, and at shutdown every connection dropped (for the
//! receiver that is a real outage: the endpoint is gone). Each caller brings its handler.
//!
//! Any local process can connect to a loopback TCP port (there is no uid check), so the
//! listener defends itself: a request's headers must arrive within [`HEADER_TIMEOUT`], a
//! connection with no request under way is closed after [`IDLE_TIMEOUT`], a request is
//! answered within [`REQUEST_TIMEOUT`] or dropped, and at most [`MAX_CONNECTIONS`] are
//! open: a new one closes the oldest idle one, or is refused if none is idle. Half-open
//! connections can therefore never take the file descriptors that delivery and the
//! status socket need (see docs/decisions.md, "The HTTP listener defends itself").

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A request's headers must be in within this.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection with no request under way is closed after this.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// A request (its body read and its answer made) takes at most this.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Most connections open at once.
pub const MAX_CONNECTIONS: usize = 128;

/// One open connection, as the accept loop sees it.
struct Open {
    /// Requests under way on it (0: idle).
    busy: Arc<AtomicUsize>,
    /// When it last went idle (or opened).
    idle_since: Arc<std::sync::Mutex<Instant>>,
    close: CancellationToken,
}

/// Serves `listener` with `handler` until `shutdown`.
pub async fn serve<H, F>(listener: TcpListener, handler: H, shutdown: CancellationToken)
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send + 'static,
{
    let mut conns = tokio::task::JoinSet::new();
    let mut open: VecDeque<Open> = VecDeque::new();
    let mut refused_said = false;
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE among others: wait rather than spin.
                    tracing::warn!(error = %e, "An HTTP listener could not accept a connection.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Finished connections leave the set as new ones come.
        while conns.try_join_next().is_some() {}
        open.retain(|o| !o.close.is_cancelled());
        if open.len() >= MAX_CONNECTIONS && !close_oldest_idle(&mut open) {
            if !refused_said {
                tracing::warn!(
                    max = MAX_CONNECTIONS,
                    "An HTTP listener is full of busy connections; refusing new ones."
                );
                refused_said = true;
            }
            drop(stream);
            continue;
        }
        refused_said = false;
        let entry = Open {
            busy: Arc::default(),
            idle_since: Arc::new(std::sync::Mutex::new(Instant::now())),
            close: shutdown.child_token(),
        };
        let (busy, idle_since, close) = (entry.busy.clone(), entry.idle_since.clone(), entry.close.clone());
        open.push_back(entry);
        let handler = handler.clone();
        conns.spawn(async move {
            let service = {
                let (busy, idle_since) = (busy.clone(), idle_since.clone());
                service_fn(move |req| {
                    let (busy, idle_since, handler) = (busy.clone(), idle_since.clone(), handler.clone());
                    busy.fetch_add(1, Ordering::SeqCst);
                    async move {
                        let answer = tokio::time::timeout(REQUEST_TIMEOUT, handler(req)).await;
                        if let Ok(mut t) = idle_since.lock() {
                            *t = Instant::now();
                        }
                        busy.fetch_sub(1, Ordering::SeqCst);
                        answer.unwrap_or_else(|_| {
                            let mut r = Response::new(Full::new(Bytes::from_static(b"request timed out\n")));
                            *r.status_mut() = StatusCode::REQUEST_TIMEOUT;
                            Ok(r)
                        })
                    }
                })
            };
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                _ = close.cancelled() => {}
                _ = idle_too_long(&busy, &idle_since) => {}
            }
            close.cancel();
        });
    }
    conns.abort_all();
}

/// Closes the connection that has been idle longest; false when every one is busy.
fn close_oldest_idle(open: &mut VecDeque<Open>) -> bool {
    let oldest = open
        .iter()
        .enumerate()
        .filter(|(_, o)| o.busy.load(Ordering::SeqCst) == 0)
        .min_by_key(|(_, o)| o.idle_since.lock().map(|t| *t).unwrap_or_else(|_| Instant::now()))
        .map(|(i, _)| i);
    match oldest.and_then(|i| open.remove(i)) {
        Some(o) => {
            o.close.cancel();
            true
        }
        None => false,
    }
}

/// Resolves once the connection has had no request under way for [`IDLE_TIMEOUT`].
async fn idle_too_long(busy: &AtomicUsize, idle_since: &std::sync::Mutex<Instant>) {
    loop {
        let since = idle_since.lock().map(|t| *t).unwrap_or_else(|_| Instant::now());
        let deadline = since + IDLE_TIMEOUT;
        if busy.load(Ordering::SeqCst) == 0 && Instant::now() >= deadline {
            return;
        }
        let wake = if busy.load(Ordering::SeqCst) == 0 { deadline } else { Instant::now() + IDLE_TIMEOUT };
        tokio::time::sleep_until(wake).await;
    }
}
