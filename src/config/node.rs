//! One node's config file (`config/*.toml`): what it holds, how it loads
//! (every section checked, then the topology and topics files it names),
//! and how `meridian dev` writes one.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::problems::{cannot_use, parse_toml, read_toml, ConfigError, Problems};
use super::settings::{
    AdminConfig, ControlConfig, GroupsConfig, KafkaConfig, LinkConfig, RaftConfig, RuntimeConfig,
    StorageConfig, TlsConfig, TransportConfig,
};
use super::topics::TopicDecl;
use super::topology::{NodeSpec, RegionSpec, Topology};
use super::{absolute, validate};
use crate::ids::NodeId;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct NodeFileConfig {
    node_id: i64,
    topology: PathBuf,
    data_dir: PathBuf,
    #[serde(default)]
    log: Option<String>,
    #[serde(default)]
    kafka: KafkaConfig,
    #[serde(default)]
    raft: RaftConfig,
    #[serde(default)]
    transport: TransportConfig,
    #[serde(default)]
    runtime: RuntimeConfig,
    #[serde(default)]
    link: LinkConfig,
    #[serde(default)]
    control: ControlConfig,
    #[serde(default)]
    groups: GroupsConfig,
    #[serde(default)]
    admin: AdminConfig,
    #[serde(default)]
    storage: StorageConfig,
    /// Topics to create at start (docs/replication.md#topics-file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    topics: Option<PathBuf>,
    #[serde(default)]
    tls: Option<TlsConfig>,
}

/// A validated node configuration; paths are absolute.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub path: PathBuf,
    pub node_id: NodeId,
    pub topology_path: PathBuf,
    pub topology: Topology,
    pub data_dir: PathBuf,
    pub log: Option<String>,
    pub kafka: KafkaConfig,
    pub raft: RaftConfig,
    pub transport: TransportConfig,
    pub runtime: RuntimeConfig,
    pub link: LinkConfig,
    pub control: ControlConfig,
    pub groups: GroupsConfig,
    pub admin: AdminConfig,
    pub storage: StorageConfig,
    /// Topics this node creates at start unless they exist.
    pub topics: Vec<TopicDecl>,
    pub topics_path: Option<PathBuf>,
    pub tls: Option<TlsConfig>,
}

impl NodeConfig {
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        let path = absolute(path);
        let file: NodeFileConfig = read_toml(&path)?;
        Self::validate(&path, file)
    }

    pub fn parse(path: &Path, text: &str) -> Result<NodeConfig, ConfigError> {
        let file: NodeFileConfig = parse_toml(path, text)?;
        Self::validate(path, file)
    }

    fn validate(path: &Path, f: NodeFileConfig) -> Result<NodeConfig, ConfigError> {
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        let mut p = Problems::new(path);
        validate::check_raft(&mut p, &f.raft, &f.control);
        validate::check_groups(&mut p, &f.groups);
        validate::check_kafka(&mut p, &f.kafka);
        validate::check_transport(&mut p, &f.transport);
        validate::check_link(&mut p, &f.link);
        for (key, why) in validate::size_limit_problems(&f.kafka, &f.raft, &f.transport, &f.link) {
            p.add(key, why);
        }
        validate::check_admin(&mut p, &f.admin);
        validate::check_storage(&mut p, &f.storage);
        let topology_path = resolve(&f.topology);
        let topology = match Topology::load(&topology_path) {
            Ok(t) => Some(t),
            Err(e) => {
                p.add("topology", cannot_use("topology", &topology_path, &e));
                None
            }
        };
        validate::check_node_id(&mut p, f.node_id, topology.as_ref(), &topology_path);
        if let Some(t) = &topology {
            validate::check_meta_heartbeat(&mut p, &f.control, t, &topology_path);
        }
        let regions = topology.as_ref().map_or(0, |t| t.regions.len());
        validate::check_leases(&mut p, &f.control, f.link.clock_drift_ms_max, regions);
        let topics_path = f.topics.as_deref().map(resolve);
        let mut topics = Vec::new();
        if let (Some(tp), Some(t)) = (&topics_path, &topology) {
            let names: Vec<String> = t.regions.iter().map(|r| r.name.clone()).collect();
            match TopicDecl::load(tp, &names) {
                Ok(list) => topics = list,
                Err(e) => p.add("topics", cannot_use("topics", tp, &e)),
            }
        }
        p.finish()?;
        Ok(NodeConfig {
            path: path.to_path_buf(),
            node_id: f.node_id as NodeId,
            topology_path,
            // Checked above: finish() fails when the topology did not load.
            topology: topology.expect("topology loaded"),
            data_dir: resolve(&f.data_dir),
            log: f.log,
            kafka: f.kafka,
            raft: f.raft,
            transport: f.transport,
            runtime: f.runtime,
            link: f.link,
            control: f.control,
            groups: f.groups,
            admin: f.admin,
            storage: f.storage,
            topics,
            topics_path,
            tls: f.tls.map(|t| TlsConfig {
                ca_cert: resolve(&t.ca_cert),
                cert: resolve(&t.cert),
                key: resolve(&t.key),
            }),
        })
    }

    pub fn me(&self) -> &NodeSpec {
        // validate() checked that node_id is in the topology.
        self.topology.node(self.node_id).expect("node in topology")
    }

    pub fn region(&self) -> &RegionSpec {
        let name = &self.me().region;
        self.topology.region(name).expect("own region in topology")
    }

    /// Writes a node config file that `load` reads back; used by `meridian dev`.
    pub fn write_file(
        path: &Path,
        node_id: NodeId,
        topology: &Path,
        data_dir: &Path,
        runtime: RuntimeConfig,
        topics: Option<&Path>,
        admin: AdminConfig,
    ) -> std::io::Result<()> {
        let f = NodeFileConfig {
            node_id: node_id as i64,
            topology: topology.to_path_buf(),
            data_dir: data_dir.to_path_buf(),
            log: None,
            kafka: KafkaConfig::default(),
            raft: RaftConfig::default(),
            transport: TransportConfig::default(),
            runtime,
            link: LinkConfig::default(),
            control: ControlConfig::default(),
            groups: GroupsConfig::default(),
            admin,
            storage: StorageConfig::default(),
            topics: topics.map(Path::to_path_buf),
            tls: None,
        };
        let text = toml::to_string_pretty(&f).map_err(std::io::Error::other)?;
        std::fs::write(path, text)
    }
}
