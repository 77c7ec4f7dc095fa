//! The MQTT session, over MQTT 3.1.1 or 5 (`[mqtt] version`): one client and one event
//! loop whichever rumqttc client is underneath, and the few events ingest acts on.
//!
//! Why 5 exists here: with 3.1.1 a client cannot refuse a packet except by hanging up,
//! after which the broker sends the same packet again, for ever. So 3.1.1 reads every
//! packet the protocol allows (256 MiB) and quarantines an oversize payload after it is
//! in memory. MQTT 5 tells the broker our Maximum Packet Size in the CONNECT; the broker
//! then drops what is larger for us (mosquitto logs it) and it never reaches memory.

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5 as p5;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS, SubscribeFilter, Transport};

use crate::config::MqttConfig;

/// What ingest holds taken but not yet acked (committed, or delivered from memory), in
/// units of one message plus one per 4 KiB of its payload. At the bound the loop stops
/// taking from the event loop, which stops reading the socket: TCP holds the broker
/// back, and the acks of what has committed still go out. 4096 small messages, or 16 MiB
/// of payloads; an MQTT 5 session also asks the broker for at most this many in flight
/// (Receive Maximum). See docs/decisions.md, "Memory has a bound too".
pub const HELD_MAX: u32 = 4096;

/// 3.1.1: accept any message the protocol allows (256 MiB); a packet over the client's
/// limit would break the connection and come back forever. Oversize payloads are
/// quarantined.
const MAX_INCOMING_PACKET: usize = 268_435_455;
/// 5: room for the topic, properties and header beyond `max_payload`.
const PACKET_OVERHEAD: u64 = 64 * 1024 + 1024;
const MAX_OUTGOING_PACKET: usize = 1024 * 1024;
/// Requests (acks, mostly) queued for the event loop. Larger than what ingest holds
/// unacked ([`HELD_MAX`]), so queuing the acks of everything held never waits on a
/// driver that waits on ingest.
const REQUEST_CAPACITY: usize = 16384;

/// Sends acks, subscriptions and the goodbye.
#[derive(Clone)]
pub enum Client {
    V4(AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

/// Polled by a task of its own (see `mqtt::drive`).
pub enum Driver {
    V4(Box<EventLoop>),
    V5(Box<rumqttc::v5::EventLoop>),
}

/// What the broker said, as far as ingest cares.
pub enum Incoming {
    ConnAck {
        session_present: bool,
    },
    /// One answer per filter of the SUBSCRIBE, in its order: `None` granted, or the
    /// broker's refusal in words.
    SubAck {
        refused: Vec<Option<String>>,
    },
    Publish(Message),
    Other,
}

/// One PUBLISH: what ingest reads, and what its ack needs.
pub struct Message {
    pub topic: String,
    pub payload: Bytes,
    pub dup: bool,
    pub retain: bool,
    pub needs_ack: bool,
    /// MQTT 5 properties; none with 3.1.1.
    pub props: super::Properties,
    receipt: Receipt,
}

impl Message {
    /// What acking it takes, kept apart from the message itself.
    pub fn into_receipt(self) -> Receipt {
        self.receipt
    }

    /// What acking it will take, the message kept (it waits to be read).
    pub fn receipt(&self) -> Receipt {
        self.receipt
    }
}

/// What acking a message needs: its packet id and QoS, nothing else (4 bytes). An ack may
/// wait behind hundreds of thousands of others: mosquitto 2.0.11 sends past its
/// `max_inflight_messages` once the first ack comes, and rumqttc's event loop serves one
/// request per poll while a read takes in up to ten messages. A payload kept until then
/// would pin the read buffer it was cut from; a whole publish costs 20 times this.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Receipt(Raw);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Raw {
    V4 { pkid: u16, qos: QoS },
    V5 { pkid: u16, qos: rumqttc::v5::mqttbytes::QoS },
}

impl Raw {
    /// The publish rumqttc's `ack` reads: only its packet id and QoS matter there.
    fn v4(pkid: u16, qos: QoS) -> rumqttc::Publish {
        let mut p = rumqttc::Publish::new("", qos, Bytes::new());
        p.pkid = pkid;
        p
    }

