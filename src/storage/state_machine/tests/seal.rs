//! Seals and a pinned topic's home handovers.

use super::*;

/// Invariant 7 in one partition: a sealed origin log holds the view
/// back until it is held up to its seal, then no longer (the view goes
/// on without the lost region); nothing past the seal enters the view,
/// whether it arrives after the seal or was held before it.
#[tokio::test]
async fn a_sealed_log_ends_at_its_seal_and_then_stops_holding_the_view() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = machine(dir.path());
    let west = LogRef {
        origin: origin_id("eu-west"),
        epoch: EPOCH_FIRST,
    };
    let mut b = WriteBatch::default();
    step(&mut sm, &mut b, Command::Close { hlc: 50_000 });
    step(
        &mut sm,
        &mut b,
        replicate(1_000, 2, vec![stored(0, 2, 900)]),
    );
    step(
        &mut sm,
        &mut b,
        replicate(2_500, 4, vec![stored(2, 2, 2_000)]),
    );
    assert_eq!(sm.applied.view_next, 4);
    // eu-west is lost; the seal says its log ends at 6, of which this
    // region holds 4: the view waits for 4..6 (relayed by a survivor).
    step(&mut sm, &mut b, seal("eu-west", 6, 4_001));
    assert_eq!(sm.watermark(), 2_500);
    step(
        &mut sm,
        &mut b,
        replicate(4_001, 6, vec![stored(4, 2, 4_000)]),
    );
    assert_eq!(sm.watermark(), 50_000, "eu-west no longer holds the view");
    assert_eq!(sm.applied.view_next, 6);
    // A copy past the seal is not stored.
    step(
        &mut sm,
        &mut b,
        replicate(9_001, 8, vec![stored(6, 2, 9_000)]),
    );
    assert_eq!(sm.applied.logs[&west].next_offset, 6);
    assert_eq!(sm.applied.view_next, 6);
    // Sealing again changes nothing.
    step(&mut sm, &mut b, seal("eu-west", 8, 9_001));
    assert_eq!(sm.applied.logs[&west].sealed, Some(6));
    // This region's own log, sealed, refuses appends (invariant 6).
    step(&mut sm, &mut b, seal("us-east", 0, 0));
    let append = Command::Append {
        proposed_hlc: 60_000,
        count: 1,
        batch: stored(0, 1, 60_000),
    };
    assert_eq!(step(&mut sm, &mut b, append), CommandResult::Sealed);
}

/// A topic pinned to eu-west moves home to us-east when eu-west is
/// sealed: us-east's records follow every sealed record in the view,
/// and their Kafka offsets are known at commit; before the seal, us-east
/// is no writer and its appends are refused (retriable).
#[tokio::test]
async fn a_new_home_continues_the_view_after_the_sealed_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = machine_with(dir.path(), &["eu-west"]);
    let mut b = WriteBatch::default();
    let append = |hlc| {
        let r = RecordIn {
            key: None,
            value: Some(bytes::Bytes::from_static(b"v")),
            headers: vec![],
        };
        Command::Append {
            proposed_hlc: hlc,
            count: 2,
            batch: batch::propose(hlc, "us-east", &[r.clone(), r], None),
        }
    };
    assert_eq!(step(&mut sm, &mut b, append(500)), CommandResult::NotWriter);
    step(
        &mut sm,
        &mut b,
        replicate(1_000, 3, vec![stored(0, 3, 900)]),
    );
    assert_eq!(sm.applied.view_next, 3);
    // The seal says eu-west's log ends at 5 (two records still on
    // their way here), last HLC 7_000, and us-east is the new home.
    step(
        &mut sm,
        &mut b,
        Command::SealLog {
            origin: origin_id("eu-west"),
            epoch: EPOCH_FIRST,
            end: 5,
            last_hlc: 7_000,
            successor: Some(origin_id("us-east")),
        },
    );
    let r = step(&mut sm, &mut b, append(500));
    let CommandResult::Appended {
        first_hlc,
        view_offset,
        ..
    } = r
    else {
        panic!("{r:?}")
    };
    assert!(first_hlc > 7_000, "after every sealed record");
    assert_eq!(view_offset, Some(5), "after eu-west's five records");
    assert_eq!(sm.applied.view_next, 3, "waits for eu-west's last two");
    step(
        &mut sm,
        &mut b,
        replicate(7_000, 5, vec![stored(3, 2, 6_999)]),
    );
    assert_eq!(sm.applied.view_next, 7);
    let r = step(&mut sm, &mut b, append(500));
    assert!(
        matches!(
            r,
            CommandResult::Appended {
                view_offset: Some(7),
                ..
            }
        ),
        "{r:?}"
    );
    // A restart keeps us-east in the view.
    sm.persist(b).unwrap();
    drop(sm);
    let sm = machine_with(dir.path(), &["eu-west"]);
    assert!(sm.view_origins.contains(&origin_id("us-east")));
    assert_eq!(sm.view_offset(9), Some(14));
}

