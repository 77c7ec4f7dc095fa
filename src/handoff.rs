//! The hand-off between ingest and the fast path: a contract both sides keep, so it sits
//! below both, and ingest never names delivery (nor delivery ingest).

use tokio::sync::oneshot;

use crate::outbox::Inbound;

/// When ingest may ack a message it handed to the dispatcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// Delivered from memory, or stored by its own commit: ack now.
    Now,
    /// Handed to the outbox as ingest `seq`: ack once the commit watermark passes it.
    AfterCommit,
}

/// One MQTT message from ingest, in receive order.
pub struct Intake {
    pub seq: u64,
    pub inbound: Inbound,
    /// Dropped unanswered: the message is not acked, and the broker sends it again.
    pub resolved: oneshot::Sender<Resolution>,
}
