//! Committed offsets as records of the internal topic `__consumer_offsets`
//! (invariant 8): a commit is a record keyed by group, topic and
//! partition, appended in the committing region and copied by the link to
//! every other region like any record. Each node folds the origin logs it
//! holds into the latest commit per key, by HLC: every region that holds
//! the same records folds them to the same commits, whatever order they
//! arrived in. A group that moves region resumes at its last commit the
//! new region holds, with no offset translation (offsets name the same
//! record in every region).

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::presence::{self, Seen};
use crate::ids::{GroupId, LogRef};
use crate::log::batch;
use crate::log::RecordIn;
use crate::storage::read;
use crate::storage::state_machine::LogState;
use crate::storage::{Db, DbError, LogKey};

/// The internal topic that carries commits.
pub const TOPIC: &str = crate::meta::OFFSETS_TOPIC;

/// What a commit record's key names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Key {
    pub group: String,
    pub topic: String,
    pub partition: i32,
}

/// A commit record's value; a record without a value deletes the commit
/// (DeleteGroups).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Value {
    pub offset: i64,
    #[serde(default)]
    pub metadata: String,
    #[serde(default = "no_epoch")]
    pub leader_epoch: i32,
}

fn no_epoch() -> i32 {
    -1
}

/// A commit as folded: the value and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub value: Value,
    /// HLC of the commit (its original one, for a record re-injected at
    /// failback), then its origin region: the fold's order.
    pub at: (u64, u32),
}

/// The record of one commit, or of its deletion (`value` None). JSON, so
/// that an operator can read the topic with any client.
pub fn record(key: &Key, value: Option<&Value>) -> RecordIn {
    RecordIn {
        key: Some(Bytes::from(
            serde_json::to_vec(key).expect("serialize commit key"),
        )),
        value: value.map(|v| Bytes::from(serde_json::to_vec(v).expect("serialize commit"))),
        headers: Vec::new(),
    }
}

/// Which partition of the internal topic carries `group`'s commits: a
/// stable hash (FNV-1a, as region names get their origin ids), so every
/// node and region picks the same one.
pub fn partition_for(group: &str, partitions: u32) -> u32 {
    crate::ids::origin_id(group) % partitions.max(1)
}

/// Folds one record into `commits`: the latest by (HLC, origin) wins.
/// Records that are not commits (someone produced to the topic by hand)
/// are skipped. Returns the group a commit record names.
pub fn fold(
    commits: &mut HashMap<Key, Committed>,
    r: &RecordIn,
    hlc: u64,
    origin: u32,
) -> Option<String> {
    let key = r
        .key
        .as_ref()
        .and_then(|k| serde_json::from_slice::<Key>(k).ok())?;
    let value = match &r.value {
        Some(v) => Some(serde_json::from_slice::<Value>(v).ok()?),
        None => None,
    };
    let group = key.group.clone();
    // A record re-injected at failback keeps its original HLC: an old
    // commit re-injected late must not override a newer one.
    let hlc = r
        .headers
        .iter()
        .find(|(k, _)| k == batch::HEADER_REINJECTED_HLC)
        .and_then(|(_, v)| std::str::from_utf8(v.as_deref()?).ok()?.parse().ok())
        .unwrap_or(hlc);
    let at = (hlc, origin);
    if commits.get(&key).is_some_and(|c| c.at >= at) {
        return Some(group);
    }
    match value {
        Some(value) => {
            commits.insert(key, Committed { value, at });
        }
        None => {
            // A deletion: keep it as a tombstone at offset -1, so an older
            // commit arriving later from another region does not revive it.
            commits.insert(
                key,
                Committed {
                    value: Value {
                        offset: -1,
                        metadata: String::new(),
                        leader_epoch: -1,
                    },
                    at,
                },
            );
        }
    }
    Some(group)
}

/// What one [`Folded::catch_up`] did.
#[derive(Debug, Default)]
pub struct Caught {
    /// Every log is folded to its end.
    pub done: bool,
    /// Groups with commits folded now: group, origin region, newest HLC.
    pub groups: Vec<(String, u32, u64)>,
}

/// The commits of one partition of the internal topic, folded from every
/// origin log held here.
#[derive(Debug, Default)]
pub struct Folded {
    /// How far each origin log is folded.
    cursors: BTreeMap<LogRef, u64>,
    pub commits: HashMap<Key, Committed>,
    /// The latest presence of each region, per group
    /// ([`super::presence`]).
    pub presence: HashMap<String, BTreeMap<u32, Seen>>,
}

impl Folded {
    /// Folds what the logs gained since the last call. A sealed log is
    /// read only up to its seal (what follows it never counts; failback
    /// re-injects it). Reads at most `max_bytes` per log per call; returns
    /// whether every log is folded to its end, and the groups whose
    /// commits it folded from each origin with the newest HLC seen.
    pub fn catch_up(
        &mut self,
        db: &Db,
        group: GroupId,
        logs: &BTreeMap<LogRef, LogState>,
        max_bytes: usize,
    ) -> Result<Caught, DbError> {
        let mut done = true;
        let mut seen: BTreeMap<(String, u32), u64> = BTreeMap::new();
        for (log, state) in logs {
            let end = state
                .sealed
                .map_or(state.next_offset, |s| s.min(state.next_offset));
            let from = self.cursors.get(log).copied().unwrap_or(0);
            if from >= end {
                continue;
            }
            let key = LogKey {
                group,
                origin: log.origin,
                epoch: log.epoch,
            };
            let mut reached = from;
            for stored in read::stored(db, key, from, end, max_bytes)? {
                let (h, records) =
                    batch::records_of(&stored).map_err(|reason| DbError::Corrupt {
                        cf: crate::storage::CF_RECORDS,
                        reason,
                    })?;
                for (i, r) in records.iter().enumerate() {
                    let offset = h.base_offset + i as u64;
                    if offset < from || offset >= end {
                        continue;
                    }
                    let hlc = h.first_hlc + i as u64;
                    if let Some(g) = fold(&mut self.commits, r, hlc, log.origin) {
                        let e = seen.entry((g, log.origin)).or_default();
                        *e = (*e).max(hlc);
                    } else {
                        self.fold_presence(r, hlc, log.origin);
                    }
                    reached = offset + 1;
                }
            }
            self.cursors.insert(*log, reached);
            done &= reached >= end;
        }
        Ok(Caught {
            done,
            groups: seen.into_iter().map(|((g, o), h)| (g, o, h)).collect(),
        })
    }

