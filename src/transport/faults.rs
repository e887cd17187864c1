//! The fault layer: simulated wide-area conditions between regions, for
//! `meridian dev`, tests and chaos scenarios. Every call to a node of another
//! region waits half the pair's round trip before the request and half after
//! the response; a cut pair fails at once, as an unreachable network would.
//! Traffic inside a region is never touched.
//!
//! The round trips come from the topology's `[[rtt]]` entries; cuts, extra
//! delay, message loss, this node's clock skew and a failing disk are set
//! at run time through the admin endpoint `/faults`.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use std::sync::RwLock;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::Topology;
use crate::ids::NodeId;

/// Faults set at run time, per unordered region pair. As JSON (admin
/// `/faults`): `{"cut": [["us-east", "eu-west"]], "delay": [{"a": "us-east",
/// "b": "ap-south", "ms": 200}]}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultState {
    /// Pairs that cannot talk at all.
    #[serde(default)]
    pub cut: BTreeSet<(String, String)>,
    /// Round-trip time added to the topology's.
    #[serde(default)]
    pub delay: Vec<ExtraDelay>,
    /// Share of requests between two regions that are lost: the caller
    /// hears nothing and times out, as with a dropped message.
    #[serde(default)]
    pub loss: Vec<Loss>,
    /// This node's clock runs this far ahead (or behind, if negative) of
    /// the machine's: its HLCs, lease times and drift checks use it.
    /// (A clock behind still never gives HLCs below ones it has seen.)
    #[serde(default)]
    pub skew_ms: i64,
    /// This node's disk fails every write from now on (a dying disk): the
    /// node stops at its first failed write.
    /// Cleared only by a restart, as a real disk error would be.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disk_error: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Loss {
    pub a: String,
    pub b: String,
    /// 0 to 100.
    pub percent: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtraDelay {
    pub a: String,
    pub b: String,
    pub ms: u64,
}

pub fn pair(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_string(), b.to_string())
    } else {
        (b.to_string(), a.to_string())
    }
}

pub struct Faults {
    region: String,
    region_of: HashMap<NodeId, String>,
    rtt_ms: BTreeMap<(String, String), u64>,
    state: RwLock<FaultState>,
}

impl Faults {
    /// The region of a node, from the topology.
    pub fn region_of(&self, node: NodeId) -> Option<&str> {
        self.region_of.get(&node).map(String::as_str)
    }

    /// Nodes of regions other than this node's and `not`'s, by id: the
    /// relays to try when a node of region `not` cannot be reached directly.
    pub fn relays_around(&self, not: &str) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = self
            .region_of
            .iter()
            .filter(|(_, r)| **r != self.region && r.as_str() != not)
            .map(|(n, _)| *n)
            .collect();
        v.sort_unstable();
        v
    }
}

/// What the fault layer does to one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// Wait this long each way.
    Delay(Duration),
    Cut,
    /// The request is dropped: the caller waits out its deadline.
    Lost,
}

impl Faults {
    pub fn new(topology: &Topology, region: &str) -> Faults {
        Faults {
            region: region.to_string(),
            region_of: topology
                .regions
                .iter()
                .flat_map(|r| r.nodes.iter().map(|n| (n.id, r.name.clone())))
                .collect(),
            rtt_ms: topology.rtt_ms.clone(),
            state: RwLock::new(FaultState::default()),
        }
    }

    pub fn state(&self) -> FaultState {
        self.state.read().expect("faults lock").clone()
    }

    /// Replaces the run-time faults; pairs must name regions of the topology.
    pub fn set(&self, s: FaultState) -> Result<(), String> {
        // A pair in canonical order, or what is wrong with it.
        let checked = |what: &str, a: &String, b: &String| {
            let known = |r: &String| self.region_of.values().any(|x| x == r);
            if !known(a) || !known(b) || a == b {
                return Err(format!(
                    "{what} [{a}, {b}]: name two different regions of the topology"
                ));
            }
            Ok(pair(a, b))
        };
        let mut norm = FaultState::default();
        for (a, b) in &s.cut {
            norm.cut.insert(checked("cut", a, b)?);
        }
        for d in &s.delay {
            let (a, b) = checked("delay", &d.a, &d.b)?;
            norm.delay.push(ExtraDelay { a, b, ms: d.ms });
        }
        for l in &s.loss {
            let (a, b) = checked("loss", &l.a, &l.b)?;
            if l.percent > 100 {
                return Err(format!(
                    "loss {}-{}: percent {} is over 100",
                    l.a, l.b, l.percent
                ));
            }
            norm.loss.push(Loss {
                a,
                b,
                percent: l.percent,
            });
        }
        norm.skew_ms = s.skew_ms;
        norm.disk_error = s.disk_error;
        *self.state.write().expect("faults lock") = norm;
        Ok(())
    }

