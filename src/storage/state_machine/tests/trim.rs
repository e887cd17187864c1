//! Retention and DeleteRecords in a partition group (`Command::Trim`).

use super::*;

/// us-east and eu-west each write three batches of two records with
/// interleaved HLCs, all merged: the view is e100 e101 w200 w201 e300 e301
/// w400 w401 e500 e501 w600 w601 (positions 0 to 11).
async fn merged_machine(dir: &std::path::Path) -> StateMachine {
    let mut sm = machine(dir);
    let mut b = WriteBatch::default();
    for hlc in [100, 300, 500] {
        step(
            &mut sm,
            &mut b,
            Command::Append {
                proposed_hlc: hlc,
                count: 2,
                batch: proposed(hlc, 2),
            },
        );
    }
    step(
        &mut sm,
        &mut b,
        replicate(
            1_000,
            6,
            vec![stored(0, 2, 200), stored(2, 2, 400), stored(4, 2, 600)],
        ),
    );
    step(
        &mut sm,
        &mut b,
        Command::RemoteHeld {
            epoch: EPOCH_FIRST,
            upto: 6,
        },
    );
    step(&mut sm, &mut b, Command::Close { hlc: 1_000 });
    sm.db.write(b).unwrap();
    assert_eq!(sm.applied.view_next, 12);
    sm
}

fn logs() -> (LogRef, LogRef) {
    let east = LogRef {
        origin: origin_id("us-east"),
        epoch: EPOCH_FIRST,
    };
    let west = LogRef {
        origin: origin_id("eu-west"),
        epoch: EPOCH_FIRST,
    };
    (east, west)
}

/// Base offsets of the batches of `log` still stored.
fn bases(sm: &StateMachine, log: LogRef) -> Vec<u64> {
    read::stored(&sm.db, sm.log_key(log), 0, 100, usize::MAX)
        .unwrap()
        .iter()
        .map(|s| batch::decode(s).unwrap().0.base_offset)
        .collect()
}

/// Positions of the view's records read from position `from` (from each
/// Kafka batch's base offset and record count).
fn view_from(sm: &StateMachine, from: u64) -> Vec<u64> {
    let mut out = Vec::new();
    for b in read::view(&sm.db, 5, from, sm.applied.view_next, usize::MAX).unwrap() {
        let base = u64::from_be_bytes(b[..8].try_into().unwrap());
        let count = u32::from_be_bytes(b[57..61].try_into().unwrap()) as u64;
        out.extend(base..base + count);
    }
    out
}

#[tokio::test]
async fn trim_moves_the_log_start_and_removes_only_what_every_region_holds() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = merged_machine(dir.path()).await;
    let (east, west) = logs();
    // Log start at w400 (position 6); eu-west is known to hold its own log
    // only up to 2 (as if it lost a disk), us-east's all of ours.
    let trim = Command::Trim {
        log_start: 6,
        hlc: 400,
        keep: vec![(east, u64::MAX), (west, 2)],
    };
    sm.apply(vec![entry(10, trim)]).await.unwrap();
    assert_eq!(sm.applied.log_start, 6);
    assert_eq!(bases(&sm, east), [4], "e100 and e300 lie before w400");
    assert_eq!(bases(&sm, west), [2, 4], "w200 goes; eu-west holds it");
    assert_eq!(sm.applied.removed_records, 6);
    assert_eq!(
        view_from(&sm, 6),
        [6, 7, 8, 9, 10, 11],
        "the view from the start is whole"
    );

    // The region holds more of eu-west's log now, and the start moves on
    // to e500 (position 8): w400 lies before it.
    let trim = Command::Trim {
        log_start: 8,
        hlc: 500,
        keep: vec![(east, u64::MAX), (west, 6)],
    };
    sm.apply(vec![entry(11, trim)]).await.unwrap();
    assert_eq!(bases(&sm, west), [4]);
    assert_eq!(bases(&sm, east), [4], "e500 is at the start");
    // A log not named keeps everything; a start past the view stops at
    // its end; a start never moves back.
    let trim = Command::Trim {
        log_start: 99,
        hlc: 10_000,
        keep: vec![(west, 6)],
    };
    sm.apply(vec![entry(12, trim)]).await.unwrap();
    assert_eq!(sm.applied.log_start, 12);
    assert_eq!(bases(&sm, west), Vec::<u64>::new());
    assert_eq!(bases(&sm, east), [4], "not named: kept");
    let trim = Command::Trim {
        log_start: 3,
        hlc: 300,
        keep: vec![],
    };
    sm.apply(vec![entry(13, trim)]).await.unwrap();
    assert_eq!(sm.applied.log_start, 12);

    // All of it survives a restart.
    drop(sm);
    let sm = machine(dir.path());
    assert_eq!(sm.applied.log_start, 12);
    assert_eq!(sm.applied.trimmed[&west], 6);
    assert_eq!(sm.applied.removed_records, 10);
}

