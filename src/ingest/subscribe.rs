//! What the route session asks the broker for, and what the broker refused.
//!
//! Each filter goes in a SUBSCRIBE of its own, route filters (QoS 1) first, then the ROS
//! type topics (QoS 0), one at a time: the next is sent when the last is answered. So each
//! SUBACK names its filter, and when a broker hangs up instead of answering (rumqttd does
//! that to a filter it cannot validate, some ACLs too) the filter it hung up on is the one
//! waiting. (Sent together, the SUBACKs of the good ones may never leave a broker that
//! hangs up on a later one.) A filter refused by its SUBACK, or hung up on twice in a row within a few
//! seconds of asking, is not asked for again in this run: one ERROR names it and the
//! broker's answer, and `status` and the heartbeat list it. The other filters keep
//! working. A config reload (SIGHUP) starts afresh.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::session::{Client, SessionError};
use crate::live::{MqttView, RefusedFilter, update_mqtt as update};

/// A hang-up this soon after a SUBSCRIBE that is still unanswered counts against it.
const HUNG_UP_WITHIN: Duration = Duration::from_secs(5);
/// Hang-ups in a row on the same filter before it is taken as refused.
const HANG_UPS_TO_REFUSE: u32 = 2;

struct Asked {
    filter: String,
    route: bool,
}

#[derive(Default)]
pub struct Subscriptions {
    routes: Vec<String>,
    types: Vec<String>,
    refused: HashMap<String, String>,
    /// Filters to ask for on this connection, in order; the first is sent and waiting.
    asked: VecDeque<Asked>,
    asked_at: Option<Instant>,
    hang_ups: HashMap<String, u32>,
    /// Route filters granted on this connection.
    granted: usize,
}

/// What a SUBACK completed.
#[derive(Debug, PartialEq, Eq)]
pub enum Answered {
    /// Every route filter has its answer: the session is subscribed.
    Routes {
        granted: Vec<String>,
    },
    Nothing,
}

impl Subscriptions {
    pub fn new(routes: Vec<String>, types: Vec<String>) -> Subscriptions {
        Subscriptions { routes, types, ..Subscriptions::default() }
    }

    /// A new connection: queues every filter not refused and sends the first. Returns
    /// how many route filters are asked for.
    pub fn ask(&mut self, client: &Client, routes_too: bool) -> Result<usize, SessionError> {
        self.asked.clear();
        self.granted = 0;
        let routes = if routes_too { self.routes.clone() } else { Vec::new() };
        let wanted = routes.into_iter().map(|f| (f, true)).chain(self.types.clone().into_iter().map(|f| (f, false)));
        for (filter, route) in wanted {
            if !self.refused.contains_key(&filter) {
                self.asked.push_back(Asked { filter, route });
            }
        }
        self.send_next(client)?;
        Ok(self.asked.iter().filter(|a| a.route).count())
    }

    fn send_next(&mut self, client: &Client) -> Result<(), SessionError> {
        if let Some(next) = self.asked.front() {
            let one = std::slice::from_ref(&next.filter);
            if next.route { client.subscribe(one) } else { client.subscribe_at_most_once(one) }?;
            self.asked_at = Some(Instant::now());
        }
        Ok(())
    }

    /// A SUBACK: the answer to the SUBSCRIBE waiting; the next is sent.
    pub fn answered(&mut self, refused: &[Option<String>], client: &Client, view: &MqttView) -> Answered {
        let Some(asked) = self.asked.pop_front() else { return Answered::Nothing };
        if let Err(e) = self.send_next(client) {
            tracing::warn!(error = %e, "Cannot queue the next MQTT subscription.");
        }
        self.hang_ups.remove(&asked.filter);
        match refused.first().cloned().flatten() {
            Some(answer) => self.refuse(&asked, format!("SUBACK {answer}"), view),
            None if asked.route => self.granted += 1,
            None => {}
        }
        if asked.route && !self.asked.iter().any(|a| a.route) {
            let granted = self.routes.iter().filter(|f| !self.refused.contains_key(*f)).cloned().collect();
            return Answered::Routes { granted };
        }
        Answered::Nothing
    }

