//! Idempotent producers: retries stored once, across regions too.

use super::*;

/// Retries of an idempotent producer's batch are answered with the
/// original, out-of-order batches are refused, and the state outlives a
/// restart.
#[tokio::test]
async fn an_idempotent_producers_retry_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let us = producer(1, 0);
    {
        let mut sm = machine_with(dir.path(), &["us-east"]);
        let mut b = WriteBatch::default();
        let first = step(&mut sm, &mut b, idempotent(1_000, 2, us, 0));
        assert!(matches!(
            first,
            CommandResult::Appended { base_offset: 0, .. }
        ));
        assert_eq!(
            step(&mut sm, &mut b, idempotent(2_000, 2, us, 0)),
            CommandResult::Duplicate {
                log: sm.own_ref(),
                base_offset: 0,
                end_offset: 2,
                view_offset: Some(0),
            }
        );
        assert_eq!(
            step(&mut sm, &mut b, idempotent(3_000, 1, producer(1, 5), 0)),
            CommandResult::ProducerRefused(producers::Refusal::OutOfOrder {
                expected: 2,
                got: 5
            })
        );
        let stranger = Producer {
            id: us.id + 1,
            ..producer(1, 3)
        };
        assert_eq!(
            step(&mut sm, &mut b, idempotent(3_000, 1, stranger, 0)),
            CommandResult::ProducerRefused(producers::Refusal::UnknownProducer)
        );
        let next = step(&mut sm, &mut b, idempotent(4_000, 1, producer(1, 2), 0));
        assert!(matches!(
            next,
            CommandResult::Appended { base_offset: 2, .. }
        ));
        assert_eq!(sm.own_state().next_offset, 3, "each record once");
        sm.persist(b).unwrap();
    }
    let mut sm = machine_with(dir.path(), &["us-east"]);
    let mut b = WriteBatch::default();
    assert!(matches!(
        step(&mut sm, &mut b, idempotent(5_000, 1, producer(1, 2), 0)),
        CommandResult::Duplicate { base_offset: 2, .. }
    ));
    assert_eq!(sm.own_state().next_offset, 3);
}

/// A producer that wrote through eu-west and retries here: its batch
/// waits until eu-west's log is held here up to the proposal's settle
/// point, and is then recognised as the copy eu-west stored.
#[tokio::test]
async fn a_retry_in_another_region_is_recognised_once_that_regions_log_is_here() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = machine(dir.path());
    let west = LogRef {
        origin: origin_id("eu-west"),
        epoch: EPOCH_FIRST,
    };
    let mut b = WriteBatch::default();
    step(&mut sm, &mut b, Command::Close { hlc: 500 });
    let p = producer(4, 0);
    step(&mut sm, &mut b, replicate(1_000, 2, vec![west_copy(p)]));
    // eu-west's log is closed at 1000 here: not up to 5000.
    assert_eq!(
        step(&mut sm, &mut b, idempotent(4_000, 2, p, 5_000)),
        CommandResult::ProducerRefused(producers::Refusal::Settling {
            origin: west.origin
        })
    );
    step(&mut sm, &mut b, replicate(6_000, 2, vec![]));
    assert_eq!(
        step(&mut sm, &mut b, idempotent(4_100, 2, p, 5_000)),
        CommandResult::Duplicate {
            log: west,
            base_offset: 0,
            end_offset: 2,
            view_offset: None,
        }
    );
    // The sequence continues here, and then it is this region's.
    let next = step(&mut sm, &mut b, idempotent(7_000, 1, producer(4, 2), 5_500));
    assert!(matches!(
        next,
        CommandResult::Appended { base_offset: 0, .. }
    ));
    assert!(matches!(
        step(
            &mut sm,
            &mut b,
            idempotent(7_100, 1, producer(4, 2), 99_000)
        ),
        CommandResult::Duplicate { base_offset: 0, .. }
    ));
    // A new producer given its id in eu-west waits too; a sealed log
    // held to its seal is settled whatever its closed timestamp.
    let fresh = producer(4, 0);
    let fresh = Producer {
        id: fresh.id + 1,
        ..fresh
    };
    assert!(matches!(
        step(&mut sm, &mut b, idempotent(8_000, 1, fresh, 50_000)),
        CommandResult::ProducerRefused(producers::Refusal::Settling { .. })
    ));
    step(
        &mut sm,
        &mut b,
        Command::SealLog {
            origin: west.origin,
            epoch: west.epoch,
            end: 2,
            last_hlc: 901,
            successor: None,
        },
    );
    assert!(matches!(
        step(&mut sm, &mut b, idempotent(8_100, 1, fresh, 50_000)),
        CommandResult::Appended { .. }
    ));
}