/// Records not merged into the view (waiting for another origin's closed
/// timestamp) stay whatever the trim says.
#[tokio::test]
async fn records_not_yet_in_the_view_stay() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = machine(dir.path());
    let (east, west) = logs();
    let mut b = WriteBatch::default();
    // eu-west's batch is held but its closed timestamp is behind: nothing
    // of it is merged.
    step(&mut sm, &mut b, replicate(150, 2, vec![stored(0, 2, 200)]));
    sm.db.write(b).unwrap();
    assert_eq!(sm.applied.view_next, 0);
    let trim = Command::Trim {
        log_start: 0,
        hlc: 10_000,
        keep: vec![(east, u64::MAX), (west, u64::MAX)],
    };
    sm.apply(vec![entry(10, trim)]).await.unwrap();
    assert_eq!(bases(&sm, west), [0]);
    assert_eq!(sm.applied.removed_records, 0);
}

/// The same entries applied in one apply or one by one leave the same
/// state: a trim sees the view as of its own entry, including the records
/// and closed timestamps applied just before it in the same apply.
#[tokio::test]
async fn a_trim_applies_alike_however_entries_are_grouped() {
    let (east, west) = logs();
    let entries = || {
        let mut cmds = Vec::new();
        for hlc in [100, 300, 500] {
            cmds.push(Command::Append {
                proposed_hlc: hlc,
                count: 2,
                batch: proposed(hlc, 2),
            });
        }
        cmds.push(replicate(
            1_000,
            6,
            vec![stored(0, 2, 200), stored(2, 2, 400), stored(4, 2, 600)],
        ));
        cmds.push(Command::RemoteHeld {
            epoch: EPOCH_FIRST,
            upto: 6,
        });
        cmds.push(Command::Close { hlc: 1_000 });
        // Up to w400, in the apply that merged it.
        cmds.push(Command::Trim {
            log_start: 6,
            hlc: 400,
            keep: vec![(east, u64::MAX), (west, u64::MAX)],
        });
        // A later batch of eu-west, then a trim of everything merged.
        cmds.push(replicate(2_000, 8, vec![stored(6, 2, 1_500)]));
        cmds.push(Command::Close { hlc: 2_000 });
        cmds.push(Command::Trim {
            log_start: 14,
            hlc: 1_502,
            keep: vec![(east, u64::MAX), (west, u64::MAX)],
        });
        cmds.into_iter()
            .enumerate()
            .map(|(i, c)| entry(i as u64 + 1, c))
            .collect::<Vec<_>>()
    };
    let dir = tempfile::tempdir().unwrap();
    let mut whole = machine(&dir.path().join("whole"));
    whole.apply(entries()).await.unwrap();
    let mut single = machine(&dir.path().join("single"));
    for e in entries() {
        single.apply(vec![e]).await.unwrap();
    }
    for sm in [&whole, &single] {
        assert_eq!(sm.applied.view_next, 14);
        assert_eq!(sm.applied.log_start, 14);
        assert_eq!(bases(sm, east), Vec::<u64>::new());
        assert_eq!(bases(sm, west), Vec::<u64>::new());
        assert_eq!(sm.applied.removed_records, 14);
    }
    assert_eq!(whole.applied.trimmed, single.applied.trimmed);
    // Nothing of the index is left to point at removed batches, and the
    // next batch indexes afresh.
    whole
        .apply(vec![entry(
            20,
            replicate(3_000, 10, vec![stored(8, 2, 2_500)]),
        )])
        .await
        .unwrap();
    assert_eq!(bases(&whole, west), [8]);
    let idx: Vec<u64> = whole
        .db
        .range(CF_HLC_INDEX, &whole.log_key(west).prefix(), 0, u64::MAX)
        .map(|r| r.unwrap().0)
        .collect();
    assert_eq!(idx, [2_501]);
}

/// Retention by size reads batch sizes from the HLC index, newest first.
#[tokio::test]
async fn batch_sizes_come_newest_first_with_their_stored_size() {
    let dir = tempfile::tempdir().unwrap();
    let sm = merged_machine(dir.path()).await;
    let (_, west) = logs();
    let sizes: Vec<(u64, u64)> = read::batch_sizes(&sm.db, sm.log_key(west)).collect();
    let hlcs: Vec<u64> = sizes.iter().map(|s| s.0).collect();
    assert_eq!(hlcs, [601, 401, 201]);
    let stored = stored(0, 2, 200).len() as u64;
    assert!(sizes.iter().all(|s| s.1 == stored), "{sizes:?} vs {stored}");
}