    /// The connection ended. A SUBSCRIBE left unanswered right after it was sent is what
    /// the broker hung up on; twice in a row, and it is refused.
    pub fn hung_up(&mut self, view: &MqttView) {
        let soon = self.asked_at.is_some_and(|t| t.elapsed() < HUNG_UP_WITHIN);
        if let Some(asked) = self.asked.pop_front().filter(|_| soon) {
            let n = self.hang_ups.entry(asked.filter.clone()).or_insert(0);
            *n += 1;
            if *n >= HANG_UPS_TO_REFUSE {
                self.refuse(&asked, "the broker closed the connection right after this SUBSCRIBE".into(), view);
            }
        }
        self.asked.clear();
        self.asked_at = None;
    }

    fn refuse(&mut self, asked: &Asked, answer: String, view: &MqttView) {
        if self.refused.insert(asked.filter.clone(), answer.clone()).is_some() {
            return;
        }
        let what = if asked.route { "route filter" } else { "ROS type topic" };
        tracing::error!(filter = %asked.filter, answer = %answer, what,
            "The MQTT broker refused a subscription: nothing on it is ingested until the broker's ACL or the route is fixed (then reload). The other routes keep working.");
        let refused = RefusedFilter { filter: asked.filter.clone(), answer };
        update(view, |v| v.refused.push(refused));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client whose requests queue up unsent (no event loop is polled).
    fn client() -> (Client, rumqttc::EventLoop) {
        let (c, el) = rumqttc::AsyncClient::new(rumqttc::MqttOptions::new("t", "127.0.0.1", 1), 64);
        (Client::V4(c), el)
    }

    fn asked(s: &mut Subscriptions, filters: &[(&str, bool)]) {
        s.asked = filters.iter().map(|(f, route)| Asked { filter: f.to_string(), route: *route }).collect();
        s.asked_at = Some(Instant::now());
    }

    #[test]
    fn a_refusing_suback_names_its_filter_and_the_rest_are_granted() {
        let view = crate::live::new_mqtt_view();
        let (c, _el) = client();
        let mut s = Subscriptions::new(vec!["a/#".into(), "b/#".into()], vec!["types/#".into()]);
        asked(&mut s, &[("a/#", true), ("b/#", true), ("types/#", false)]);
        assert_eq!(s.answered(&[Some("failure (0x80)".into())], &c, &view), Answered::Nothing);
        assert_eq!(s.answered(&[None], &c, &view), Answered::Routes { granted: vec!["b/#".into()] });
        assert_eq!(s.answered(&[None], &c, &view), Answered::Nothing);
        let v = view.lock().unwrap().clone();
        assert_eq!(v.refused.len(), 1);
        assert_eq!(v.refused[0].filter, "a/#");
        assert!(v.refused[0].answer.contains("0x80"));
    }

    #[test]
    fn two_hang_ups_on_the_same_filter_refuse_it_once() {
        let view = crate::live::new_mqtt_view();
        let (c, _el) = client();
        let mut s = Subscriptions::new(vec!["a/#".into(), "$bad".into()], Vec::new());
        for _ in 0..3 {
            asked(&mut s, &[("a/#", true), ("$bad", true)]);
            s.answered(&[None], &c, &view);
            s.hung_up(&view);
        }
        assert_eq!(view.lock().unwrap().refused.len(), 1, "said once");
        assert!(s.refused.contains_key("$bad") && !s.refused.contains_key("a/#"));
    }

    #[test]
    fn a_hang_up_long_after_asking_blames_nothing() {
        let view = crate::live::new_mqtt_view();
        let mut s = Subscriptions::new(vec!["a/#".into()], Vec::new());
        for _ in 0..3 {
            asked(&mut s, &[("a/#", true)]);
            s.asked_at = Some(Instant::now() - HUNG_UP_WITHIN * 2);
            s.hung_up(&view);
        }
        assert!(view.lock().unwrap().refused.is_empty());
    }
}
