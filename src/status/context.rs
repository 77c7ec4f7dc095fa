//! What every status handler works with: the running agent's parts, and reads of the
//! outbox on a blocking thread. Its own file so that the handlers, `/metrics` and the
//! quarantine commands all build on it without importing each other.

use std::path::PathBuf;
use std::time::Instant;

use super::ErrorBody;
use crate::live::{Live, MqttView, SharedLive};
use crate::outbox::Outbox;
use crate::outbox::query::Reader;

/// Everything the handlers need of the running agent.
pub struct Context {
    pub outbox: Outbox,
    pub mqtt: MqttView,
    pub live: SharedLive,
    pub started: Instant,
    /// What ingest learnt of ROS types, for `quarantine release`.
    pub ros_types: crate::ingest::ros::RosTypes,
    /// Attempt durations, results and bytes, for `/metrics`.
    pub metrics: crate::live::AttemptMetrics,
    /// The link profile (`link metered`) and bytes sent per subscription.
    pub link: crate::link::Link,
}

pub(super) fn internal(e: impl std::fmt::Display) -> ErrorBody {
    ErrorBody::new("internal", e.to_string())
}

impl Context {
    /// The configuration-dependent parts as of now.
    pub(super) fn live(&self) -> Result<Live, ErrorBody> {
        self.live.read().map(|l| l.clone()).map_err(|_| internal("state lock poisoned"))
    }

    fn db_path(&self) -> PathBuf {
        self.live().map(|l| l.config.storage.path.clone()).unwrap_or_default()
    }

    /// Says why each pending delivery waits, by the dispatcher's view of its endpoint.
    pub(super) fn explain_waits(&self, rows: &mut [crate::outbox::query::QueueRow]) {
        let views = self.live.read().ok().and_then(|l| l.endpoints.lock().ok().map(|v| v.clone())).unwrap_or_default();
        super::waits::explain(rows, &views, crate::clock::sched_ms(), crate::clock::to_wall_ms);
    }

    pub(super) async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Reader) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, ErrorBody> {
        let path = self.db_path();
        tokio::task::spawn_blocking(move || {
            let result = Reader::open(&path).and_then(|r| f(&r));
            // A big listing can leave megabytes free but held by the allocator.
            crate::memory::release_free_heap();
            result
        })
        .await
        .map_err(internal)?
        .map_err(internal)
    }
}
