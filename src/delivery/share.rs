//! The fair share of the global in-flight limit (`delivery.max_in_flight`).
//!
//! Four endpoints that accept a connection and never answer once held all 32 global
//! slots, and a healthy subscription got a few events a minute. So each subscription is
//! guaranteed `max_in_flight / subscriptions` slots (at least one), capped by what its
//! state lets it use at all: none while paused, gone or held for the clock, one while
//! offline, degraded or FIFO. A lane may take a slot only if enough stay free for every
//! other lane's unused guarantee; what no lane is guaranteed is first come.

/// Slots guaranteed to each of `lanes` subscriptions.
pub fn per_lane(max_in_flight: usize, lanes: usize) -> usize {
    (max_in_flight / lanes.max(1)).max(1)
}

/// Global slots a lane may take now: the free ones, less the other lanes' unused
/// guarantees (`kept` is the sum of every lane's, `own` this lane's).
pub fn room(free: usize, kept: usize, own: usize) -> usize {
    free.saturating_sub(kept.saturating_sub(own))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_lane_keeps_its_share_and_the_rest_is_first_come() {
        assert_eq!(per_lane(32, 5), 6);
        assert_eq!(per_lane(32, 40), 1, "never less than one");
        assert_eq!(per_lane(32, 0), 32);
        // 5 lanes of 6: four hanging lanes took 8 each (their share and 2 beyond), so 0
        // are free... which cannot happen: beyond its share a lane takes only what others
        // do not keep. Walk it: the first hanging lane may take 32 - 4 × 6 = 8.
        assert_eq!(room(32, 30, 6), 8);
        // The second: 24 free, the first's guarantee is used up, three others keep 18.
        assert_eq!(room(24, 24, 6), 6);
        // A healthy lane whose guarantee is untouched always finds it free.
        assert_eq!(room(6, 6, 6), 6);
        assert_eq!(room(0, 6, 6), 0);
    }
}
