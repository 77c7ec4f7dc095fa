//! Batches: which due deliveries of a batched subscription go together in one request,
//! and the batch's id. Pure; the lane calls [`take`], the attempt names the batch with
//! [`batch_id`].
//!
//! A batch's id is derived from its members' delivery ids, so the same members always
//! make the same id: a retried batch keeps its id as long as it keeps its members, and a
//! receiver that deduplicates by `webhook-id` never drops an event it has not seen.
//! Members stay together across retries because a batch's result is recorded with one
//! next-attempt time for all of them (the attempt decides it): deliveries that have been
//! answered before (retry budget spent) only join others due at the same moment with
//! the same priority, which are the rest of their batch. New deliveries fill batches
//! freely, one priority per batch, in the order the lane fetched them.

use std::collections::VecDeque;

use crate::config::Batch;
use crate::outbox::Due;

/// The envelope's bytes in a batch body, beside its `data`: ids, type, timestamp,
/// device and the separators. An estimate; `max_bytes` is a bound on what we aim for,
/// not a promise to the byte.
const ENVELOPE_OVERHEAD: u64 = 220;

/// What a member adds to the body.
fn size(d: &Due) -> u64 {
    (d.data.len() + d.event_type.len() + d.device_id.len()) as u64 + ENVELOPE_OVERHEAD
}

/// Which batch a due delivery may share: its priority, and for one the endpoint has
/// answered before, its next-attempt time (the rest of its batch has the same).
fn group(d: &Due) -> (i64, Option<i64>) {
    (d.priority, (d.budget_used > 0).then_some(d.next_attempt_ms))
}

/// Takes the next batch from the front of `prefetched`, if it should go now: it is full
/// (`max_events` or `max_bytes`), or the next delivery belongs to another batch, or its
/// first member has `waited` `max_wait`. A batch that could still grow waits while
/// `more_coming` (a fetch is out or the queue was not exhausted) or until `waited`.
pub fn take(prefetched: &mut VecDeque<Due>, cfg: &Batch, more_coming: bool, waited: bool) -> Option<Vec<Due>> {
    let first = prefetched.front()?;
    let key = group(first);
    let mut bytes = 0u64;
    let mut count = 0usize;
    let mut full = false;
    for d in prefetched.iter() {
        if group(d) != key {
            full = true;
            break;
        }
        let next = bytes + size(d);
        if count > 0 && next > cfg.max_bytes {
            full = true;
            break;
        }
        bytes = next;
        count += 1;
        if count >= cfg.max_events {
            full = true;
            break;
        }
    }
    // A batch answered before waits for nothing: it is already what it was.
    let retried = key.1.is_some() && !more_coming;
    if !(full || waited || retried) {
        return None;
    }
    Some(prefetched.drain(..count).collect())
}

/// The batch's id: the same members, in the same order, always give the same id.
pub fn batch_id(members: &[Due]) -> String {
    let ids: Vec<&[u8]> =
        std::iter::once(&b"fleethook-batch"[..]).chain(members.iter().map(|d| d.delivery_id.as_bytes())).collect();
    crate::event::derived_id(&ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn due(seq: i64, priority: i64) -> Due {
        Due { seq, delivery_id: format!("d{seq}"), priority, data: "{}".into(), ..Default::default() }
    }

    fn cfg(max_events: usize, max_bytes: u64) -> Batch {
        Batch { max_events, max_bytes, max_wait: Duration::from_secs(1), format: crate::config::BatchFormat::Array }
    }

    fn seqs(b: Option<Vec<Due>>) -> Vec<i64> {
        b.unwrap_or_default().iter().map(|d| d.seq).collect()
    }

    #[test]
    fn a_batch_goes_when_full_or_when_its_first_member_has_waited() {
        let mut q: VecDeque<Due> = (1..=5).map(|s| due(s, 1)).collect();
        assert_eq!(seqs(take(&mut q, &cfg(3, 1 << 20), true, false)), [1, 2, 3]);
        // Two left, more may come: they wait, unless they have waited long enough.
        assert!(take(&mut q, &cfg(3, 1 << 20), false, false).is_none());
        assert_eq!(seqs(take(&mut q, &cfg(3, 1 << 20), false, true)), [4, 5]);
        assert!(take(&mut q, &cfg(3, 1 << 20), false, true).is_none());
    }

    #[test]
    fn max_bytes_bounds_a_batch_but_never_empties_it() {
        let mut q: VecDeque<Due> = (1..=4).map(|s| due(s, 1)).collect();
        let one = size(&q[0]);
        assert_eq!(seqs(take(&mut q, &cfg(100, one * 2 + 1), true, false)), [1, 2]);
        assert_eq!(seqs(take(&mut q, &cfg(100, 1), true, false)), [3]);
    }

    #[test]
    fn one_priority_per_batch() {
        let mut q: VecDeque<Due> = [due(1, 0), due(2, 0), due(3, 1)].into();
        assert_eq!(seqs(take(&mut q, &cfg(10, 1 << 20), true, false)), [1, 2]);
        assert_eq!(seqs(take(&mut q, &cfg(10, 1 << 20), true, true)), [3]);
    }

    #[test]
    fn a_retried_batch_goes_again_with_its_own_members_only() {
        let retried = |seq| Due { budget_used: 1, next_attempt_ms: 5000, ..due(seq, 1) };
        let mut q: VecDeque<Due> = [retried(1), retried(2), due(3, 1), due(4, 1)].into();
        assert_eq!(seqs(take(&mut q, &cfg(10, 1 << 20), true, false)), [1, 2]);
        // Its members all fetched (nothing more coming): it goes without waiting.
        let mut q: VecDeque<Due> = [retried(7), retried(8)].into();
        assert_eq!(seqs(take(&mut q, &cfg(10, 1 << 20), false, false)), [7, 8]);
    }

    #[test]
    fn the_same_members_make_the_same_id() {
        let a = [due(1, 1), due(2, 1)];
        assert_eq!(batch_id(&a), batch_id(&a.clone()));
        assert_ne!(batch_id(&a), batch_id(&a[..1]));
        assert_ne!(batch_id(&a[..1]), a[0].delivery_id);
    }
}
