use super::*;

fn event(n: u32) -> NewEvent {
    NewEvent::local(
        "mission.done",
        "agv-1",
        &serde_json::json!({ "n": n }),
        1_000 + n as i64,
        vec![NewDelivery { id: format!("d-{n}"), subscription: "ops".into(), expires_ms: i64::MAX }],
    )
}

/// A journal of a fresh outbox, its first generation begun (and the directory it lives in).
fn begun() -> (tempfile::TempDir, std::path::PathBuf, Journal) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("outbox.db");
    let (mut journal, _) = Journal::open(&db, true);
    journal.begin().unwrap();
    (dir, db, journal)
}

fn ids(recovered: &[Recovered]) -> Vec<String> {
    recovered.iter().map(|r| r.event.deliveries[0].id.clone()).collect()
}

#[test]
fn live_entries_come_back_and_retired_ones_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("outbox.db");
    let (mut journal, recovered) = Journal::open(&db, true);
    assert!(recovered.is_empty());
    journal.begin().unwrap();
    let (a, b, c) = (event(1), event(2), event(3));
    journal.append(&[(1, &a), (2, &b)]).unwrap();
    journal.append(&[(3, &c)]).unwrap();
    journal.retire([2]);
    assert_eq!(journal.pending(), [("ops".to_string(), 2)]);
    journal.write_retired();
    drop(journal);
    let (mut journal, recovered) = Journal::open(&db, true);
    assert_eq!(ids(&recovered), ["d-1", "d-3"]);
    let back = &recovered[0].event;
    assert_eq!((back.id.as_str(), back.data.as_str(), back.created_ms), (a.id.as_str(), a.data.as_str(), 1_001));
    assert!(!back.dedupe_check);
    // Stored elsewhere by the caller: a new generation starts empty.
    journal.begin().unwrap();
    drop(journal);
    assert!(Journal::open(&db, true).1.is_empty());
}

#[test]
fn an_entry_retired_before_its_append_is_not_appended() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("outbox.db");
    let (mut journal, _) = Journal::open(&db, true);
    // Delivered from memory while the command that journals it was still on its way.
    journal.retire([1]);
    journal.append(&[(1, &event(1)), (2, &event(2))]).unwrap();
    assert_eq!(journal.pending(), [("ops".to_string(), 1)]);
    drop(journal);
    assert_eq!(ids(&Journal::open(&db, true).1), ["d-2"]);
}

#[test]
fn a_torn_record_ends_the_read_and_what_was_synced_before_it_stays() {
    let (_dir, db, mut journal) = begun();
    journal.append(&[(1, &event(1))]).unwrap();
    journal.append(&[(2, &event(2))]).unwrap();
    let index = journal.file.as_ref().map(|(i, _)| *i).unwrap();
    drop(journal);
    let path = &paths_for(&db)[index];
    let mut bytes = std::fs::read(path).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 0xff;
    std::fs::write(path, &bytes).unwrap();
    assert_eq!(ids(&Journal::open(&db, true).1), ["d-1"]);
}

#[test]
fn rotation_carries_the_live_entries_and_leaves_the_retired_behind() {
    let (_dir, db, mut journal) = begun();
    let big = |n: u32| {
        let mut e = event(n);
        e.data = format!("{{\"pad\":\"{}\"}}", "x".repeat(64 * 1024));
        e
    };
    journal.append(&[(1, &event(1))]).unwrap();
    let started = journal.generation;
    for n in 2..40 {
        journal.append(&[(n as u64, &big(n))]).unwrap();
        journal.retire([n as u64]);
    }
    assert!(journal.generation > started, "rotated past {ROTATE_AT} bytes");
    journal.append(&[(50, &event(50))]).unwrap();
    drop(journal);
    assert_eq!(ids(&Journal::open(&db, true).1), ["d-1", "d-50"]);
}

#[test]
fn a_rotation_cut_short_leaves_the_older_file_in_force() {
    let (_dir, db, mut journal) = begun();
    journal.append(&[(1, &event(1))]).unwrap();
    let index = journal.file.as_ref().map(|(i, _)| *i).unwrap();
    journal.rotate(vec![]).unwrap();
    drop(journal);
    // The new generation's first record torn: as if the cut came before its sync.
    let path = &paths_for(&db)[1 - index];
    let mut bytes = std::fs::read(path).unwrap();
    bytes[HEADER] ^= 0xff;
    std::fs::write(path, &bytes).unwrap();
    assert_eq!(ids(&Journal::open(&db, true).1), ["d-1"]);
}