    /// Keeps the latest presence record of each region. A re-injected one
    /// is old news written again under another region's name: skipped.
    fn fold_presence(&mut self, r: &RecordIn, hlc: u64, origin: u32) {
        if r.headers
            .iter()
            .any(|(k, _)| k == batch::HEADER_REINJECTED_FROM)
        {
            return;
        }
        let Some((group, v)) = presence::parse(r) else {
            return;
        };
        let by_region = self.presence.entry(group.clone()).or_default();
        if by_region.get(&origin).is_some_and(|s| s.at >= hlc) {
            return;
        }
        if v.members == 0 {
            // Emptied: nothing left to draw members (kept out of memory).
            by_region.remove(&origin);
            if by_region.is_empty() {
                self.presence.remove(&group);
            }
        } else {
            by_region.insert(
                origin,
                Seen {
                    node: v.node,
                    members: v.members,
                    since: v.since,
                    at: hlc,
                },
            );
        }
    }

    /// Groups with commits here (tombstones aside).
    pub fn groups(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .commits
            .iter()
            .filter(|(_, c)| c.value.offset >= 0)
            .map(|(k, _)| k.group.clone())
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// `group`'s live commits.
    pub fn of_group(&self, group: &str) -> Vec<(&Key, &Committed)> {
        let mut v: Vec<_> = self
            .commits
            .iter()
            .filter(|(k, c)| k.group == group && c.value.offset >= 0)
            .collect();
        v.sort_by(|a, b| a.0.cmp(b.0));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(g: &str, p: i32) -> Key {
        Key {
            group: g.into(),
            topic: "t".into(),
            partition: p,
        }
    }

    fn commit(offset: i64) -> Value {
        Value {
            offset,
            metadata: String::new(),
            leader_epoch: -1,
        }
    }

    #[test]
    fn the_latest_commit_by_hlc_wins_in_any_arrival_order() {
        let records = [
            (record(&key("g", 0), Some(&commit(5))), 100, 1),
            (record(&key("g", 0), Some(&commit(9))), 300, 2),
            (record(&key("g", 0), Some(&commit(7))), 200, 1),
            (record(&key("g", 1), Some(&commit(3))), 150, 3),
        ];
        let orders = [[0, 1, 2, 3], [3, 2, 1, 0], [1, 0, 3, 2], [2, 3, 0, 1]];
        for order in orders {
            let mut c = HashMap::new();
            for i in order {
                let (r, hlc, origin) = &records[i];
                fold(&mut c, r, *hlc, *origin);
            }
            assert_eq!(c[&key("g", 0)].value.offset, 9, "order {order:?}");
            assert_eq!(c[&key("g", 1)].value.offset, 3);
        }
    }

    #[test]
    fn a_deletion_is_not_revived_by_an_older_commit_arriving_later() {
        let mut c = HashMap::new();
        fold(&mut c, &record(&key("g", 0), None), 200, 1);
        fold(&mut c, &record(&key("g", 0), Some(&commit(4))), 100, 2);
        let f = Folded {
            commits: c,
            ..Default::default()
        };
        assert!(f.of_group("g").is_empty());
        assert!(f.groups().is_empty());
    }

    #[test]
    fn a_reinjected_commit_counts_at_its_original_hlc() {
        let mut c = HashMap::new();
        fold(&mut c, &record(&key("g", 0), Some(&commit(150))), 500, 2);
        let mut old = record(&key("g", 0), Some(&commit(100)));
        old.headers.push((
            batch::HEADER_REINJECTED_HLC.to_string(),
            Some(Bytes::from("400")),
        ));
        fold(&mut c, &old, 900, 1);
        assert_eq!(c[&key("g", 0)].value.offset, 150);
    }

    #[test]
    fn records_that_are_not_commits_are_skipped() {
        let mut c = HashMap::new();
        let junk = RecordIn {
            key: Some(Bytes::from("hello")),
            value: Some(Bytes::from("world")),
            headers: vec![],
        };
        assert_eq!(fold(&mut c, &junk, 1, 1), None);
        let mut bad_value = record(&key("g", 0), None);
        bad_value.value = Some(Bytes::from("{"));
        assert_eq!(fold(&mut c, &bad_value, 2, 1), None);
        assert!(c.is_empty());
        let r = record(&key("g", 0), Some(&commit(1)));
        assert_eq!(fold(&mut c, &r, 3, 1).as_deref(), Some("g"));
        assert_eq!(
            fold(&mut c, &r, 2, 1).as_deref(),
            Some("g"),
            "older, still a commit of g"
        );
    }

    #[test]
    fn groups_spread_over_partitions_stably() {
        assert_eq!(partition_for("orders", 8), partition_for("orders", 8));
        let used: std::collections::BTreeSet<u32> = (0..100)
            .map(|i| partition_for(&format!("group-{i}"), 8))
            .collect();
        assert_eq!(used.len(), 8, "100 groups use every partition");
        assert_eq!(partition_for("x", 0), 0);
    }
}
