//! The region topology (`regions/*.toml`): regions, their nodes and
//! addresses, and the round trips between regions.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::problems::{parse_toml, read_toml, ConfigError, Problems};
use crate::ids::{valid_name, NodeId};

fn parse_addr(p: &mut Problems<'_>, key: &str, value: &str) -> Option<SocketAddr> {
    match value.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            p.add(
                key,
                format!("`{value}` is not an IP:port address (expected e.g. `127.0.0.1:9092`)"),
            );
            None
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TopologyFile {
    #[serde(rename = "region", default)]
    regions: Vec<RegionFile>,
    #[serde(rename = "rtt", default)]
    rtts: Vec<RttFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegionFile {
    name: String,
    #[serde(rename = "node", default)]
    nodes: Vec<NodeFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeFile {
    id: i64,
    quic: String,
    kafka: String,
    admin: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RttFile {
    a: String,
    b: String,
    ms: i64,
}

/// One node of the topology.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSpec {
    pub id: NodeId,
    pub region: String,
    pub quic: SocketAddr,
    pub kafka: SocketAddr,
    pub admin: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionSpec {
    pub name: String,
    pub nodes: Vec<NodeSpec>,
}

/// The validated topology: regions, their nodes, and simulated round trips.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    pub regions: Vec<RegionSpec>,
    /// Simulated round-trip time per unordered region pair, in ms.
    pub rtt_ms: BTreeMap<(String, String), u64>,
}

impl Topology {
    pub fn load(path: &Path) -> Result<Topology, ConfigError> {
        let file: TopologyFile = read_toml(path)?;
        Self::validate(path, file)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Topology, ConfigError> {
        let file: TopologyFile = parse_toml(path, text)?;
        Self::validate(path, file)
    }

    fn validate(path: &Path, file: TopologyFile) -> Result<Topology, ConfigError> {
        let mut p = Problems::new(path);
        if file.regions.is_empty() {
            p.add(
                "region",
                "no regions defined; add at least one [[region]] with its [[region.node]] entries",
            );
        }
        let mut region_names: HashMap<String, usize> = HashMap::new();
        let mut ids: HashMap<i64, String> = HashMap::new();
        let mut addrs: HashMap<SocketAddr, String> = HashMap::new();
        let mut regions = Vec::new();
        for (ri, r) in file.regions.iter().enumerate() {
            let rkey = format!("region[{ri}]");
            if !valid_name(&r.name) {
                p.add(
                    format!("{rkey}.name"),
                    format!(
                        "`{}` is not a valid region name (use letters, digits, `-` and `_`)",
                        r.name
                    ),
                );
            }
            if let Some(prev) = region_names.insert(r.name.clone(), ri) {
                p.add(
                    format!("{rkey}.name"),
                    format!("region `{}` is already defined as region[{prev}]", r.name),
                );
            }
            if r.nodes.is_empty() {
                p.add(
                    format!("{rkey}.node"),
                    format!("region `{}` has no nodes; every region needs at least one [[region.node]] (3 or 5 for fault tolerance)", r.name),
                );
            }
            let mut nodes = Vec::new();
            for (ni, n) in r.nodes.iter().enumerate() {
                let nkey = format!("{rkey}.node[{ni}]");
                if n.id <= 0 || n.id as u64 > crate::ids::PID_NODE_MAX {
                    p.add(
                        format!("{nkey}.id"),
                        format!(
                            "node id must be an integer from 1 to {} (it names the producer ids the node gives out), got {}",
                            crate::ids::PID_NODE_MAX,
                            n.id
                        ),
                    );
                } else if let Some(prev) = ids.insert(n.id, nkey.clone()) {
                    p.add(
                        format!("{nkey}.id"),
                        format!("duplicate node id {} (also used by {prev})", n.id),
                    );
                }
                let mut addr = |kind: &str, v: &str| -> Option<SocketAddr> {
                    let key = format!("{nkey}.{kind}");
                    let a = parse_addr(&mut p, &key, v)?;
                    if let Some(prev) = addrs.insert(a, key.clone()) {
                        p.add(
                            key,
                            format!("address {a} is already used by {prev}; every listener needs its own port"),
                        );
                    }
                    Some(a)
                };
                let quic = addr("quic", &n.quic);
                let kafka = addr("kafka", &n.kafka);
                let admin = addr("admin", &n.admin);
                if let (Some(quic), Some(kafka), Some(admin)) = (quic, kafka, admin) {
                    nodes.push(NodeSpec {
                        id: n.id.max(0) as NodeId,
                        region: r.name.clone(),
                        quic,
                        kafka,
                        admin,
                    });
                }
            }
            regions.push(RegionSpec {
                name: r.name.clone(),
                nodes,
            });
        }
        let mut rtt_ms = BTreeMap::new();
        for (i, rtt) in file.rtts.iter().enumerate() {
            let key = format!("rtt[{i}]");
            for (side, name) in [("a", &rtt.a), ("b", &rtt.b)] {
                if !region_names.contains_key(name) {
                    p.add(
                        format!("{key}.{side}"),
                        format!("region `{name}` is not defined in this file"),
                    );
                }
            }
            if rtt.a == rtt.b {
                p.add(key.clone(), "a round trip needs two different regions");
            }
            if rtt.ms < 0 || rtt.ms > 60_000 {
                p.add(
                    format!("{key}.ms"),
                    format!("{} is out of range (0 to 60000 ms)", rtt.ms),
                );
            }
            let pair = ordered_pair(&rtt.a, &rtt.b);
            if rtt_ms.insert(pair, rtt.ms.max(0) as u64).is_some() {
                p.add(
                    key,
                    format!(
                        "the round trip between `{}` and `{}` is given twice",
                        rtt.a, rtt.b
                    ),
                );
            }
        }
        p.finish()?;
        Ok(Topology { regions, rtt_ms })
    }

    pub fn node(&self, id: NodeId) -> Option<&NodeSpec> {
        self.regions
            .iter()
            .flat_map(|r| r.nodes.iter())
            .find(|n| n.id == id)
    }

    pub fn region(&self, name: &str) -> Option<&RegionSpec> {
        self.regions.iter().find(|r| r.name == name)
    }

    /// The topology in the file format `load` reads.
    pub fn to_toml(&self) -> String {
        let mut s = String::new();
        for r in &self.regions {
            s.push_str(&format!("[[region]]\nname = \"{}\"\n\n", r.name));
            for n in &r.nodes {
                s.push_str(&format!(
                    "[[region.node]]\nid = {}\nquic = \"{}\"\nkafka = \"{}\"\nadmin = \"{}\"\n\n",
                    n.id, n.quic, n.kafka, n.admin
                ));
            }
        }
        for ((a, b), ms) in &self.rtt_ms {
            s.push_str(&format!("[[rtt]]\na = \"{a}\"\nb = \"{b}\"\nms = {ms}\n\n"));
        }
        s
    }

    /// Simulated round trip between two regions, if configured.
    pub fn rtt_ms(&self, a: &str, b: &str) -> Option<u64> {
        self.rtt_ms.get(&ordered_pair(a, b)).copied()
    }
}

fn ordered_pair(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_string(), b.to_string())
    } else {
        (b.to_string(), a.to_string())
    }
}
