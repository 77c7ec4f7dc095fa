//! What each status command does. Reads go to a fresh read-only connection on a blocking
//! thread; changes go to the outbox writer or the dispatcher as messages.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::context::{Context, internal};
use super::{ErrorBody, Request};
use crate::event::{NewDelivery, now_ms, rfc3339_ms, validate_event_type};
use crate::live::EndpointState;
use crate::outbox::disk::{per_day, recent_per_day, written_by_agent};
use crate::outbox::query::bytes_on_disk;
use crate::outbox::{HoldState, NewEvent, Repair};

/// How long `test` waits for the attempt's outcome.
const TEST_WAIT: Duration = Duration::from_secs(30);

/// A duration from a request in milliseconds, saturating (`999999999years` is a valid
/// humantime duration).
fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn parse_time(s: &str, now_ms: i64) -> Result<i64, ErrorBody> {
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Ok(t.duration_since(std::time::UNIX_EPOCH).map(millis).unwrap_or(0));
    }
    if let Ok(d) = humantime::parse_duration(s) {
        return Ok(now_ms.saturating_sub(millis(d)));
    }
    Err(ErrorBody::new("bad_request", format!("`{s}` is neither a time (2026-05-10T18:00:00Z) nor an age (2h)")))
}

impl Context {
    fn known(&self, subscription: &str) -> Result<(), ErrorBody> {
        match self.live()?.config.subscription(subscription) {
            Some(_) => Ok(()),
            None => {
                let live = self.live()?;
                let names: Vec<&str> = live.config.subscriptions.iter().map(|s| s.name.as_str()).collect();
                Err(ErrorBody::new(
                    "not_found",
                    format!("no subscription named `{subscription}`; the subscriptions are: {}", names.join(", ")),
                ))
            }
        }
    }

    /// What the subscription's endpoint last said of our clock.
    fn skew_of(&self, subscription: &str) -> Option<String> {
        let live = self.live().ok()?;
        let views = live.endpoints.lock().ok()?;
        views.iter().find(|v| v.name == subscription).and_then(|v| v.clock_skew.clone())
    }

    /// The audit rows of events delivered from memory reach the tables in rare batches;
    /// a field tech reading the log sees them at once.
    async fn fast_path_written(&self) {
        if let Err(e) = self.outbox.flush_fast().await {
            tracing::debug!(error = %e, "Could not write the fast path's audit rows before a read.");
        }
    }

