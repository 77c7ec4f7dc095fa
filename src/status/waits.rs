//! Why a pending delivery does not go: what `queue` and `show` say beside its next
//! attempt. Pure: the rows as stored, the dispatcher's view of each endpoint and the
//! schedule clock's now in; the rows as a field tech reads them out.

use crate::live::{EndpointState, EndpointView};
use crate::outbox::query::QueueRow;

/// Turns each row's next attempt into wall-clock time and says why a pending one waits,
/// when something other than its own retry time holds it.
pub fn explain(rows: &mut [QueueRow], views: &[EndpointView], sched_now: i64, to_wall: impl Fn(i64) -> i64) {
    for row in rows {
        let due = row.next_attempt_ms <= sched_now;
        row.next_attempt_ms = to_wall(row.next_attempt_ms);
        if row.state != "pending" {
            // Nothing is next for a delivery that ended (its creation time, long past,
            // was shown here).
            row.next_attempt_ms = 0;
            continue;
        }
        let view = views.iter().find(|v| v.name == row.subscription);
        row.waits = match view {
            None => Some("its subscription is not in the running config".into()),
            Some(view) => why(row, view, due),
        };
        // An unreachable endpoint's queue goes at its next probe, not at the time stored.
        if let Some(probe) = view
            .filter(|v| matches!(v.state, EndpointState::Offline | EndpointState::Tls))
            .and_then(|v| v.next_attempt_at_ms)
        {
            row.next_attempt_ms = probe;
        }
    }
}

fn why(row: &QueueRow, view: &EndpointView, due: bool) -> Option<String> {
    let said = match view.state {
        EndpointState::Paused => "the subscription is paused (`fleethook resume`)",
        EndpointState::Disabled => "the subscription has enabled = false (set it true in the config and reload)",
        EndpointState::Gone => "the endpoint answered 410 Gone; the subscription stays stopped until resumed",
        EndpointState::Offline => "the endpoint cannot be reached; it is probed with backoff, no retry spent",
        EndpointState::Tls => "the endpoint's certificate does not verify; probed with backoff, no retry spent",
        EndpointState::Clock => "the wall clock is not synced and the signature carries a timestamp (clock_policy)",
        EndpointState::Online | EndpointState::Degraded if view.retry_after_hold => {
            "the endpoint answered 429/503 with Retry-After: the whole subscription waits until then"
        }
        EndpointState::Online | EndpointState::Degraded if row.priority > view.sends_up_to => {
            return view.held.clone().or_else(|| Some("its priority waits".into()));
        }
        EndpointState::Degraded if due => "the endpoint keeps failing: one request at a time",
        EndpointState::Online | EndpointState::Degraded if due => "due: it goes when a slot is free",
        // Not due yet: its next attempt says when.
        EndpointState::Online | EndpointState::Degraded => return None,
    };
    Some(said.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(priority: i64, next: i64) -> QueueRow {
        QueueRow {
            delivery_id: "d".into(),
            event_id: "e".into(),
            subscription: "ops".into(),
            event_type: "t".into(),
            device_id: "agv".into(),
            state: "pending".into(),
            attempts: 0,
            probes: 0,
            created_ms: 0,
            next_attempt_ms: next,
            last_status: None,
            last_error: None,
            priority,
            waits: None,
        }
    }

    fn view(state: EndpointState, sends_up_to: i64, held: Option<&str>) -> EndpointView {
        EndpointView {
            name: "ops".into(),
            url: "https://x".into(),
            state,
            in_flight: 0,
            last_status: None,
            last_error: None,
            next_attempt_at_ms: None,
            clock_skew: None,
            daily_budget: None,
            max_rate: None,
            held: held.map(str::to_string),
            sends_up_to,
            retry_after_hold: false,
        }
    }

    fn said(r: QueueRow, v: EndpointView, now: i64) -> (Option<String>, i64) {
        let mut rows = [r];
        explain(&mut rows, &[v], now, |t| t + 1_000);
        (rows[0].waits.clone(), rows[0].next_attempt_ms)
    }

    #[test]
    fn a_held_priority_says_which_hold() {
        let budget = view(EndpointState::Online, 0, Some("normal and low wait: daily budget spent"));
        assert_eq!(said(row(1, 5), budget, 10).0.as_deref(), Some("normal and low wait: daily budget spent"));
        let metered = view(EndpointState::Online, 1, Some("low waits: metered link"));
        assert_eq!(said(row(2, 5), metered.clone(), 10).0.as_deref(), Some("low waits: metered link"));
        assert_eq!(said(row(1, 5), metered, 10).0.as_deref(), Some("due: it goes when a slot is free"));
    }

    #[test]
    fn states_that_hold_everything_are_named_and_times_become_wall_clock() {
        let (why, at) = said(row(0, 5), view(EndpointState::Clock, 2, None), 10);
        assert!(why.unwrap().contains("clock"));
        assert_eq!(at, 1_005, "the schedule clock's time shown on the wall clock");
        assert!(said(row(0, 5), view(EndpointState::Paused, 2, None), 10).0.unwrap().contains("paused"));
        assert!(said(row(0, 5), view(EndpointState::Tls, 2, None), 10).0.unwrap().contains("certificate"));
        assert_eq!(said(row(0, 50), view(EndpointState::Online, 2, None), 10).0, None, "its own retry time");
        let mut held = view(EndpointState::Online, 2, None);
        held.retry_after_hold = true;
        assert!(said(row(0, 5), held, 10).0.unwrap().contains("Retry-After"));
    }
}