/// eu-west committed a producer's batch past its seal (never
/// acknowledged), and the producer sent it again here after the
/// failover: at failback that record is not re-injected, the producer's
/// next one, never stored here, is.
#[tokio::test]
async fn a_reinjected_record_the_producer_stored_here_since_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = machine(dir.path());
    let west = LogRef {
        origin: origin_id("eu-west"),
        epoch: EPOCH_FIRST,
    };
    let mut b = WriteBatch::default();
    step(&mut sm, &mut b, replicate(1_000, 0, vec![]));
    step(&mut sm, &mut b, seal("eu-west", 0, 900));
    // The retry of sequence 0 (the producer got its id in eu-west).
    let p = producer(4, 0);
    let first = step(&mut sm, &mut b, idempotent(2_000, 1, p, 1_500));
    assert!(matches!(first, CommandResult::Appended { .. }), "{first:?}");
    let past_seal = |seq| reinjected(p, seq);
    let records = [past_seal(0), past_seal(1)];
    let r = step(
        &mut sm,
        &mut b,
        Command::Reinject {
            from: west,
            offset: 0,
            proposed_hlc: 3_000,
            count: 2,
            batch: batch::propose(3_000, "us-east", &records, None),
        },
    );
    assert_eq!(r, CommandResult::Reinjected { upto: 2 });
    let own = sm.own_ref();
    assert_eq!(
        sm.applied.logs[&own].next_offset, 2,
        "the retry and the one record never stored"
    );
    sm.persist(b).unwrap();
    let stored = read::stored(sm.db.as_ref(), sm.log_key(own), 1, 2, 1 << 20).unwrap();
    let (_, recs) = batch::records_of(&stored[0]).unwrap();
    assert_eq!(recs[0].value.as_deref(), Some(&b"w1"[..]));
}

/// Issue 16, item 10, third finding: an idempotent producer wrote an
/// `async` topic through eu-west, which acknowledged sequences 0 to 3
/// but was failed over with only 0 and 1 copied here. The producer goes
/// on here at 4: stored (not OUT_OF_ORDER_SEQUENCE_NUMBER, fatal to
/// librdkafka), with 2 and 3 kept as a gap, so that failback re-injects
/// them and drops only what the producer sent again here.
#[tokio::test]
async fn a_producer_past_a_sealed_regions_tail_goes_on_and_its_tail_comes_back_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = machine(dir.path());
    let west = LogRef {
        origin: origin_id("eu-west"),
        epoch: EPOCH_FIRST,
    };
    let mut b = WriteBatch::default();
    let p = producer(4, 0);
    step(&mut sm, &mut b, replicate(1_000, 2, vec![west_copy(p)]));
    let at = |seq| Producer {
        base_sequence: seq,
        ..p
    };
    // Before the seal: a gap is refused, as Kafka refuses it.
    step(&mut sm, &mut b, replicate(9_000, 2, vec![]));
    assert_eq!(
        step(&mut sm, &mut b, idempotent(4_000, 1, at(4), 5_000)),
        CommandResult::ProducerRefused(producers::Refusal::OutOfOrder {
            expected: 2,
            got: 4
        })
    );
    step(&mut sm, &mut b, seal("eu-west", 2, 901));
    let r = step(&mut sm, &mut b, idempotent(10_000, 1, at(4), 10_500));
    assert!(matches!(r, CommandResult::Appended { .. }), "{r:?}");
    assert!(matches!(
        step(&mut sm, &mut b, idempotent(10_100, 1, at(4), 10_600)),
        CommandResult::Duplicate { .. }
    ));
    // Long after the seal (a producer new here, past 0), no more.
    let late = crate::hlc::span_ms(producers::GAP_WINDOW_MS) + 20_000;
    let stranger = Producer {
        id: p.id + 1,
        ..at(3)
    };
    assert_eq!(
        step(&mut sm, &mut b, idempotent(late, 1, stranger, late)),
        CommandResult::ProducerRefused(producers::Refusal::UnknownProducer)
    );
    // Sequences before the producer's last are not stored again.
    assert!(matches!(
        step(&mut sm, &mut b, idempotent(10_200, 2, at(1), 10_700)),
        CommandResult::ProducerRefused(producers::Refusal::DuplicateOld)
    ));
    // Failback re-injects 2, 3 and 4: 4 was sent again here.
    let past_seal = |seq| reinjected(p, seq);
    let records = [past_seal(2), past_seal(3), past_seal(4)];
    let r = step(
        &mut sm,
        &mut b,
        Command::Reinject {
            from: west,
            offset: 2,
            proposed_hlc: 11_000,
            count: 3,
            batch: batch::propose(11_000, "us-east", &records, None),
        },
    );
    assert_eq!(r, CommandResult::Reinjected { upto: 5 });
    let own = sm.own_ref();
    assert_eq!(
        sm.applied.logs[&own].next_offset, 3,
        "4 once, then 2 and 3 re-injected"
    );
    sm.persist(b).unwrap();
    let stored = read::stored(sm.db.as_ref(), sm.log_key(own), 1, 3, 1 << 20).unwrap();
    let (_, recs) = batch::records_of(&stored[0]).unwrap();
    let values: Vec<_> = recs.iter().map(|r| r.value.clone().unwrap()).collect();
    assert_eq!(values, vec![&b"w2"[..], &b"w3"[..]]);
}
