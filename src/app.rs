//! Wires the agent together: the outbox writer, ingest, the dispatcher, the heartbeat and
//! the status socket; one shutdown token; the order things stop in; SIGHUP reloads.
//! Knows no MQTT, SQL or HTTP details.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::delivery::{DeliveryError, Dispatcher};
use crate::health::Liveness;
use crate::heartbeat::{self, Heartbeat};
use crate::ingest::Router;
use crate::ingest::mqtt;
use crate::ingest::ros::RosTypes;
use crate::live::AttemptMetrics;
use crate::live::{Live, MqttView, new_mqtt_view};
use crate::outbox::{Outbox, OutboxError, WriterThread};
use crate::status::{self, Context};

/// How long shutdown waits for the outbox writer's last commit.
const WRITER_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error(transparent)]
    Delivery(#[from] DeliveryError),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// The tasks that a reload replaces: they follow routes and subscriptions.
struct Generation {
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

/// A running agent. Cancel the token it was started with, then [`Agent::wait`].
pub struct Agent {
    pub mqtt: MqttView,
    pub outbox: Outbox,
    pub liveness: Arc<Liveness>,
    live: Arc<RwLock<Live>>,
    generation: Generation,
    status: Option<JoinHandle<()>>,
    metrics: Option<JoinHandle<()>>,
    writer: WriterThread,
    shutdown: CancellationToken,
    config: Config,
    /// The ROS message types ingest has learnt; kept across reloads.
    ros_types: RosTypes,
    attempt_metrics: AttemptMetrics,
    /// The link profile and bytes sent per subscription, kept across reloads.
    link: crate::link::Link,
}

impl Agent {
    pub fn start(config: &Config, shutdown: CancellationToken) -> Result<Agent, AppError> {
        let liveness = Liveness::new();
        let (outbox, writer) = WriterThread::start(&config.storage, liveness.writer())?;
        let mqtt = new_mqtt_view();
        let ros_types = RosTypes::new(config.ros.msg_path.clone());
        let attempt_metrics = AttemptMetrics::default();
        let link = crate::link::Link::open(config.storage.path.parent().unwrap_or(std::path::Path::new(".")));
        let parts = Parts {
            outbox: &outbox,
            mqtt: &mqtt,
            liveness: &liveness,
            ros_types: &ros_types,
            metrics: &attempt_metrics,
            link: &link,
        };
        let (generation, live) = start_generation(config, parts, &shutdown)?;
        let live = Arc::new(RwLock::new(live));
        let socket = &config.status.socket;
        let ctx = Arc::new(Context {
            outbox: outbox.clone(),
            mqtt: mqtt.clone(),
            live: live.clone(),
            started: Instant::now(),
            ros_types: ros_types.clone(),
            metrics: attempt_metrics.clone(),
            link: link.clone(),
        });
        let metrics = config.metrics.listen.and_then(|addr| serve_metrics(addr, ctx.clone(), &shutdown));
        let status = match status::bind(socket, config.status.socket_mode) {
            Ok(listener) => Some(tokio::spawn(status::serve(listener, ctx, shutdown.clone()))),
            Err(e) => {
                tracing::error!(socket = %socket.display(), error = %e,
                    "Cannot open the status socket; the agent runs, but `fleethook status` cannot reach it.");
                None
            }
        };
        let clock = crate::clock::quality();
        tracing::info!(device_id = %config.device_id, outbox = %config.storage.path.display(),
            subscriptions = config.subscriptions.len(), routes = config.routes.len(), clock = clock.as_str(),
            "fleethook is running.");
        for w in &config.warnings {
            tracing::warn!(warning = %w, "The config loads, but probably does not do what was meant (`fleethook check` says the same).");
        }
        Ok(Agent {
            mqtt,
            outbox,
            liveness,
            live,
            generation,
            status,
            metrics,
            writer,
            shutdown,
            config: config.clone(),
            ros_types,
            attempt_metrics,
            link,
        })
    }

    /// Applies new routes and subscriptions without losing queued work: the current
    /// ingest and dispatcher finish (acking what committed, letting in-flight requests
    /// end) and new ones start. Settings that need a restart are named in a warning.
    pub async fn reload(&mut self, new: Config) -> Result<(), AppError> {
        let old = &self.config;
        let mut needs_restart = Vec::new();
        if new.mqtt.url != old.mqtt.url || new.mqtt.client_id != old.mqtt.client_id || new.device_id != old.device_id {
            needs_restart.push("device_id / [mqtt]");
        }
        if new.storage.path != old.storage.path || new.storage.max_bytes != old.storage.max_bytes {
            needs_restart.push("[storage]");
        }
        if new.metrics.listen != old.metrics.listen {
            needs_restart.push("[metrics]");
        }
        if new.status.socket != old.status.socket {
            needs_restart.push("[status]");
        }
        if new.ros.msg_path != old.ros.msg_path {
            needs_restart.push("[ros] msg_path");
        }
        // Build the new dispatcher first: a bad CA file refuses the reload, the old stays.
        Dispatcher::new(&new, self.outbox.clone(), self.liveness.delivery())?;
        self.generation.stop.cancel();
        for t in self.generation.tasks.drain(..) {
            let _ = t.await;
        }
        if let Ok(mut m) = self.mqtt.lock() {
            m.subscribed = false;
        }
        let parts = Parts {
            outbox: &self.outbox,
            mqtt: &self.mqtt,
            liveness: &self.liveness,
            ros_types: &self.ros_types,
            metrics: &self.attempt_metrics,
            link: &self.link,
        };
        let (generation, live) = start_generation(&new, parts, &self.shutdown)?;
        self.generation = generation;
        if let Ok(mut l) = self.live.write() {
            *l = live;
        }
        if !needs_restart.is_empty() {
            tracing::warn!(sections = ?needs_restart, "Reloaded routes and subscriptions; these settings changed and apply after a restart.");
        }
        tracing::info!(subscriptions = new.subscriptions.len(), routes = new.routes.len(), "Configuration reloaded.");
        self.config = new;
        Ok(())
    }

    /// Waits for shutdown, then stops ingest (acking what committed), lets in-flight
    /// deliveries finish within the grace period, and commits the last batch.
    pub async fn wait(self) {
        self.shutdown.cancelled().await;
        self.generation.stop.cancel();
        for t in self.generation.tasks {
            let _ = t.await;
        }
        if let Some(metrics) = self.metrics {
            let _ = metrics.await;
        }
        if let Some(status) = self.status {
            let _ = status.await;
        }
        self.link.save();
        drop(self.outbox);
        drop(self.live);
        // The writer gives up a commit that keeps failing within seconds; the bound is
        // for whatever else could hold it, so SIGTERM always ends the agent. What did not
        // commit was not acked: the broker sends it again.
        let writer = self.writer;
        let joined = tokio::time::timeout(WRITER_GRACE, tokio::task::spawn_blocking(move || writer.join())).await;
        if joined.is_err() {
            tracing::error!(
                grace_s = WRITER_GRACE.as_secs(),
                "The outbox writer did not stop in time; exiting without it."
            );
        }
        tracing::info!("fleethook stopped.");
    }
}

/// What every generation shares with the agent.
struct Parts<'a> {
    outbox: &'a Outbox,
    mqtt: &'a MqttView,
    liveness: &'a Arc<Liveness>,
    ros_types: &'a RosTypes,
    metrics: &'a AttemptMetrics,
    link: &'a crate::link::Link,
}

/// Starts ingest, the dispatcher and the heartbeat for one configuration.
fn start_generation(
    config: &Config,
    Parts { outbox, mqtt, liveness, ros_types, metrics, link }: Parts<'_>,
    shutdown: &CancellationToken,
) -> Result<(Generation, Live), AppError> {
    let stop = shutdown.child_token();
    // What each subscription sent is saved only where a daily budget counts it.
    link.keep_sent(
        config
            .subscriptions
            .iter()
            .any(|s| s.daily_budget.or(s.metered.as_ref().and_then(|m| m.daily_budget)).is_some()),
    );
    let dispatcher = Dispatcher::new(config, outbox.clone(), liveness.delivery())?
        .with_metrics(metrics.clone())
        .with_link(config, link.clone());
    // The fast path: ingest hands its messages to the dispatcher, which delivers from
    // memory what it can within `storage.write_behind`.
    let (dispatcher, intake) = if config.storage.write_behind.is_zero() {
        (dispatcher, None)
    } else {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        (dispatcher.with_intake(rx), Some(tx))
    };
    let endpoints = dispatcher.views();
    let control = dispatcher.handle();
    let router = Router::new(config).with_ros_types(ros_types.clone());
    let mut tasks = vec![
        tokio::spawn(mqtt::run(
            config.mqtt.clone(),
            router,
            outbox.clone(),
            intake,
            crate::ingest::breaker::Breaker::open(&crate::ingest::breaker::Breaker::default_path(&config.storage.path)),
            mqtt.clone(),
            liveness.ingest(),
            stop.clone(),
        )),
        tokio::spawn(dispatcher.run(stop.clone())),
    ];
    let config = Arc::new(config.clone());
    if !config.heartbeat.interval.is_zero() {
        let hb = Heartbeat {
            config: config.clone(),
            outbox: outbox.clone(),
            mqtt: mqtt.clone(),
            endpoints: endpoints.clone(),
            link: link.clone(),
        };
        tasks.push(tokio::spawn(heartbeat::run(hb, stop.clone())));
    }
    let live = Live { config, endpoints, dispatcher: control };
    Ok((Generation { stop, tasks }, live))
}

/// Runs the agent until SIGTERM or SIGINT; SIGHUP reloads `config_path`.
pub async fn run(config: Config, config_path: std::path::PathBuf) -> Result<(), AppError> {
    use tokio::signal::unix::{SignalKind, signal};
    crate::outbox::disk::mark_agent_start();
    let shutdown = CancellationToken::new();
    // Handlers first, so a SIGTERM during start-up is a clean shutdown, not a kill.
    let mut term = signal(SignalKind::terminate()).map_err(AppError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(AppError::Signals)?;
    let mut hup = signal(SignalKind::hangup()).map_err(AppError::Signals)?;
    let mut agent = Agent::start(&config, shutdown.clone())?;
    // Outside systemd there is no NOTIFY_SOCKET and these do nothing.
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    if let Some(interval) = sd_notify::watchdog_enabled() {
        tokio::spawn(crate::health::watchdog(agent.liveness.clone(), interval / 2, shutdown.clone()));
    }
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down."); break; }
            _ = int.recv() => { tracing::info!("SIGINT: shutting down."); break; }
            _ = hup.recv() => {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Reloading]);
                match Config::load(&config_path) {
                    Ok(new) => {
                        if let Err(e) = agent.reload(new).await {
                            tracing::error!(error = %e, "SIGHUP: the new configuration could not start; the old one stays.");
                        }
                    }
                    Err(e) => tracing::error!(error = %format!("{e:#}"), "SIGHUP: the new configuration is invalid; the old one stays."),
                }
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
            }
        }
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    shutdown.cancel();
    agent.wait().await;
    Ok(())
}

/// Serves `/metrics` on `addr` (`[metrics] listen`), or says why it cannot.
fn serve_metrics(
    addr: std::net::SocketAddr,
    ctx: Arc<Context>,
    shutdown: &CancellationToken,
) -> Option<JoinHandle<()>> {
    let listener = std::net::TcpListener::bind(addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .and_then(tokio::net::TcpListener::from_std);
    match listener {
        Ok(listener) => {
            let bound = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
            tracing::info!(listen = %bound, "Serving metrics at /metrics.");
            Some(tokio::spawn(status::metrics::serve(listener, ctx, shutdown.clone())))
        }
        Err(e) => {
            tracing::error!(listen = %addr, error = %e,
                "Cannot serve metrics; the agent runs, but nothing can scrape it (`fleethook metrics` still works).");
            None
        }
    }
}
