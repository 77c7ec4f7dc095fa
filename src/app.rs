//! Wires the agent together: the outbox writer, ingest and the dispatcher, one shutdown
//! token, and the order things stop in. Knows no MQTT, SQL or HTTP details.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::delivery::{DeliveryError, Dispatcher, EndpointViews};
use crate::ingest::Router;
use crate::ingest::mqtt::{self, MqttStatus, MqttView};
use crate::outbox::{Outbox, OutboxError, WriterThread};
use crate::status::{self, Context};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error(transparent)]
    Delivery(#[from] DeliveryError),
}

/// A running agent. Cancel the token it was started with, then [`Agent::wait`].
pub struct Agent {
    pub mqtt: MqttView,
    pub endpoints: EndpointViews,
    pub outbox: Outbox,
    ingest: JoinHandle<()>,
    dispatcher: JoinHandle<()>,
    status: Option<JoinHandle<()>>,
    writer: WriterThread,
    shutdown: CancellationToken,
}

impl Agent {
    pub fn start(config: &Config, shutdown: CancellationToken) -> Result<Agent, AppError> {
        let (outbox, writer) = WriterThread::start(&config.storage)?;
        let dispatcher = Dispatcher::new(config, outbox.clone())?;
        let endpoints = dispatcher.views();
        let control = dispatcher.handle();
        let mqtt: MqttView = Arc::new(Mutex::new(MqttStatus::default()));
        let ingest = tokio::spawn(mqtt::run(
            config.mqtt.clone(),
            Router::new(config),
            outbox.clone(),
            mqtt.clone(),
            shutdown.clone(),
        ));
        let dispatcher = tokio::spawn(dispatcher.run(shutdown.clone()));
        let socket = &config.status.socket;
        let status = match status::bind(socket, config.status.socket_mode) {
            Ok(listener) => {
                let ctx = Context {
                    config: Arc::new(config.clone()),
                    outbox: outbox.clone(),
                    router: Router::new(config),
                    mqtt: mqtt.clone(),
                    endpoints: endpoints.clone(),
                    dispatcher: control,
                    started: Instant::now(),
                };
                Some(tokio::spawn(status::serve(listener, Arc::new(ctx), shutdown.clone())))
            }
            Err(e) => {
                tracing::error!(socket = %socket.display(), error = %e,
                    "Cannot open the status socket; the agent runs, but `fleethook status` cannot reach it.");
                None
            }
        };
        tracing::info!(device_id = %config.device_id, outbox = %config.storage.path.display(),
            subscriptions = config.subscriptions.len(), routes = config.routes.len(), "fleethook is running.");
        Ok(Agent { mqtt, endpoints, outbox, ingest, dispatcher, status, writer, shutdown })
    }

    /// Waits for shutdown, then stops ingest (acking what committed), lets in-flight
    /// deliveries finish within the grace period, and commits the last batch.
    pub async fn wait(self) {
        self.shutdown.cancelled().await;
        let _ = self.ingest.await;
        let _ = self.dispatcher.await;
        if let Some(status) = self.status {
            let _ = status.await;
        }
        drop(self.outbox);
        let writer = self.writer;
        let _ = tokio::task::spawn_blocking(move || writer.join()).await;
        tracing::info!("fleethook stopped.");
    }
}

/// Runs the agent until SIGTERM or SIGINT.
pub async fn run(config: Config) -> Result<(), AppError> {
    let shutdown = CancellationToken::new();
    let agent = Agent::start(&config, shutdown.clone())?;
    tokio::spawn(signals(shutdown.clone()));
    // Outside systemd there is no NOTIFY_SOCKET and these do nothing.
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    if let Some(interval) = sd_notify::watchdog_enabled() {
        tokio::spawn(watchdog(interval / 2, shutdown.clone()));
    }
    let stopping = shutdown.clone();
    tokio::spawn(async move {
        stopping.cancelled().await;
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    });
    agent.wait().await;
    Ok(())
}

/// Pings systemd's watchdog while the runtime is alive.
async fn watchdog(every: std::time::Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => { let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]); }
        }
    }
}

async fn signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::warn!("Cannot install signal handlers.");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down."),
        _ = int.recv() => tracing::info!("SIGINT: shutting down."),
    }
    shutdown.cancel();
}