    /// The path of a call from this node to `peer`.
    pub fn path(&self, peer: NodeId) -> Path {
        let Some(theirs) = self.region_of.get(&peer) else {
            return Path::Delay(Duration::ZERO);
        };
        if *theirs == self.region {
            return Path::Delay(Duration::ZERO);
        }
        let p = pair(&self.region, theirs);
        let s = self.state.read().expect("faults lock");
        if s.cut.contains(&p) {
            return Path::Cut;
        }
        let loss: u32 = s
            .loss
            .iter()
            .filter(|l| l.a == p.0 && l.b == p.1)
            .map(|l| l.percent as u32)
            .sum();
        if loss > 0 && rand::random::<u32>() % 100 < loss {
            return Path::Lost;
        }
        let extra: u64 = s
            .delay
            .iter()
            .filter(|d| d.a == p.0 && d.b == p.1)
            .map(|d| d.ms)
            .sum();
        let rtt = self.rtt_ms.get(&p).copied().unwrap_or(0) + extra;
        Path::Delay(Duration::from_micros(rtt * 500))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_only_between_regions_and_cuts_pairs() {
        let text = r#"
            [[region]]
            name = "a"
            [[region.node]]
            id = 1
            quic = "127.0.0.1:1"
            kafka = "127.0.0.1:2"
            admin = "127.0.0.1:3"
            [[region]]
            name = "b"
            [[region.node]]
            id = 2
            quic = "127.0.0.1:4"
            kafka = "127.0.0.1:5"
            admin = "127.0.0.1:6"
            [[rtt]]
            a = "a"
            b = "b"
            ms = 80
        "#;
        let t = Topology::parse(std::path::Path::new("t.toml"), text).unwrap();
        let f = Faults::new(&t, "a");
        assert_eq!(f.path(1), Path::Delay(Duration::ZERO));
        assert_eq!(f.path(2), Path::Delay(Duration::from_millis(40)));
        let mut s = FaultState::default();
        s.delay.push(ExtraDelay {
            a: "b".into(),
            b: "a".into(),
            ms: 20,
        });
        f.set(s.clone()).unwrap();
        assert_eq!(f.path(2), Path::Delay(Duration::from_millis(50)));
        s.cut.insert(("b".into(), "a".into()));
        f.set(s).unwrap();
        assert_eq!(f.path(2), Path::Cut);
        assert_eq!(
            f.path(1),
            Path::Delay(Duration::ZERO),
            "never inside a region"
        );
        // Loss: all or nothing is deterministic.
        let lossy = |percent| FaultState {
            loss: vec![Loss {
                a: "b".into(),
                b: "a".into(),
                percent,
            }],
            ..FaultState::default()
        };
        f.set(lossy(100)).unwrap();
        assert_eq!(f.path(2), Path::Lost);
        assert_eq!(f.path(1), Path::Delay(Duration::ZERO));
        f.set(lossy(0)).unwrap();
        assert_eq!(f.path(2), Path::Delay(Duration::from_millis(40)));
        f.set(lossy(50)).unwrap();
        let lost = (0..1000).filter(|_| f.path(2) == Path::Lost).count();
        assert!((350..650).contains(&lost), "{lost} of 1000 lost at 50%");
        assert!(f.set(lossy(101)).unwrap_err().contains("over 100"));
        let mut bad = FaultState::default();
        bad.cut.insert(("a".into(), "mars".into()));
        assert!(f.set(bad).unwrap_err().contains("regions of the topology"));
    }
}
