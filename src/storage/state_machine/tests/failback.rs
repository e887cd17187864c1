//! Failback and the view's bounds: re-injection, admitted logs, new
//! epochs, own records held back, records past a seal.

use super::*;

/// Failback as a survivor sees it: the returning region's records past
/// its seal are re-injected here once each, in order; its new epoch's
/// log is admitted at this group's watermark, which then waits for that
/// log's closed timestamps.
#[tokio::test]
async fn reinjection_is_idempotent_and_an_admitted_log_holds_the_view() {
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
    let reinject = |offset, hlc| Command::Reinject {
        from: west,
        offset,
        proposed_hlc: hlc,
        count: 2,
        batch: proposed(hlc, 2),
    };
    // Not before the log is sealed here.
    assert_eq!(
        step(&mut sm, &mut b, reinject(2, 60_000)),
        CommandResult::NotWriter
    );
    step(&mut sm, &mut b, seal("eu-west", 2, 901));
    assert_eq!(
        step(&mut sm, &mut b, reinject(2, 60_000)),
        CommandResult::Reinjected { upto: 4 }
    );
    let own = sm.own_ref();
    assert_eq!(sm.applied.logs[&own].next_offset, 2);
    // A retry, and a request past a gap, add nothing.
    assert_eq!(
        step(&mut sm, &mut b, reinject(2, 61_000)),
        CommandResult::Reinjected { upto: 4 }
    );
    assert_eq!(
        step(&mut sm, &mut b, reinject(6, 62_000)),
        CommandResult::Reinjected { upto: 4 }
    );
    assert_eq!(sm.applied.logs[&own].next_offset, 2);
    assert_eq!(sm.applied.view_next, 4);

    // eu-west's epoch 2 joins at the current watermark.
    let w = sm.watermark();
    let west2 = LogRef {
        origin: origin_id("eu-west"),
        epoch: 2,
    };
    let r = step(&mut sm, &mut b, Command::Admit { log: west2 });
    assert_eq!(
        r,
        CommandResult::LogState {
            next_offset: 0,
            closed: w
        }
    );
    step(&mut sm, &mut b, Command::Close { hlc: w + 10_000 });
    assert_eq!(sm.watermark(), w, "waits for eu-west's new log");
    step(
        &mut sm,
        &mut b,
        Command::Replicate {
            origin: west2.origin,
            epoch: 2,
            closed: w + 5_000,
            closed_at: 1,
            batches: vec![stored(0, 1, w + 5)],
        },
    );
    assert_eq!(sm.watermark(), w + 5_000);
    assert_eq!(sm.applied.view_next, 5);
    // Admitted again (a retry): the log as it stands.
    let r = step(&mut sm, &mut b, Command::Admit { log: west2 });
    assert!(
        matches!(r, CommandResult::LogState { next_offset: 1, .. }),
        "{r:?}"
    );
}

/// Failback as the returning region sees it: its sealed log refuses
/// appends; after BeginEpoch it writes its new epoch's log, above the
/// floor the other regions admitted it at.
#[tokio::test]
async fn a_new_epoch_writes_above_its_floor() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = machine(dir.path());
    let mut b = WriteBatch::default();
    let append = |hlc| Command::Append {
        proposed_hlc: hlc,
        count: 1,
        batch: proposed(hlc, 1),
    };
    assert!(matches!(
        sm.apply_one(&mut b, append(100)),
        CommandResult::Appended { .. }
    ));
    sm.apply_one(&mut b, seal("us-east", 1, 100));
    assert_eq!(sm.apply_one(&mut b, append(200)), CommandResult::Sealed);
    sm.apply_one(
        &mut b,
        Command::BeginEpoch {
            epoch: 2,
            floor: Some(90_000),
        },
    );
    assert_eq!(sm.own_ref().epoch, 2);
    let r = sm.apply_one(&mut b, append(300));
    let CommandResult::Appended {
        base_offset,
        first_hlc,
        ..
    } = r
    else {
        panic!("{r:?}")
    };
    assert_eq!(base_offset, 0, "a new log");
    assert!(first_hlc > 90_000);
    // BeginEpoch again (a retry) changes nothing.
    sm.apply_one(
        &mut b,
        Command::BeginEpoch {
            epoch: 2,
            floor: Some(1),
        },
    );
    assert_eq!(sm.own_state().next_offset, 1);
}

/// Own records enter this region's view only once another region holds
/// them (a failover could seal them away otherwise), unless no other
/// region could take over any more.
#[tokio::test]
async fn own_records_wait_until_another_region_holds_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = machine(dir.path());
    let mut b = WriteBatch::default();
    let append = |hlc| Command::Append {
        proposed_hlc: hlc,
        count: 2,
        batch: proposed(hlc, 2),
    };
    step(&mut sm, &mut b, append(100));
    step(&mut sm, &mut b, replicate(50_000, 0, vec![]));
    assert_eq!(sm.applied.view_next, 0, "eu-west does not hold them yet");
    step(&mut sm, &mut b, Command::RemoteHeld { epoch: 1, upto: 1 });
    assert_eq!(sm.applied.view_next, 1);
    step(&mut sm, &mut b, Command::RemoteHeld { epoch: 1, upto: 2 });
    assert_eq!(sm.applied.view_next, 2);
    // eu-west failed over: nobody else could seal this log now.
    step(&mut sm, &mut b, seal("eu-west", 0, 0));
    step(&mut sm, &mut b, append(200));
    step(&mut sm, &mut b, Command::Close { hlc: 60_000 });
    assert_eq!(sm.applied.view_next, 4);
}

/// A copy that raced the seal leaves records past it on this replica:
/// they stay stored but never enter the view, here or after a restart.
#[tokio::test]
async fn records_held_past_a_seal_never_enter_the_view() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = machine(dir.path());
    let mut b = WriteBatch::default();
    sm.apply_one(&mut b, Command::Close { hlc: 50_000 });
    sm.apply_one(
        &mut b,
        replicate(1_000, 4, vec![stored(0, 2, 900), stored(2, 2, 950)]),
    );
    sm.apply_one(&mut b, seal("eu-west", 2, 901));
    sm.advance_view(&mut b);
    assert_eq!(sm.applied.view_next, 2);
    sm.persist(b).unwrap();
    drop(sm);
    let mut sm = machine(dir.path());
    let mut b = WriteBatch::default();
    sm.advance_view(&mut b);
    assert_eq!(sm.applied.view_next, 2);
    assert!(sm.pending.values().all(|q| q.is_empty()));
}
