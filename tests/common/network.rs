//! A far network between the agent and an endpoint: a TCP proxy on 127.0.0.1 that delays
//! each direction, caps the bandwidth, stalls all traffic for a while (a WiFi roam: nothing
//! lost, nothing flows), resets connections, or accepts and never answers.
//!
//! The kernel here has no netem, so the link lives in userspace. Each direction of each
//! connection is a reader that stamps every chunk with when it may arrive (now + delay)
//! and a writer that holds it until then, paces it to the bandwidth and waits out a stall.
//! The writer keeps the order of the chunks, as TCP does.
//!
//! Runs on a thread of its own with its own runtime, so sync tests and the async bench
//! both use it as they are.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

/// How the link behaves; change it at any time with [`Proxy::set`].
#[derive(Clone, Debug, Default)]
pub struct Link {
    /// Added to every chunk, in each direction (so a round trip costs twice this).
    pub delay: Duration,
    /// Bytes per second in each direction; `None`: unlimited.
    pub bytes_per_s: Option<u64>,
    /// New connections are accepted and then never answered (nothing is forwarded).
    pub blackhole: bool,
}

struct Shared {
    link: Mutex<Link>,
    /// Nothing flows before this instant (a stall); `None`: flowing.
    stalled_until: watch::Sender<Option<Instant>>,
    /// Incremented to reset every open connection.
    resets: watch::Sender<u64>,
    connections: Mutex<u64>,
}

pub struct Proxy {
    pub port: u16,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    /// A proxy to `127.0.0.1:target` on a port the kernel picks.
    pub fn start(target: u16, link: Link) -> Proxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            link: Mutex::new(link),
            stalled_until: watch::channel(None).0,
            resets: watch::channel(0).0,
            connections: Mutex::new(0),
        });
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let sh = shared.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
            rt.block_on(async move {
                let listener = TcpListener::from_std(listener).unwrap();
                let target: SocketAddr = ([127, 0, 0, 1], target).into();
                tokio::select! {
                    _ = stop_rx => {}
                    _ = accept_loop(listener, target, sh) => {}
                }
            });
            rt.shutdown_timeout(Duration::from_millis(100));
        });
        Proxy { port, shared, stop: Some(stop_tx), thread: Some(thread) }
    }

    /// A proxy that adds `delay` to each direction.
    pub fn delayed(target: u16, delay: Duration) -> Proxy {
        Proxy::start(target, Link { delay, ..Link::default() })
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    pub fn set(&self, link: Link) {
        *self.shared.link.lock().unwrap() = link;
    }

    /// Holds all traffic, both ways and on every connection, for `for_`; then lets what
    /// waited through, in order.
    pub fn stall(&self, for_: Duration) {
        self.shared.stalled_until.send_replace(Some(Instant::now() + for_));
    }

    /// Resets every open connection (RST to both sides).
    pub fn reset_all(&self) {
        self.shared.resets.send_modify(|n| *n += 1);
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        *self.shared.connections.lock().unwrap()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn accept_loop(listener: TcpListener, target: SocketAddr, shared: Arc<Shared>) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else { continue };
        *shared.connections.lock().unwrap() += 1;
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut resets = shared.resets.subscribe();
            resets.borrow_and_update();
            if shared.link.lock().unwrap().blackhole {
                // Accept, read nothing back, answer nothing: until a reset or the end.
                let _ = resets.changed().await;
                reset_on_drop(&inbound);
                return;
            }
            let Ok(outbound) = TcpStream::connect(target).await else {
                reset_on_drop(&inbound);
                return;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            reset_on_drop(&inbound);
            reset_on_drop(&outbound);
            let (in_r, in_w) = inbound.into_split();
            let (out_r, out_w) = outbound.into_split();
            tokio::select! {
                _ = async {
                    tokio::join!(pipe(in_r, out_w, shared.clone()), pipe(out_r, in_w, shared.clone()))
                } => {}
                // Dropping both halves of both sockets with linger 0 sends RSTs.
                _ = resets.changed() => {}
            }
        });
    }
}

/// Closing the socket sends RST, not FIN. A zero linger never blocks the thread on drop
/// (tokio's deprecation is about a non-zero one).
#[allow(deprecated)]
fn reset_on_drop(s: &TcpStream) {
    let _ = s.set_linger(Some(Duration::ZERO));
}

/// One direction: read chunks, stamp each with its arrival time, deliver in order.
async fn pipe(mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf, shared: Arc<Shared>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let sh = shared.clone();
    let reader = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let delay = sh.link.lock().unwrap().delay;
                    if tx.send((Instant::now() + delay, buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
    };
    let writer = async move {
        let mut stall = shared.stalled_until.subscribe();
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due.into()).await;
            loop {
                let until = *stall.borrow_and_update();
                match until {
                    Some(t) if t > Instant::now() => tokio::time::sleep_until(t.into()).await,
                    _ => break,
                }
            }
            let rate = shared.link.lock().unwrap().bytes_per_s;
            if let Some(rate) = rate.filter(|r| *r > 0) {
                // Paced in slices, so a large chunk trickles rather than arrives at once.
                for slice in chunk.chunks(1024) {
                    if to.write_all(slice).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_secs_f64(slice.len() as f64 / rate as f64)).await;
                }
            } else if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}
