//! How a group's applied state (and a snapshot of it) is encoded: bincode
//! behind a version tag, so that later fields can be added without losing
//! what older builds stored.
//!
//! - Version 1 (before the tag): the bincode of [`AppliedV1`]. Its first
//!   byte is the `Option` tag of `last_applied`, 0 or 1.
//! - Version 2: `[TAG, 2]` then the bincode of [`Applied`]: version 1's
//!   fields, and the log start, per-log trim points and removed-record
//!   count of retention; the metadata state's DeleteRecords log starts.

use std::collections::BTreeMap;

use openraft::{BasicNode, StoredMembership};
use serde::Deserialize;

use super::{Applied, LogState};
use crate::command::LogId;
use crate::ids::{LogRef, NodeId};
use crate::meta::lease::Leases;
use crate::meta::seal::Seal;
use crate::meta::{HomeMove, MetaState, TopicMeta};

/// First byte of a tagged encoding; never the first byte of version 1.
const TAG: u8 = 0xA5;
const CURRENT: u8 = 2;

pub fn encode(a: &Applied) -> Vec<u8> {
    let mut v = vec![TAG, CURRENT];
    bincode::serialize_into(&mut v, a).expect("serialize applied state");
    v
}

pub fn decode(v: &[u8]) -> bincode::Result<Applied> {
    match v {
        [TAG, CURRENT, rest @ ..] => bincode::deserialize(rest),
        [TAG, other, ..] => Err(Box::new(bincode::ErrorKind::Custom(format!(
            "applied state of version {other}, written by a newer build; this build reads versions 1 and {CURRENT}"
        )))),
        _ => bincode::deserialize::<AppliedV1>(v).map(Applied::from),
    }
}

/// The applied state as builds before retention stored it. (Tests write
/// it to make version-1 bytes.)
#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
struct AppliedV1 {
    last_applied: Option<LogId>,
    membership: StoredMembership<NodeId, BasicNode>,
    epoch: u32,
    logs: BTreeMap<LogRef, LogState>,
    view_next: u64,
    view_last_hlc: u64,
    meta: Option<MetaStateV1>,
    handovers: Vec<(LogRef, u32)>,
    reinjected: BTreeMap<LogRef, u64>,
}

#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
struct MetaStateV1 {
    topics: BTreeMap<String, TopicMeta>,
    next_seq: u32,
    leases: Leases,
    seals: Vec<Seal>,
    epochs: BTreeMap<String, u32>,
    moves: Vec<HomeMove>,
}

impl From<AppliedV1> for Applied {
    fn from(a: AppliedV1) -> Applied {
        Applied {
            last_applied: a.last_applied,
            membership: a.membership,
            epoch: a.epoch,
            logs: a.logs,
            view_next: a.view_next,
            view_last_hlc: a.view_last_hlc,
            meta: a.meta.map(|m| MetaState {
                topics: m.topics,
                next_seq: m.next_seq,
                leases: m.leases,
                seals: m.seals,
                epochs: m.epochs,
                moves: m.moves,
                log_starts: BTreeMap::new(),
            }),
            handovers: a.handovers,
            reinjected: a.reinjected,
            ..Applied::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes a build before retention stored for a partition group
    /// (one log, view of 3 records) and for a metadata group (one topic):
    /// both still load.
    #[test]
    fn version_1_still_loads_and_version_2_round_trips() {
        let log = LogRef {
            origin: 7,
            epoch: 1,
        };
        let st = LogState {
            next_offset: 3,
            merged: 3,
            ..Default::default()
        };
        let topics = BTreeMap::from([(
            "t".to_string(),
            TopicMeta {
                name: "t".into(),
                id: uuid::Uuid::nil(),
                seq: 1,
                partitions: 2,
                configs: BTreeMap::new(),
                first_home: None,
            },
        )]);
        let old = AppliedV1 {
            last_applied: None,
            membership: StoredMembership::default(),
            epoch: 1,
            logs: BTreeMap::from([(log, st)]),
            view_next: 3,
            view_last_hlc: 99,
            meta: Some(MetaStateV1 {
                topics: topics.clone(),
                next_seq: 2,
                leases: Leases::new(),
                seals: vec![],
                epochs: BTreeMap::new(),
                moves: vec![],
            }),
            handovers: vec![],
            reinjected: BTreeMap::new(),
        };
        let bytes = bincode::serialize(&old).unwrap();
        assert!(bytes[0] == 0 || bytes[0] == 1, "no tag in version 1");
        let a = decode(&bytes).unwrap();
        assert_eq!(a.view_next, 3);
        assert_eq!(a.logs[&log], st);
        assert_eq!(a.log_start, 0);
        let m = a.meta.clone().unwrap();
        assert_eq!(m.topics, topics);
        assert!(m.log_starts.is_empty());

        let mut a = a;
        a.log_start = 2;
        a.trimmed.insert(log, 1);
        a.meta.as_mut().unwrap().log_starts.insert(5, 9);
        let again = decode(&encode(&a)).unwrap();
        assert_eq!(again.log_start, 2);
        assert_eq!(again.trimmed[&log], 1);
        assert_eq!(again.meta.unwrap().log_starts[&5], 9);

        let mut newer = encode(&a);
        newer[1] = 3;
        let e = decode(&newer).unwrap_err().to_string();
        assert!(e.contains("newer build"), "{e}");
    }
}