    fn v5(pkid: u16, qos: rumqttc::v5::mqttbytes::QoS) -> p5::Publish {
        let mut p = p5::Publish::new("", qos, Bytes::new(), None);
        p.pkid = pkid;
        p
    }
}

/// A second, throwaway session for what the agent merely likes to have (the broker's
/// drop count): its own client id, a clean session, MQTT 3.1.1, QoS 0 only. A broker that
/// refuses it, or hangs up on it, costs the route session nothing.
pub fn open_side(cfg: &MqttConfig) -> std::io::Result<(Client, Driver)> {
    let mut side = cfg.clone();
    side.client_id = format!("{}-stats", cfg.client_id);
    side.version = 3;
    open_as(&side, false)
}

/// Opens a session as `cfg` says: options, TLS, and the client with its event loop.
pub fn open(cfg: &MqttConfig) -> std::io::Result<(Client, Driver)> {
    open_as(cfg, true)
}

/// `persistent`: the route session (stable id, kept by the broker, manual acks).
fn open_as(cfg: &MqttConfig, persistent: bool) -> std::io::Result<(Client, Driver)> {
    let transport = if cfg.tls {
        crate::init_crypto();
        // A client certificate comes with a CA file (the config says so).
        let identity = match (&cfg.client_cert, &cfg.client_key) {
            (Some(cert), Some(key)) => Some((std::fs::read(cert)?, std::fs::read(key)?)),
            _ => None,
        };
        Some(match &cfg.ca_file {
            Some(path) => Transport::tls(std::fs::read(path)?, identity, None),
            None => Transport::tls_with_default_config(),
        })
    } else {
        None
    };
    let credentials = cfg
        .username
        .as_ref()
        .map(|u| (u.clone(), cfg.password.as_ref().map(|p| p.expose().to_string()).unwrap_or_default()));
    if cfg.version == 5 {
        let mut opts = rumqttc::v5::MqttOptions::new(cfg.client_id.clone(), cfg.host.clone(), cfg.port);
        let max_packet = (cfg.max_payload + PACKET_OVERHEAD).min(u32::MAX as u64) as u32;
        opts.set_clean_start(false)
            .set_manual_acks(true)
            .set_keep_alive(cfg.keep_alive)
            .set_max_packet_size(Some(max_packet))
            // The session outlives any stop: what arrives meanwhile waits at the broker.
            .set_session_expiry_interval(Some(u32::MAX))
            // Flow control: the broker sends at most what ingest holds unacked.
            .set_receive_maximum(Some(HELD_MAX as u16))
            .set_request_channel_capacity(REQUEST_CAPACITY);
        if let Some((user, password)) = credentials {
            opts.set_credentials(user, password);
        }
        if let Some(t) = transport {
            opts.set_transport(t);
        }
        let (client, eventloop) = rumqttc::v5::AsyncClient::new(opts, REQUEST_CAPACITY);
        return Ok((Client::V5(client), Driver::V5(Box::new(eventloop))));
    }
    let mut opts = MqttOptions::new(cfg.client_id.clone(), cfg.host.clone(), cfg.port);
    opts.set_clean_session(!persistent)
        .set_manual_acks(persistent)
        .set_keep_alive(cfg.keep_alive)
        .set_max_packet_size(MAX_INCOMING_PACKET, MAX_OUTGOING_PACKET)
        .set_request_channel_capacity(REQUEST_CAPACITY);
    if let Some((user, password)) = credentials {
        opts.set_credentials(user, password);
    }
    if let Some(t) = transport {
        opts.set_transport(t);
    }
    let (client, eventloop) = AsyncClient::new(opts, REQUEST_CAPACITY);
    Ok((Client::V4(client), Driver::V4(Box::new(eventloop))))
}

/// A connection error, as text (the two clients' error types differ).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SessionError(String);

impl Driver {
    /// The next event; an error means the connection is down (the next poll reconnects).
    pub async fn poll(&mut self) -> Result<Incoming, SessionError> {
        match self {
            Driver::V4(el) => match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(a))) => Ok(Incoming::ConnAck { session_present: a.session_present }),
                Ok(Event::Incoming(Packet::SubAck(a))) => Ok(Incoming::SubAck {
                    refused: a
                        .return_codes
                        .iter()
                        .map(|c| match c {
                            rumqttc::SubscribeReasonCode::Success(_) => None,
                            rumqttc::SubscribeReasonCode::Failure => Some("failure (0x80)".to_string()),
                        })
                        .collect(),
                }),
                Ok(Event::Incoming(Packet::Publish(mut p))) => Ok(Incoming::Publish(Message {
                    topic: std::mem::take(&mut p.topic),
                    payload: std::mem::take(&mut p.payload),
                    dup: p.dup,
                    retain: p.retain,
                    needs_ack: p.qos != QoS::AtMostOnce,
                    props: super::Properties::default(),
                    receipt: Receipt(Raw::V4 { pkid: p.pkid, qos: p.qos }),
                })),
                Ok(_) => Ok(Incoming::Other),
                Err(e) => Err(SessionError(e.to_string())),
            },
            Driver::V5(el) => match el.poll().await {
                Ok(rumqttc::v5::Event::Incoming(p5::Packet::ConnAck(a))) => {
                    Ok(Incoming::ConnAck { session_present: a.session_present })
                }
                Ok(rumqttc::v5::Event::Incoming(p5::Packet::SubAck(a))) => {
                    let why = a.properties.as_ref().and_then(|p| p.reason_string.clone());
                    Ok(Incoming::SubAck {
                        refused: a
                            .return_codes
                            .iter()
                            .map(|c| match c {
                                p5::SubscribeReasonCode::Success(_) => None,
                                other => Some(match &why {
                                    Some(w) => format!("{other:?}: {w}"),
                                    None => format!("{other:?}"),
                                }),
                            })
                            .collect(),
                    })
                }
                Ok(rumqttc::v5::Event::Incoming(p5::Packet::Publish(mut p))) => Ok(Incoming::Publish(Message {
                    topic: String::from_utf8_lossy(&std::mem::take(&mut p.topic)).into_owned(),
                    payload: std::mem::take(&mut p.payload),
                    dup: p.dup,
                    retain: p.retain,
                    needs_ack: p.qos != rumqttc::v5::mqttbytes::QoS::AtMostOnce,
                    props: properties(p.properties.take().as_ref()),
                    receipt: Receipt(Raw::V5 { pkid: p.pkid, qos: p.qos }),
                })),
                Ok(_) => Ok(Incoming::Other),
                Err(e) => Err(SessionError(e.to_string())),
            },
        }
    }
}

