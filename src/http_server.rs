//! A plain HTTP/1 server loop, shared by the metrics endpoint and `fleethook receive`:
//! accept, one task per connection, and at shutdown every connection dropped (for the
//! receiver that is a real outage: the endpoint is gone). Each caller brings its handler.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Serves `listener` with `handler` until `shutdown`.
pub async fn serve<H, F>(listener: TcpListener, handler: H, shutdown: CancellationToken)
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + 'static,
    F: Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send + 'static,
{
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "An HTTP listener could not accept a connection.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let handler = handler.clone();
        let stop = shutdown.clone();
        conns.spawn(async move {
            let conn =
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service_fn(handler));
            tokio::select! {
                _ = conn => {}
                _ = stop.cancelled() => {}
            }
        });
        // Finished connections leave the set as new ones come.
        while conns.try_join_next().is_some() {}
    }
    conns.abort_all();
}