/// A model of the journal's promise: after a kill (everything written survives) or a
/// power cut (what was written after the last sync is garbage), what comes back at open
/// is every entry appended in the generation, less the retirements that reached the file
/// (all of them written, or only the synced ones).
mod model {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[derive(Clone, Debug)]
    enum Op {
        /// Events of these payload sizes, one record.
        Append(Vec<usize>),
        /// Retire the live entries at these positions (modulo the live count).
        Retire(Vec<usize>),
        WriteRetired,
        Kill,
        Cut,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => prop::collection::vec(prop_oneof![3 => 0usize..400, 1 => 1_000usize..6_000], 1..4).prop_map(Op::Append),
            3 => prop::collection::vec(any::<usize>(), 1..4).prop_map(Op::Retire),
            1 => Just(Op::WriteRetired),
            1 => Just(Op::Kill),
            1 => Just(Op::Cut),
        ]
    }

    #[derive(Default)]
    struct Model {
        /// In the generation's file: copied forward at its start, or appended since.
        appended: BTreeSet<u64>,
        /// Retirements in records up to the last sync, written after it, not yet written.
        synced: BTreeSet<u64>,
        written: BTreeSet<u64>,
        buffered: BTreeSet<u64>,
    }

    impl Model {
        fn live(&self) -> Vec<u64> {
            self.appended
                .iter()
                .copied()
                .filter(|j| !self.synced.contains(j) && !self.written.contains(j) && !self.buffered.contains(j))
                .collect()
        }
    }

    fn recovered_ids(db: &Path) -> (Journal, BTreeSet<u64>) {
        let (journal, recovered) = Journal::open(db, true);
        let ids = recovered.iter().map(|r| r.j).collect();
        (journal, ids)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
        #[test]
        fn what_comes_back_is_what_was_acked_less_what_reached_the_file_retired(
            ops in prop::collection::vec(op(), 1..40),
            garbage in any::<u8>(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let db = dir.path().join("outbox.db");
            let (mut journal, _) = Journal::open(&db, true);
            journal.rotate_at = 4096;
            journal.begin().unwrap();
            let mut model = Model::default();
            let mut synced_end = journal.end;
            let mut next = 1u64;
            for op in ops {
                match op {
                    Op::Append(sizes) => {
                        let events: Vec<(u64, NewEvent)> = sizes
                            .iter()
                            .map(|&size| {
                                let mut e = event(next as u32);
                                e.data = format!("{{\"pad\":\"{}\"}}", "x".repeat(size));
                                next += 1;
                                (next - 1, e)
                            })
                            .collect();
                        let generation = journal.generation;
                        journal.append(&events.iter().map(|(j, e)| (*j, e)).collect::<Vec<_>>()).unwrap();
                        if journal.generation != generation {
                            // Rotated: the new file starts with what was live.
                            model.appended = model.live().into_iter().collect();
                            model.synced.clear();
                        } else {
                            model.synced.extend(std::mem::take(&mut model.written));
                            model.synced.extend(std::mem::take(&mut model.buffered));
                        }
                        model.written.clear();
                        model.buffered.clear();
                        model.appended.extend(events.iter().map(|(j, _)| *j));
                        synced_end = journal.end;
                    }
                    Op::Retire(at) => {
                        let live = model.live();
                        if live.is_empty() {
                            continue;
                        }
                        let ids: BTreeSet<u64> = at.iter().map(|i| live[i % live.len()]).collect();
                        journal.retire(ids.iter().copied());
                        model.buffered.extend(ids);
                    }
                    Op::WriteRetired => {
                        journal.write_retired();
                        model.written.extend(std::mem::take(&mut model.buffered));
                    }
                    Op::Kill | Op::Cut => {
                        let index = journal.file.as_ref().map(|(i, _)| *i).unwrap();
                        let end = journal.end;
                        drop(journal);
                        let mut expected: BTreeSet<u64> =
                            model.appended.iter().copied().filter(|j| !model.synced.contains(j)).collect();
                        if matches!(op, Op::Cut) {
                            // What was written after the last sync is gone: garbage in its place.
                            let path = &paths_for(&db)[index];
                            let mut bytes = std::fs::read(path).unwrap();
                            bytes[synced_end as usize..end as usize].fill(garbage);
                            std::fs::write(path, &bytes).unwrap();
                        } else {
                            expected.retain(|j| !model.written.contains(j));
                        }
                        let (reopened, ids) = recovered_ids(&db);
                        prop_assert_eq!(&ids, &expected);
                        journal = reopened;
                        journal.rotate_at = 4096;
                        // The caller stores them; a new generation starts empty.
                        journal.begin().unwrap();
                        model = Model::default();
                        synced_end = journal.end;
                    }
                }
            }
        }
    }
}