impl Client {
    /// Acks one message (manual acks; the caller keeps them in receive order).
    pub async fn ack(&self, receipt: &Receipt) -> Result<(), SessionError> {
        let result = match (self, &receipt.0) {
            (Client::V4(c), &Raw::V4 { pkid, qos }) => c.ack(&Raw::v4(pkid, qos)).await.map_err(|e| e.to_string()),
            (Client::V5(c), &Raw::V5 { pkid, qos }) => c.ack(&Raw::v5(pkid, qos)).await.map_err(|e| e.to_string()),
            _ => Err("a message from the other protocol version".to_string()),
        };
        result.map_err(SessionError)
    }

    /// Queues an ack without waiting; an error when the request channel is full (or the
    /// event loop is gone): the caller keeps the receipt and tries again.
    pub fn try_ack(&self, receipt: &Receipt) -> Result<(), SessionError> {
        let result = match (self, &receipt.0) {
            (Client::V4(c), &Raw::V4 { pkid, qos }) => c.try_ack(&Raw::v4(pkid, qos)).map_err(|e| e.to_string()),
            (Client::V5(c), &Raw::V5 { pkid, qos }) => c.try_ack(&Raw::v5(pkid, qos)).map_err(|e| e.to_string()),
            _ => Err("a message from the other protocol version".to_string()),
        };
        result.map_err(SessionError)
    }

    /// Queues QoS 1 subscriptions to `filters`.
    pub fn subscribe(&self, filters: &[String]) -> Result<(), SessionError> {
        self.subscribe_at(filters, true)
    }

    /// Queues a SUBSCRIBE at QoS 0 (what may be lost and is sent again anyway).
    pub fn subscribe_at_most_once(&self, filters: &[String]) -> Result<(), SessionError> {
        self.subscribe_at(filters, false)
    }

    fn subscribe_at(&self, filters: &[String], at_least_once: bool) -> Result<(), SessionError> {
        use rumqttc::v5::mqttbytes::QoS as QoS5;
        let (v4, v5) =
            if at_least_once { (QoS::AtLeastOnce, QoS5::AtLeastOnce) } else { (QoS::AtMostOnce, QoS5::AtMostOnce) };
        let result = match self {
            Client::V4(c) => c
                .try_subscribe_many(filters.iter().map(|f| SubscribeFilter::new(f.clone(), v4)))
                .map_err(|e| e.to_string()),
            Client::V5(c) => {
                c.try_subscribe_many(filters.iter().map(|f| p5::Filter::new(f.clone(), v5))).map_err(|e| e.to_string())
            }
        };
        result.map_err(SessionError)
    }

    /// Queues a DISCONNECT.
    pub fn disconnect(&self) {
        let _ = match self {
            Client::V4(c) => c.try_disconnect().map_err(|e| e.to_string()),
            Client::V5(c) => c.try_disconnect().map_err(|e| e.to_string()),
        };
    }
}

/// What ingest reads of a v5 PUBLISH's properties.
fn properties(p: Option<&p5::PublishProperties>) -> super::Properties {
    let Some(p) = p else { return super::Properties::default() };
    super::Properties {
        content_type: p.content_type.clone(),
        expiry: p.message_expiry_interval.map(|s| std::time::Duration::from_secs(u64::from(s))),
        user: p.user_properties.clone(),
    }
}