/// The home moves back by command (eu-west -> us-east at a failover,
/// then us-east -> eu-west): us-east seals its own log where it ends,
/// its later appends are refused, eu-west's new log follows in the
/// view; a stale repeat of the first handover changes nothing, and a
/// restart keeps the chain.
#[tokio::test]
async fn the_home_moves_back_after_the_sealed_log_of_the_interim_home() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = machine_with(dir.path(), &["eu-west"]);
    let mut b = WriteBatch::default();
    let west = origin_id("eu-west");
    let east = origin_id("us-east");
    let first_handover = Command::SealLog {
        origin: west,
        epoch: EPOCH_FIRST,
        end: 3,
        last_hlc: 1_000,
        successor: Some(east),
    };
    step(
        &mut sm,
        &mut b,
        replicate(1_000, 3, vec![stored(0, 3, 900)]),
    );
    step(&mut sm, &mut b, first_handover.clone());
    assert_eq!(sm.home(), Some(east));
    let r = step(
        &mut sm,
        &mut b,
        Command::Append {
            proposed_hlc: 2_000,
            count: 2,
            batch: proposed(2_000, 2),
        },
    );
    assert!(
        matches!(
            r,
            CommandResult::Appended {
                view_offset: Some(3),
                ..
            }
        ),
        "{r:?}"
    );
    // The move back: us-east seals its own log where it ends.
    let r = step(&mut sm, &mut b, Command::SealOwn);
    let CommandResult::SealedAt {
        epoch,
        end,
        last_hlc,
    } = r
    else {
        panic!("{r:?}")
    };
    assert_eq!((epoch, end), (EPOCH_FIRST, 2));
    assert!(last_hlc >= 2_001, "at or above its last record");
    assert_eq!(step(&mut sm, &mut b, Command::SealOwn), r, "sealed once");
    let late = Command::Append {
        proposed_hlc: 3_000,
        count: 1,
        batch: proposed(3_000, 1),
    };
    assert_eq!(step(&mut sm, &mut b, late.clone()), CommandResult::Sealed);
    // The metadata group's seal hands the home to eu-west.
    step(
        &mut sm,
        &mut b,
        Command::SealLog {
            origin: east,
            epoch: EPOCH_FIRST,
            end,
            last_hlc,
            successor: Some(west),
        },
    );
    assert_eq!(sm.home(), Some(west));
    // eu-west writes its new epoch's log; it follows in the view.
    let h = BatchHeader {
        base_offset: 0,
        count: 2,
        first_hlc: last_hlc + 10,
    };
    let records = vec![
        RecordIn {
            key: None,
            value: Some(bytes::Bytes::from_static(b"w")),
            headers: vec![],
        };
        2
    ];
    step(
        &mut sm,
        &mut b,
        Command::Replicate {
            origin: west,
            epoch: EPOCH_FIRST + 1,
            closed: last_hlc + 11,
            closed_at: 2,
            batches: vec![batch::encode(h, "eu-west", &records).into()],
        },
    );
    assert_eq!(sm.applied.view_next, 7, "3 + 2 + 2");
    // A stale repeat of the first handover changes nothing.
    step(&mut sm, &mut b, first_handover);
    assert_eq!(sm.home(), Some(west));
    assert_eq!(sm.applied.handovers.len(), 2);
    sm.persist(b).unwrap();
    drop(sm);
    let sm = machine_with(dir.path(), &["eu-west"]);
    assert_eq!(sm.home(), Some(west));
    assert!(sm.view_origins.contains(&east));
    assert_eq!(sm.view_offset(0), None, "us-east is no longer the home");
}

/// A group that learns of two handovers in the wrong order (a region
/// back from a long absence) seals at once but hands over only from
/// the home it has; proposed again, the second applies after the
/// first.
#[tokio::test]
async fn handovers_apply_in_chain_order_whatever_order_they_come_in() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = machine_with(dir.path(), &["eu-west"]);
    let mut b = WriteBatch::default();
    let (west, east) = (origin_id("eu-west"), origin_id("us-east"));
    let seal = |origin, successor| Command::SealLog {
        origin,
        epoch: EPOCH_FIRST,
        end: 0,
        last_hlc: 0,
        successor: Some(successor),
    };
    sm.apply_one(&mut b, seal(east, west));
    assert_eq!(sm.home(), Some(west), "not yet: the home is still eu-west");
    assert!(sm.applied.handovers.is_empty());
    sm.apply_one(&mut b, seal(west, east));
    assert_eq!(sm.home(), Some(east));
    sm.apply_one(&mut b, seal(east, west));
    assert_eq!(sm.home(), Some(west));
    let chain: Vec<u32> = sm.applied.handovers.iter().map(|h| h.1).collect();
    assert_eq!(chain, vec![east, west]);
}

/// A region that is not the home does not seal its own log.
#[tokio::test]
async fn only_the_home_seals_its_own_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = machine_with(dir.path(), &["eu-west"]);
    let mut b = WriteBatch::default();
    assert_eq!(
        sm.apply_one(&mut b, Command::SealOwn),
        CommandResult::NotWriter
    );
    assert_eq!(sm.own_state().sealed, None);
}