    pub async fn handle(&self, request: Request) -> Result<Value, ErrorBody> {
        match request {
            Request::Status => self.status().await,
            Request::Metrics => Ok(Value::String(super::metrics::render(&self.status().await?, self.metrics.gather()))),
            Request::Queue { subscription, state, limit } => {
                super::one_of("state", state.as_deref(), super::QUEUE_STATES)
                    .map_err(|e| ErrorBody::new("bad_request", e))?;
                if let Some(s) = &subscription {
                    self.known(s)?;
                }
                let mut rows = self
                    .read(move |r| r.queue(subscription.as_deref(), state.as_deref(), limit.unwrap_or(100)))
                    .await?;
                self.explain_waits(&mut rows);
                Ok(json!(rows))
            }
            Request::Log { subscription, outcome, limit } => {
                super::one_of("outcome", outcome.as_deref(), super::LOG_OUTCOMES)
                    .map_err(|e| ErrorBody::new("bad_request", e))?;
                if let Some(s) = &subscription {
                    self.known(s)?;
                }
                self.fast_path_written().await;
                let rows =
                    self.read(move |r| r.log(subscription.as_deref(), outcome.as_deref(), limit.unwrap_or(50))).await?;
                Ok(json!(rows))
            }
            Request::Show { id } => {
                self.fast_path_written().await;
                let shown_id = id.clone();
                let (event, batch) = self
                    .read(move |r| match r.show(&id)? {
                        Some(event) => Ok((Some(event), None)),
                        None => Ok((None, r.show_batch(&id)?)),
                    })
                    .await?;
                let found = match (event, batch) {
                    (Some(mut event), _) => {
                        self.explain_waits(&mut event.deliveries);
                        Some(json!(event))
                    }
                    (None, batch) => batch.map(|b| json!(b)),
                };
                found.ok_or_else(|| {
                    ErrorBody::new("not_found", format!("no event, delivery or batch with id {shown_id}"))
                })
            }
            Request::Retry { ids, failed, subscription } => {
                if let Some(s) = &subscription {
                    self.known(s)?;
                }
                if ids.is_empty() && !failed {
                    return Err(ErrorBody::new("bad_request", "name delivery or event ids, or set \"failed\": true"));
                }
                let named = ids.clone();
                let done = self
                    .outbox
                    .repair(Repair::Retry { ids, all_failed: failed, subscription })
                    .await
                    .map_err(internal)?;
                if done.count == 0 && !failed {
                    return Err(self.why_nothing_to_retry(named).await);
                }
                Ok(json!({ "retried": done.count }))
            }
            Request::Replay { subscription, since, until } => {
                self.known(&subscription)?;
                let now = now_ms();
                let since_ms = parse_time(&since, now)?;
                let until_ms = until.as_deref().map(|u| parse_time(u, now)).transpose()?.unwrap_or(i64::MAX);
                if until_ms < since_ms {
                    return Err(ErrorBody::new(
                        "bad_request",
                        format!("--until {} is before --since {since}: nothing could match", until.unwrap_or_default()),
                    ));
                }
                let done =
                    self.outbox.repair(Repair::Replay { subscription, since_ms, until_ms }).await.map_err(internal)?;
                Ok(json!({ "replayed": done.count }))
            }
            Request::Pause { subscription } => self.hold(subscription, true).await,
            Request::Resume { subscription } => self.hold(subscription, false).await,
            Request::Link { profile } => {
                let metered = match profile.as_str() {
                    "metered" => true,
                    "unmetered" => false,
                    other => {
                        return Err(ErrorBody::new(
                            "bad_request",
                            format!("`{other}` is not a link profile: use metered or unmetered"),
                        ));
                    }
                };
                let changed = self.link.set_metered(metered);
                Ok(json!({ "profile": profile, "changed": changed }))
            }
            Request::Emit { event_type, data } => {
                let deliveries = self.live()?.config.deliveries(&event_type, None, crate::clock::sched_ms());
                let (event_id, ids) = self.emit(event_type, data, deliveries).await?;
                Ok(json!({ "event_id": event_id, "delivery_ids": ids }))
            }
            Request::Test { subscription } => self.test(subscription).await,
            Request::Quarantine { limit } => {
                let rows = self.read(move |r| r.quarantine(limit.unwrap_or(50))).await?;
                Ok(json!(rows.into_iter().map(super::quarantine::listed).collect::<Vec<_>>()))
            }
            Request::QuarantineShow { seq } => self.quarantine_show(seq).await,
            Request::QuarantineRelease { seqs, all } => self.quarantine_release(seqs, all).await,
            Request::QuarantinePurge { seqs, all } => self.quarantine_purge(seqs, all).await,
        }
    }

    /// `retry` of ids none of which is a failed delivery: say which is unknown, or what
    /// state its deliveries are in, as `show` would.
    async fn why_nothing_to_retry(&self, ids: Vec<String>) -> ErrorBody {
        let mut said = Vec::new();
        for id in ids {
            let look = id.clone();
            match self.read(move |r| r.show(&look)).await {
                Ok(Some(shown)) => {
                    let states: Vec<String> =
                        shown.deliveries.iter().map(|d| format!("{} {}", d.subscription, d.state)).collect();
                    said.push(format!("{id} is not failed ({}): nothing to retry", states.join(", ")));
                }
                Ok(None) => said.push(format!("no event or delivery with id {id}")),
                Err(e) => return e,
            }
        }
        let code = if said.iter().all(|s| s.starts_with("no event")) { "not_found" } else { "not_failed" };
        ErrorBody::new(code, said.join("; "))
    }

    async fn hold(&self, subscription: String, pause: bool) -> Result<Value, ErrorBody> {
        self.known(&subscription)?;
        if self.live()?.config.subscription(&subscription).is_some_and(|s| !s.enabled) {
            let verb = if pause { "pause" } else { "resume" };
            return Err(ErrorBody::new(
                "disabled",
                format!(
                    "`{subscription}` is disabled (enabled = false in the config): nothing to {verb}; set enabled = true in the config and reload (systemctl reload fleethook, or SIGHUP)"
                ),
            ));
        }
        let state = pause.then_some(HoldState::Paused);
        self.outbox.hold(&subscription, state).await.map_err(internal)?;
        let dispatcher = self.live()?.dispatcher;
        let applied =
            if pause { dispatcher.pause(&subscription).await } else { dispatcher.resume(&subscription).await };
        if !applied {
            return Err(internal("the dispatcher is not running"));
        }
        Ok(json!({ "subscription": subscription, "state": if pause { "paused" } else { "online" } }))
    }

