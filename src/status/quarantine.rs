//! `quarantine`: what ingest could not take in, why, and taking it in after a route fix.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

use super::ErrorBody;
use super::context::{Context, internal};
use crate::clock::{sched_ms, to_wall_ms};
use crate::event::rfc3339_ms;
use crate::ingest::Router;
use crate::outbox::quarantine::{QuarantineRow, QuarantinedMessage};
use crate::outbox::{Inbound, Repair};

/// A listed row, with its arrival as a wall-clock time.
pub fn listed(row: QuarantineRow) -> Value {
    json!({
        "seq": row.seq,
        "received_at": rfc3339_ms(to_wall_ms(row.received_ms)),
        "topic": row.topic,
        "reason": row.reason,
        "size": row.size,
        "kept": row.kept,
    })
}

/// The payload as text when it is UTF-8, else as base64.
fn payload(m: &QuarantinedMessage) -> Value {
    match std::str::from_utf8(&m.payload) {
        Ok(text) => json!({ "payload": text }),
        Err(_) => json!({ "payload_base64": B64.encode(&m.payload) }),
    }
}

fn seqs_or_all(seqs: &[i64], all: bool) -> Result<(), ErrorBody> {
    match (seqs.is_empty(), all) {
        (true, false) => {
            Err(ErrorBody::new("bad_request", "name quarantined messages by number, or set \"all\": true"))
        }
        (false, true) => Err(ErrorBody::new("bad_request", "name messages or set \"all\", not both")),
        _ => Ok(()),
    }
}

impl Context {
    pub(super) async fn quarantine_show(&self, seq: i64) -> Result<Value, ErrorBody> {
        let Some(m) = self.read(move |r| r.quarantined(seq)).await? else {
            return Err(ErrorBody::new("not_found", format!("no quarantined message number {seq}")));
        };
        let mut shown = listed(m.row.clone());
        if let (Some(o), Value::Object(p)) = (shown.as_object_mut(), payload(&m)) {
            o.extend(p);
        }
        Ok(shown)
    }

    pub(super) async fn quarantine_release(&self, seqs: Vec<i64>, all: bool) -> Result<Value, ErrorBody> {
        seqs_or_all(&seqs, all)?;
        let seqs = if all { self.read(|r| r.quarantine_seqs()).await? } else { seqs };
        // Routed with the config the agent runs now: the point is a fixed route.
        let router = Router::new(&self.live()?.config).with_ros_types(self.ros_types.clone());
        let mut results = Vec::with_capacity(seqs.len());
        let mut released = 0;
        for seq in seqs {
            let result = match self.read(move |r| r.quarantined(seq)).await? {
                Some(m) => self.release_one(&router, m).await?,
                None => json!({ "seq": seq, "released": false, "missing": true,
                                "reason": "no quarantined message with this number" }),
            };
            released += u64::from(result["released"] == true);
            results.push(result);
        }
        Ok(json!({ "released": released, "results": results }))
    }

    async fn release_one(&self, router: &Router, m: QuarantinedMessage) -> Result<Value, ErrorBody> {
        let seq = m.row.seq;
        let kept = |reason: String| json!({ "seq": seq, "released": false, "reason": reason });
        if !m.complete() {
            return Ok(kept(format!(
                "only its first {} of {} bytes were kept (it was over mqtt.max_payload)",
                m.row.kept, m.row.size
            )));
        }
        // Dated when it arrived; its TTL counts from now, when it is taken in.
        let arrived = to_wall_ms(m.row.received_ms);
        let event = match router.inbound(&m.row.topic, &m.payload, false, arrived, sched_ms()) {
            Inbound::Event(e) => e,
            Inbound::Quarantine(q) => {
                let reason = q.reason;
                let repair = Repair::Requarantine { seq, reason: reason.clone() };
                self.outbox.repair(repair).await.map_err(internal)?;
                return Ok(kept(format!("still quarantined: {reason}")));
            }
            Inbound::Nothing => return Ok(kept(format!("no route matches its topic `{}` now", m.row.topic))),
        };
        let (event_id, event_type) = (event.id.clone(), event.event_type.clone());
        let done = self.outbox.repair(Repair::Release { seq, event: Box::new(event) }).await.map_err(internal)?;
        if done.count == 0 {
            return Ok(kept("it left the quarantine meanwhile (released or purged by another request)".into()));
        }
        Ok(json!({
            "seq": seq,
            "released": true,
            "event_id": event_id,
            "event_type": event_type,
            "delivery_ids": done.delivery_ids,
            "duplicate": done.duplicate,
        }))
    }

    pub(super) async fn quarantine_purge(&self, seqs: Vec<i64>, all: bool) -> Result<Value, ErrorBody> {
        seqs_or_all(&seqs, all)?;
        // Numbers that name nothing are told apart, so a script notices a stale number.
        let mut missing = Vec::new();
        for &seq in &seqs {
            if self.read(move |r| r.quarantined(seq)).await?.is_none() {
                missing.push(seq);
            }
        }
        let seqs = (!all).then_some(seqs);
        let done = self.outbox.repair(Repair::Purge { seqs }).await.map_err(internal)?;
        Ok(json!({ "purged": done.count, "missing": missing }))
    }
}