    async fn emit(
        &self,
        event_type: String,
        data: Option<Value>,
        deliveries: Vec<NewDelivery>,
    ) -> Result<(String, Vec<String>), ErrorBody> {
        validate_event_type(&event_type).map_err(|e| ErrorBody::new("bad_request", e))?;
        let data = data.unwrap_or_else(|| json!({}));
        if !data.is_object() {
            return Err(ErrorBody::new("bad_request", "data must be a JSON object"));
        }
        let event = NewEvent::local(&event_type, &self.live()?.config.device_id, &data, now_ms(), deliveries);
        let id = event.id.clone();
        let delivery_ids = self.outbox.emit(event).await.map_err(internal)?;
        Ok((id, delivery_ids))
    }

    /// Sends a `fleethook.test` event to one subscription now and waits for the outcome.
    async fn test(&self, subscription: String) -> Result<Value, ErrorBody> {
        let live = self.live()?;
        let sub = live
            .config
            .subscription(&subscription)
            .ok_or_else(|| ErrorBody::new("not_found", format!("no subscription named `{subscription}`")))?;
        // A paused subscription would keep the test event queued until it is resumed, an
        // unreachable one until its next probe: say so at once instead of waiting.
        let view = live.endpoints.lock().ok().and_then(|v| v.iter().find(|v| v.name == subscription).cloned());
        if let Some(view) = view {
            if view.state == EndpointState::Disabled {
                return Err(ErrorBody::new(
                    "disabled",
                    format!("`{subscription}` is disabled (enabled = false in the config): nothing would be sent"),
                ));
            }
            if let state @ (EndpointState::Paused | EndpointState::Gone) = view.state {
                let state = if state == EndpointState::Paused { "paused" } else { "gone (it answered 410)" };
                return Err(ErrorBody::new(
                    "paused",
                    format!(
                        "`{subscription}` is {state}: nothing would be sent; `fleethook resume {subscription}` first"
                    ),
                ));
            }
            if let state @ (EndpointState::Offline | EndpointState::Tls | EndpointState::Clock) = view.state {
                return Err(unreachable_now(&subscription, state, &view));
            }
        }
        let deliveries = vec![NewDelivery {
            id: crate::event::new_id(),
            subscription: subscription.clone(),
            expires_ms: crate::clock::sched_ms().saturating_add(millis(sub.max_age)),
        }];
        let data = json!({ "message": "a test event from fleethook", "subscription": subscription });
        let (event_id, ids) = self.emit("fleethook.test".into(), Some(data), deliveries).await?;
        let delivery_id = ids.first().cloned().ok_or_else(|| internal("no delivery created"))?;
        let deadline = Instant::now() + TEST_WAIT;
        loop {
            let id = delivery_id.clone();
            if let Some(a) = self.read(move |r| r.last_attempt(&id)).await? {
                return Ok(json!({
                    "subscription": subscription,
                    "event_id": event_id,
                    "delivery_id": delivery_id,
                    "status": a.status,
                    "duration_ms": a.duration_ms,
                    "outcome": a.outcome,
                    "error": a.error,
                    "clock_skew": self.skew_of(&subscription),
                    "note": (sub.format == crate::format::Format::Pagerduty).then_some(
                        "PagerDuty has no test action: this opened an incident of severity info, \"fleethook test event …: a connectivity check, not an incident\"; resolve it in PagerDuty"
                    ),
                }));
            }
            if Instant::now() > deadline {
                return Err(ErrorBody::new(
                    "timeout",
                    format!(
                        "no attempt within {} s (is `{subscription}` paused or offline?); it stays queued as {delivery_id}",
                        TEST_WAIT.as_secs()
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn status(&self) -> Result<Value, ErrorBody> {
        let live = self.live()?;
        let mut stats = self.read(|r| r.stats()).await?;
        if let Ok(memory) = self.outbox.in_memory().await {
            stats.add_fast(&memory.fast);
            stats.add_held(&memory.held);
            stats.duplicates = memory.duplicates;
        }
        let bytes = bytes_on_disk(&live.config.storage.path);
        let written = written_by_agent();
        let mqtt = self.mqtt.lock().map(|m| m.clone()).unwrap_or_default();
        let views = live.endpoints.lock().map(|v| v.clone()).unwrap_or_default();
        let now = now_ms();
        let subscriptions: Vec<Value> = live
            .config
            .subscriptions
            .iter()
            .map(|sub| {
                let s = stats.subscription(&sub.name).cloned().unwrap_or_default();
                let v = views.iter().find(|v| v.name == sub.name);
                let sent = self.link.sent_24h(&sub.name);
                let next = v
                    .and_then(|v| v.next_attempt_at_ms)
                    .or(s.next_attempt_ms.filter(|_| s.pending > 0).map(crate::clock::to_wall_ms));
                json!({
                    "name": sub.name,
                    "url": sub.url,
                    "state": v.map(|v| v.state).unwrap_or(EndpointState::Paused),
                    "pending": s.pending,
                    "in_flight": v.map(|v| v.in_flight).unwrap_or(0),
                    "delivered": s.delivered,
                    "failed": s.failed,
                    "expired": s.expired,
                    "evicted": s.evicted,
                    "superseded": s.superseded,
                    "oldest_pending_age_s": s.oldest_pending_ms.map(|t| ((now - t).max(0)) / 1000),
                    "last_status": v.and_then(|v| v.last_status),
                    "last_error": v.and_then(|v| v.last_error.clone()),
                    "clock_skew": v.and_then(|v| v.clock_skew.clone()),
                    "next_attempt_at": next.map(rfc3339_ms),
                    "sent_bytes_24h": sent,
                    "daily_budget": v.and_then(|v| v.daily_budget),
                    "budget_left": v.and_then(|v| v.daily_budget.map(|b| b.saturating_sub(sent))),
                    "max_rate": v.and_then(|v| v.max_rate),
                    "held": v.and_then(|v| v.held.clone()),
                })
            })
            .collect();
        Ok(json!({
            "version": env!("CARGO_PKG_VERSION"),
            "device_id": live.config.device_id,
            "uptime_s": self.started.elapsed().as_secs(),
            "clock": crate::clock::quality(),
            "mqtt": {
                "connected": mqtt.connected,
                "url": mqtt.url,
                "last_error": mqtt.last_error,
                "received": mqtt.received,
                "broker_dropped": mqtt.broker_dropped,
                "refused": mqtt.refused,
                "unavailable": mqtt.unavailable,
            },
            "storage": {
                "path": live.config.storage.path,
                "bytes": bytes,
                "max_bytes": live.config.storage.max_bytes,
                "events": stats.events,
                "quarantined": stats.quarantined,
                "duplicates": stats.duplicates,
                "written_bytes": written,
                // The last hour's rate (or since 10 min after start); the average since
                // start until there is one.
                "written_per_day": written.and_then(|w| recent_per_day(w).map(|(r, _)| r).or_else(|| per_day(w, self.started.elapsed()))),
                "written_per_day_over_s": written.and_then(recent_per_day).map(|(_, window)| window.as_secs()),
            },
            "link": {
                "profile": self.link.view().profile,
                "max_rate": live.config.link.max_rate_in(self.link.metered()),
                "held": if self.link.metered() { Some(live.config.link.metered.hold) } else { None },
            },
            "subscriptions": subscriptions,
        }))
    }
}

/// `test` on a subscription whose endpoint does not answer now: its state, the last
/// error and the next probe, and nothing sent.
fn unreachable_now(subscription: &str, state: EndpointState, view: &crate::live::EndpointView) -> ErrorBody {
    let (code, what) = match state {
        EndpointState::Tls => ("tls", "refusing our TLS connections (its certificate does not verify)"),
        EndpointState::Clock => ("clock", "waiting for the wall clock to be synced (its signatures carry a timestamp)"),
        _ => ("offline", "offline (it cannot be reached)"),
    };
    let error = view.last_error.as_deref().map(|e| format!("; last error: {e}")).unwrap_or_default();
    let probe = view
        .next_attempt_at_ms
        .map(|at| format!("; next probe in {} s", ((at - crate::event::now_ms()).max(0) + 999) / 1000))
        .unwrap_or_default();
    ErrorBody::new(
        code,
        format!(
            "`{subscription}` is {what}{error}{probe}: a test event would only wait in the queue, so none was sent"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// `replay --since/--until` take anything a user (or anyone in the group) sends.
        #[test]
        fn any_time_or_age_is_a_time_or_a_refusal(s in "[0-9a-zA-Z:\\- .]{0,40}", now in proptest::num::i64::ANY) {
            let _ = parse_time(&s, now);
        }
    }

    #[test]
    fn huge_ages_saturate() {
        assert_eq!(parse_time("500000000000years", 1000).unwrap(), 1000 - i64::MAX);
        assert_eq!(parse_time("2h", 7_200_000).unwrap(), 0);
    }
}
