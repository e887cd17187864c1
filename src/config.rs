//! Configuration: the region topology (`regions/*.toml`) and one node's
//! settings (`config/*.toml`).
//!
//! Loading never panics. Every problem is reported with the file, the key and
//! the reason, and all problems of a file are reported at once, so an operator
//! fixes a file in one pass instead of one error per restart.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::ids::{valid_name, NodeId};

/// One problem found in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub path: PathBuf,
    /// Dotted key, e.g. `region[0].node[1].kafka`; empty for whole-file errors.
    pub key: String,
    pub reason: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.path.display(), self.reason)
        } else {
            write!(f, "{}: {}: {}", self.path.display(), self.key, self.reason)
        }
    }
}

/// All problems found while loading configuration.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub problems: Vec<ConfigProblem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        writeln!(
            f,
            "invalid configuration ({n} problem{}):",
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            writeln!(f, "  {p}")?;
        }
        Ok(())
    }
}

impl ConfigError {
    fn one(path: &Path, key: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError {
            problems: vec![ConfigProblem {
                path: path.to_path_buf(),
                key: key.into(),
                reason: reason.into(),
            }],
        }
    }
}

/// Collects problems for one file.
struct Problems<'a> {
    path: &'a Path,
    list: Vec<ConfigProblem>,
}

impl<'a> Problems<'a> {
    fn new(path: &'a Path) -> Self {
        Problems {
            path,
            list: Vec::new(),
        }
    }
    fn add(&mut self, key: impl Into<String>, reason: impl Into<String>) {
        self.list.push(ConfigProblem {
            path: self.path.to_path_buf(),
            key: key.into(),
            reason: reason.into(),
        });
    }
    fn finish(self) -> Result<(), ConfigError> {
        if self.list.is_empty() {
            Ok(())
        } else {
            Err(ConfigError {
                problems: self.list,
            })
        }
    }
}

fn read_toml<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::one(
            path,
            "",
            format!("cannot read the file: {e}; check the path and its permissions"),
        )
    })?;
    parse_toml(path, &text)
}

fn parse_toml<T: for<'de> Deserialize<'de>>(path: &Path, text: &str) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| {
        // toml's message names the line, column and key, e.g.
        // "unknown field `kafak`, expected one of `id`, `quic`, ...".
        let key = e
            .span()
            .map(|s| {
                let line = text[..s.start].matches('\n').count() + 1;
                format!("line {line}")
            })
            .unwrap_or_default();
        ConfigError::one(path, key, e.message().trim().to_string())
    })
}

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

// ---------------------------------------------------------------------------
// Topology
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// Node configuration
// ---------------------------------------------------------------------------

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
    /// Topics to create at start (docs/replication.md#topics-file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    topics: Option<PathBuf>,
    #[serde(default)]
    tls: Option<TlsConfig>,
}

/// Kafka listener limits.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Largest request frame accepted; larger ones close the connection.
    pub request_bytes_max: u32,
    /// Largest record batch accepted in a produce request (MESSAGE_TOO_LARGE above).
    pub batch_bytes_max: u32,
    /// What one partition's batches in a produce request may decompress to
    /// (MESSAGE_TOO_LARGE above); decompression stops the moment it passes.
    pub batch_uncompressed_bytes_max: u32,
    /// Produce batches decoded at once off the async workers (compressed
    /// or large ones); more wait their turn.
    pub decode_concurrency_max: u32,
    /// Client connections open at once; a connection past it is accepted
    /// and closed at once, with a log line.
    pub connections_max: u32,
    /// Client connections open at once from one IP address (as Kafka's
    /// `max.connections.per.ip`); past it, accepted and closed.
    pub connections_per_ip_max: u32,
    /// A connection without a request for this long is closed (Kafka's
    /// `connections.max.idle.ms`).
    pub connections_max_idle_ms: u64,
    /// A response not taken by the client within this long closes the
    /// connection (a client that stopped reading).
    pub write_timeout_ms: u64,
    /// A request must arrive whole within this long of its length (a
    /// client that trickles a request holds its bytes of the budget).
    pub request_read_timeout_ms: u64,
    /// Bytes of requests and responses held in memory at once, over all
    /// connections; a connection whose next request does not fit waits.
    pub in_flight_bytes_max: u64,
    /// Requests of one connection processed concurrently (pipelining).
    pub in_flight_requests_max: u32,
    /// Bytes of one connection's decoded fetches and built responses
    /// waiting for their turn behind an earlier response (outside
    /// `in_flight_bytes_max`); at or past it the connection stops reading.
    pub connection_queued_bytes_max: u64,
    /// TCP keepalive on client connections: the first probe after this
    /// long without traffic.
    pub tcp_keepalive_time_ms: u64,
    /// TCP keepalive: probes this far apart after the first.
    pub tcp_keepalive_interval_ms: u64,
    /// Log lines a second, at most, for what any client can cause at will
    /// (bad requests, refused connections); the rest are counted.
    pub client_log_lines_per_sec: u32,
    /// Upper bound on a fetch's long-poll wait, whatever the client asks.
    pub fetch_wait_ms_max: u64,
    /// Upper bound on the bytes of one fetch response.
    pub fetch_bytes_max: u32,
    /// Upper bound on a produce's wait for the commit, whatever the client asks.
    pub produce_timeout_ms_max: u64,
    /// Create a topic when a client asks for metadata of an unknown one and
    /// allows creation (as Kafka's `auto.create.topics.enable`).
    pub auto_create_topics: bool,
    /// Partitions of auto-created topics and of CreateTopics with -1.
    pub default_partitions: u32,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            request_bytes_max: 100 * 1024 * 1024,
            batch_bytes_max: 4 * 1024 * 1024,
            batch_uncompressed_bytes_max: 4 * 1024 * 1024,
            decode_concurrency_max: 2,
            connections_max: 1024,
            connections_per_ip_max: 256,
            connections_max_idle_ms: 600_000,
            write_timeout_ms: 30_000,
            request_read_timeout_ms: 30_000,
            in_flight_bytes_max: 256 * 1024 * 1024,
            in_flight_requests_max: 64,
            connection_queued_bytes_max: 1024 * 1024,
            tcp_keepalive_time_ms: 60_000,
            tcp_keepalive_interval_ms: 10_000,
            client_log_lines_per_sec: 20,
            fetch_wait_ms_max: 30_000,
            fetch_bytes_max: 50 * 1024 * 1024,
            produce_timeout_ms_max: 30_000,
            auto_create_topics: true,
            default_partitions: 1,
        }
    }
}

/// Raft timing and batching.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RaftConfig {
    pub heartbeat_ms: u64,
    pub election_timeout_ms_min: u64,
    pub election_timeout_ms_max: u64,
    /// Entries per AppendEntries RPC.
    pub payload_entries_max: u64,
    /// Bytes per AppendEntries RPC (at least one entry is always sent):
    /// the RPC must fit `transport.frame_bytes_max` and its deadline (the
    /// heartbeat interval).
    pub append_bytes_max: u64,
    /// Largest Raft entry a produce may create, as stored (records after
    /// decompression, with Meridian's headers): MESSAGE_TOO_LARGE above.
    pub entry_bytes_max: u64,
    /// The metadata group snapshots its state and purges its log every this
    /// many entries (lease renewals add about one per node and second).
    pub meta_snapshot_entries: u64,
    /// Each node looks this often for a partition it leads that belongs
    /// to another node (`raft::balance`), and hands over at most one; 0
    /// turns leadership balancing off.
    pub balance_interval_ms: u64,
    /// Each Raft group keeps its newest entries in memory for its
    /// followers and its state machine: at most this many...
    pub log_cache_entries_max: u64,
    /// ...and at most this many bytes (every entry counted by its encoded
    /// size; the newest entry is kept even if larger).
    pub log_cache_bytes_max: u64,
}

impl Default for RaftConfig {
    fn default() -> Self {
        RaftConfig {
            // openraft 0.9 gives every AppendEntries the heartbeat interval as
            // its deadline: it must cover a full payload on a busy node.
            heartbeat_ms: 200,
            election_timeout_ms_min: 800,
            election_timeout_ms_max: 1600,
            payload_entries_max: 16,
            append_bytes_max: 16 * 1024 * 1024,
            entry_bytes_max: 8 * 1024 * 1024,
            meta_snapshot_entries: 10_000,
            balance_interval_ms: 5_000,
            log_cache_entries_max: 256,
            log_cache_bytes_max: 4 * 1024 * 1024,
        }
    }
}

/// The longest TCP keepalive time or interval Linux takes (32767 s).
pub const TCP_KEEPALIVE_MS_MAX: u64 = 32_767_000;

/// The longest `transport.idle_timeout_ms`.
pub const IDLE_TIMEOUT_MS_MAX: u64 = 600_000;

/// QUIC transport limits.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TransportConfig {
    pub frame_bytes_max: u32,
    pub connect_timeout_ms: u64,
    pub rpc_timeout_ms: u64,
    pub streams_max: u32,
    /// A connection whose peer sent nothing (not even a keep-alive, sent
    /// every quarter of this) for this long is closed, and the calls in
    /// flight on it fail at once: a SIGKILLed or cut-off node is noticed
    /// after this rather than after each call's whole deadline.
    pub idle_timeout_ms: u64,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            frame_bytes_max: 256 * 1024 * 1024,
            connect_timeout_ms: 2_000,
            rpc_timeout_ms: 5_000,
            streams_max: 512,
            idle_timeout_ms: 1_500,
        }
    }
}

/// The cross-region link.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct LinkConfig {
    /// Largest copy of one origin log sent in one request (at least one
    /// batch is always sent).
    pub batch_bytes_max: u32,
    /// An idle partition's leader publishes a closed timestamp this often,
    /// so that other origins' records become visible in the global view.
    pub close_interval_ms: u64,
    /// ... and this often while no origin has written to it for this long
    /// and no record waits for the view (each close is a Raft commit and a
    /// copy to every other region).
    pub idle_close_interval_ms: u64,
    /// Records whose HLC is further ahead of this node's clock are refused
    /// and reported, never absorbed.
    pub clock_drift_ms_max: u64,
    /// Longest wait between retries of a failed copy.
    pub retry_backoff_ms_max: u64,
    /// Bytes of copies to one region that may be unacknowledged at once, per
    /// partition (at least one copy is always in flight): copies are
    /// pipelined, so a record does not wait for the previous copy's round trip.
    pub in_flight_bytes_max: u64,
    /// Copies to one region that may be unacknowledged at once, per partition.
    pub in_flight_requests_max: u32,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            batch_bytes_max: 1024 * 1024,
            close_interval_ms: 100,
            idle_close_interval_ms: 1_000,
            clock_drift_ms_max: 500,
            retry_backoff_ms_max: 2_000,
            in_flight_bytes_max: 8 * 1024 * 1024,
            in_flight_requests_max: 32,
        }
    }
}

/// The cross-region control plane: region write leases (invariant 6).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// A region may accept writes for this long after a renewal commits
    /// (less `link.clock_drift_ms_max`, the clock margin). A region cut off
    /// from the others stops accepting writes within this time.
    pub lease_ms: u64,
    /// A region renews its lease this often.
    pub renew_ms: u64,
    /// Fail a region over once its lease has expired: seal its origin logs
    /// so the global view goes on without it (docs/disaster-recovery.md).
    /// With `false` a lost region's topics wait for it (writers = all: their
    /// view stalls) until it returns.
    pub failover: bool,
    /// The metadata group's Raft heartbeat. The group spans the regions and
    /// openraft 0.9 gives each AppendEntries the heartbeat as its deadline,
    /// so it must exceed the largest round trip between regions.
    pub meta_heartbeat_ms: u64,
    /// The metadata group's election timeouts. openraft alone campaigns
    /// `meta_election_timeout_ms_max` (its leader lease) plus a random
    /// timeout in this range after it last heard from its leader; the
    /// pre-vote (`raft::prevote`) calls the election once the lease has run
    /// out, so a lost metadata leader is replaced about the maximum plus a
    /// vote after it was last heard, and within twice the maximum anyway.
    pub meta_election_timeout_ms_min: u64,
    pub meta_election_timeout_ms_max: u64,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            lease_ms: 3_500,
            renew_ms: 500,
            failover: true,
            meta_heartbeat_ms: 200,
            meta_election_timeout_ms_min: 500,
            meta_election_timeout_ms_max: 1_000,
        }
    }
}

/// Consumer groups (docs/consumers.md): the coordinator's limits and the
/// internal topic that carries committed offsets.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct GroupsConfig {
    /// Partitions of `__consumer_offsets`, used when the first group
    /// request creates it (later changes do not repartition it). Each
    /// partition is a Raft group per region; its leader coordinates the
    /// groups that hash to it.
    pub offsets_partitions: u32,
    /// A new group waits this long for more members before its first
    /// generation, as Kafka's `group.initial.rebalance.delay.ms`.
    pub initial_rebalance_delay_ms: u64,
    /// Session timeouts a member may ask for (Kafka's
    /// `group.min.session.timeout.ms`, `group.max.session.timeout.ms`).
    pub session_timeout_ms_min: u64,
    pub session_timeout_ms_max: u64,
    /// Members of one group, at most (GROUP_MAX_SIZE_REACHED above).
    pub max_size: u32,
    /// Largest `metadata` string an offset commit may carry
    /// (OFFSET_METADATA_TOO_LARGE above; Kafka's `offset.metadata.max.bytes`).
    pub offset_metadata_bytes_max: u32,
    /// Upper bound on an OffsetCommit's wait for its record to commit
    /// (and, for a commit of a `sync` topic, to reach the other regions).
    pub commit_timeout_ms: u64,
    /// A coordinator with members renews its group's presence record this
    /// often, so that members connecting to other regions meet here
    /// (docs/consumers.md#one-group-across-regions).
    pub presence_renew_ms: u64,
    /// Another region's presence not renewed for this long no longer draws
    /// members there (its region or coordinator is gone).
    pub presence_ttl_ms: u64,
}

impl Default for GroupsConfig {
    fn default() -> Self {
        GroupsConfig {
            offsets_partitions: 4,
            initial_rebalance_delay_ms: 3_000,
            session_timeout_ms_min: 6_000,
            session_timeout_ms_max: 1_800_000,
            max_size: 1_000,
            offset_metadata_bytes_max: 4_096,
            commit_timeout_ms: 10_000,
            presence_renew_ms: 2_000,
            presence_ttl_ms: 10_000,
        }
    }
}

/// The node's async runtime.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Worker threads; 0 means one per CPU core. Nodes that share a machine
    /// (as in `meridian dev`) do better with their share of the cores: fewer
    /// threads, fewer cross-thread wake-ups per request.
    pub worker_threads: usize,
}

/// The admin HTTP port: what it lets a caller change.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Serve `POST /faults` (simulated cuts, loss, delay and clock skew).
    /// Off by default: a skewed clock poisons HLCs for good. `meridian dev`
    /// and `meridian chaos` turn it on for the clusters they start.
    pub faults: bool,
    /// Bearer token that every mutating admin request must carry
    /// (`Authorization: Bearer <token>`); required when `faults` is on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// Shortest admin token accepted: guessing it must be hopeless.
pub const ADMIN_TOKEN_LEN_MIN: usize = 16;

/// Mutual TLS between nodes. Without this section a development CA is
/// generated (see `dev_ca_dir`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub ca_cert: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
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
    /// Topics this node creates at start unless they exist.
    pub topics: Vec<TopicDecl>,
    pub topics_path: Option<PathBuf>,
    pub tls: Option<TlsConfig>,
}

/// Room an RPC's own fields take in a transport frame, beside its entries
/// or batches.
pub const RPC_OVERHEAD_BYTES: u64 = 64 * 1024;

/// How the size limits must nest so that everything a client may send can
/// also be stored, replicated in the region and copied to other regions:
/// a produce batch decompresses within `kafka.batch_uncompressed_bytes_max`,
/// which fits one Raft entry (`raft.entry_bytes_max`); an entry fits one
/// AppendEntries (`raft.append_bytes_max`), and so does a link copy (at most
/// `link.batch_bytes_max` plus the one batch that crosses it); an
/// AppendEntries fits one transport frame.
fn size_limit_problems(
    k: &KafkaConfig,
    r: &RaftConfig,
    t: &TransportConfig,
    l: &LinkConfig,
) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let (batch, uncompressed) = (
        k.batch_bytes_max as u64,
        k.batch_uncompressed_bytes_max as u64,
    );
    let largest = (k.request_bytes_max as u64).max(k.fetch_bytes_max as u64);
    if k.in_flight_bytes_max < largest {
        out.push((
            "kafka.in_flight_bytes_max",
            format!(
                "{} cannot hold one request of kafka.request_bytes_max ({}) or one fetch response of kafka.fetch_bytes_max ({}); raise it to at least {largest}",
                k.in_flight_bytes_max, k.request_bytes_max, k.fetch_bytes_max
            ),
        ));
    }
    if uncompressed < batch {
        out.push((
            "kafka.batch_uncompressed_bytes_max",
            format!(
                "{uncompressed} is smaller than kafka.batch_bytes_max ({batch}): an uncompressed batch of the allowed size would be refused; raise it"
            ),
        ));
    }
    if r.entry_bytes_max < uncompressed {
        out.push((
            "raft.entry_bytes_max",
            format!(
                "{} is smaller than kafka.batch_uncompressed_bytes_max ({uncompressed}): batches accepted at that limit could not be stored; raise it",
                r.entry_bytes_max
            ),
        ));
    }
    let copy = (l.batch_bytes_max as u64).saturating_add(r.entry_bytes_max);
    if r.append_bytes_max < copy {
        out.push((
            "raft.append_bytes_max",
            format!(
                "{} cannot carry a link copy of link.batch_bytes_max ({}) plus one entry of raft.entry_bytes_max ({}); raise it to at least {copy} or lower those",
                r.append_bytes_max, l.batch_bytes_max, r.entry_bytes_max
            ),
        ));
    }
    let frame = r.append_bytes_max.saturating_add(RPC_OVERHEAD_BYTES);
    if (t.frame_bytes_max as u64) < frame {
        out.push((
            "transport.frame_bytes_max",
            format!(
                "{} cannot carry an AppendEntries of raft.append_bytes_max ({}) bytes; raise it to at least {frame} or lower raft.append_bytes_max",
                t.frame_bytes_max, r.append_bytes_max
            ),
        ));
    }
    out
}

/// A Raft group's timing: `prefix` names the settings (`raft.` or
/// `control.meta_`).
fn check_raft_timing(p: &mut Problems, prefix: &str, hb: u64, min: u64, max: u64) {
    if hb == 0 {
        p.add(format!("{prefix}heartbeat_ms"), "must be at least 1");
    }
    if min <= hb * 2 {
        p.add(
            format!("{prefix}election_timeout_ms_min"),
            format!(
                "{min} must be more than twice {prefix}heartbeat_ms ({hb}), or followers start elections while the leader is healthy"
            ),
        );
    }
    if max <= min {
        p.add(
            format!("{prefix}election_timeout_ms_max"),
            format!("{max} must be larger than {prefix}election_timeout_ms_min ({min})"),
        );
    }
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
        let r = &f.raft;
        let c = &f.control;
        for (prefix, hb, min, max) in [
            (
                "raft.",
                r.heartbeat_ms,
                r.election_timeout_ms_min,
                r.election_timeout_ms_max,
            ),
            (
                "control.meta_",
                c.meta_heartbeat_ms,
                c.meta_election_timeout_ms_min,
                c.meta_election_timeout_ms_max,
            ),
        ] {
            check_raft_timing(&mut p, prefix, hb, min, max);
        }
        if r.meta_snapshot_entries < 10 {
            p.add(
                "raft.meta_snapshot_entries",
                format!("{} is below 10", r.meta_snapshot_entries),
            );
        }
        let g = &f.groups;
        if g.session_timeout_ms_min == 0 || g.session_timeout_ms_min > g.session_timeout_ms_max {
            p.add(
                "groups.session_timeout_ms_min",
                format!(
                    "{} must be at least 1 and at most groups.session_timeout_ms_max ({})",
                    g.session_timeout_ms_min, g.session_timeout_ms_max
                ),
            );
        }
        for (key, v) in [
            ("groups.max_size", g.max_size as u64),
            ("groups.commit_timeout_ms", g.commit_timeout_ms),
        ] {
            if v == 0 {
                p.add(key, "must be at least 1");
            }
        }
        if !(100..=60_000).contains(&g.presence_renew_ms) {
            p.add(
                "groups.presence_renew_ms",
                format!("{} is out of range (100 to 60000)", g.presence_renew_ms),
            );
        }
        if g.presence_ttl_ms < 2 * g.presence_renew_ms {
            p.add(
                "groups.presence_ttl_ms",
                format!(
                    "{} must be at least twice groups.presence_renew_ms ({}), or one late renewal moves the group",
                    g.presence_ttl_ms, g.presence_renew_ms
                ),
            );
        }
        if r.payload_entries_max == 0 {
            p.add("raft.payload_entries_max", "must be at least 1");
        }
        let k = &f.kafka;
        for (key, n) in [
            ("kafka.default_partitions", k.default_partitions),
            ("groups.offsets_partitions", g.offsets_partitions),
        ] {
            if n == 0 || n > crate::meta::PARTITIONS_MAX {
                p.add(
                    key,
                    format!("{n} is out of range (1 to {})", crate::meta::PARTITIONS_MAX),
                );
            }
        }
        if k.batch_bytes_max > k.request_bytes_max {
            p.add(
                "kafka.batch_bytes_max",
                format!(
                    "{} is larger than kafka.request_bytes_max ({}); a batch must fit in a request",
                    k.batch_bytes_max, k.request_bytes_max
                ),
            );
        }
        for (key, v) in [
            (
                "kafka.batch_uncompressed_bytes_max",
                k.batch_uncompressed_bytes_max as u64,
            ),
            (
                "kafka.decode_concurrency_max",
                k.decode_concurrency_max as u64,
            ),
            ("kafka.connections_max", k.connections_max as u64),
            (
                "kafka.connections_per_ip_max",
                k.connections_per_ip_max as u64,
            ),
            ("kafka.connections_max_idle_ms", k.connections_max_idle_ms),
            ("kafka.write_timeout_ms", k.write_timeout_ms),
            ("kafka.request_read_timeout_ms", k.request_read_timeout_ms),
            (
                "kafka.in_flight_requests_max",
                k.in_flight_requests_max as u64,
            ),
            (
                "kafka.connection_queued_bytes_max",
                k.connection_queued_bytes_max,
            ),
            (
                "kafka.client_log_lines_per_sec",
                k.client_log_lines_per_sec as u64,
            ),
            ("kafka.request_bytes_max", k.request_bytes_max as u64),
            (
                "transport.frame_bytes_max",
                f.transport.frame_bytes_max as u64,
            ),
            ("transport.rpc_timeout_ms", f.transport.rpc_timeout_ms),
            (
                "transport.connect_timeout_ms",
                f.transport.connect_timeout_ms,
            ),
            ("transport.streams_max", f.transport.streams_max as u64),
            ("transport.idle_timeout_ms", f.transport.idle_timeout_ms),
            ("link.batch_bytes_max", f.link.batch_bytes_max as u64),
            ("link.close_interval_ms", f.link.close_interval_ms),
            ("link.idle_close_interval_ms", f.link.idle_close_interval_ms),
            ("link.clock_drift_ms_max", f.link.clock_drift_ms_max),
            ("link.retry_backoff_ms_max", f.link.retry_backoff_ms_max),
            ("link.in_flight_bytes_max", f.link.in_flight_bytes_max),
            (
                "link.in_flight_requests_max",
                f.link.in_flight_requests_max as u64,
            ),
        ] {
            if v == 0 {
                p.add(key, "must be at least 1");
            }
        }
        if f.transport.idle_timeout_ms > IDLE_TIMEOUT_MS_MAX {
            p.add(
                "transport.idle_timeout_ms",
                format!(
                    "{} is more than {IDLE_TIMEOUT_MS_MAX} (10 minutes), and a dead peer would hold its calls that long; set at most {IDLE_TIMEOUT_MS_MAX} (the default is 1500)",
                    f.transport.idle_timeout_ms
                ),
            );
        }
        for (key, v) in [
            ("kafka.tcp_keepalive_time_ms", k.tcp_keepalive_time_ms),
            (
                "kafka.tcp_keepalive_interval_ms",
                k.tcp_keepalive_interval_ms,
            ),
        ] {
            if !(1_000..=TCP_KEEPALIVE_MS_MAX).contains(&v) || v % 1_000 != 0 {
                p.add(
                    key,
                    format!("{v} is not whole seconds from 1000 to {TCP_KEEPALIVE_MS_MAX} (TCP counts keepalive in whole seconds, at most 32767)"),
                );
            }
        }
        for (key, v) in [
            ("raft.append_bytes_max", r.append_bytes_max),
            ("raft.entry_bytes_max", r.entry_bytes_max),
            ("raft.log_cache_entries_max", r.log_cache_entries_max),
            ("raft.log_cache_bytes_max", r.log_cache_bytes_max),
        ] {
            if v == 0 {
                p.add(key, "must be at least 1");
            }
        }
        for (key, why) in size_limit_problems(k, r, &f.transport, &f.link) {
            p.add(key, why);
        }
        match &f.admin.token {
            Some(t)
                if t.len() < ADMIN_TOKEN_LEN_MIN || t.chars().any(|c| !c.is_ascii_graphic()) =>
            {
                p.add(
                    "admin.token",
                    format!(
                        "must be at least {ADMIN_TOKEN_LEN_MIN} printable ASCII characters without spaces (try `openssl rand -hex 16`)"
                    ),
                );
            }
            None if f.admin.faults => p.add(
                "admin.faults",
                "fault injection needs admin.token: set one, or turn admin.faults off",
            ),
            _ => {}
        }
        let topology_path = resolve(&f.topology);
        let topology = match Topology::load(&topology_path) {
            Ok(t) => Some(t),
            Err(e) => {
                p.add("topology", cannot_use("topology", &topology_path, &e));
                None
            }
        };
        if f.node_id <= 0 {
            p.add(
                "node_id",
                format!("must be a positive integer, got {}", f.node_id),
            );
        } else if let Some(t) = &topology {
            if t.node(f.node_id as NodeId).is_none() {
                p.add(
                    "node_id",
                    format!(
                        "node {} is in no region of {}; add it as a [[region.node]] there",
                        f.node_id,
                        topology_path.display()
                    ),
                );
            }
        }
        // The metadata group spans the regions, and openraft 0.9 gives each
        // AppendEntries the heartbeat interval as its deadline: a round trip
        // at or above it would keep the group from ever replicating.
        if let Some(t) = &topology {
            if let Some(((a, b), ms)) = t.rtt_ms.iter().max_by_key(|(_, ms)| **ms) {
                if *ms + 50 > c.meta_heartbeat_ms {
                    p.add(
                        "control.meta_heartbeat_ms",
                        format!(
                            "{} is too short for the {ms} ms round trip between {a} and {b} in {}: \
                             the metadata group spans regions and each AppendEntries must finish \
                             within a heartbeat; use at least {}",
                            c.meta_heartbeat_ms,
                            topology_path.display(),
                            ms + 50
                        ),
                    );
                }
            }
        }
        let margin = f.link.clock_drift_ms_max;
        // A renewal lands up to renew_ms after the last one; if the metadata
        // leader is lost then (with its region), the others' renewals wait
        // for a new one: openraft's leader lease plus an election timeout.
        let election_ms = 2 * c.meta_election_timeout_ms_max;
        if c.renew_ms == 0 {
            p.add("control.renew_ms", "must be at least 1");
        } else if c.lease_ms < 2 * c.renew_ms + margin {
            p.add(
                "control.lease_ms",
                format!(
                    "{} leaves no room to renew: it must be at least twice control.renew_ms ({}) \
                     plus the clock margin link.clock_drift_ms_max ({margin})",
                    c.lease_ms, c.renew_ms
                ),
            );
        } else if topology.as_ref().is_some_and(|t| t.regions.len() > 1)
            && c.lease_ms < c.renew_ms + election_ms + margin
        {
            p.add(
                "control.lease_ms",
                format!(
                    "{} would fence every region while the metadata group elects a new leader: \
                     use at least control.renew_ms ({}) + twice \
                     control.meta_election_timeout_ms_max ({election_ms}) \
                     + link.clock_drift_ms_max ({margin}), and some room for the vote",
                    c.lease_ms, c.renew_ms
                ),
            );
        }
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
            topics: topics.map(Path::to_path_buf),
            tls: None,
        };
        let text = toml::to_string_pretty(&f).map_err(std::io::Error::other)?;
        std::fs::write(path, text)
    }
}

/// A topic declared in a topics file, as `[[topic]]`: created at start
/// unless it exists. The `meridian.*` keys have short names here; other
/// topic configs go in `configs`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TopicDecl {
    pub name: String,
    pub partitions: u32,
    /// Regions that hold the topic (default: every region).
    #[serde(default)]
    pub regions: Option<Vec<String>>,
    /// `all` or `home:<region>`.
    #[serde(default)]
    pub writers: Option<String>,
    /// `async` or `sync`.
    #[serde(default)]
    pub replication: Option<String>,
    #[serde(default)]
    pub sync_quorum: Option<u32>,
    #[serde(default)]
    pub rpo_max_ms: Option<u64>,
    /// Any other topic config, by its Kafka name.
    #[serde(default)]
    pub configs: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TopicsFile {
    #[serde(default)]
    topic: Vec<TopicDecl>,
}

impl TopicDecl {
    /// The topic configs this declaration stands for.
    pub fn configs(&self) -> std::collections::BTreeMap<String, String> {
        use crate::meta::{
            KEY_REGIONS, KEY_REPLICATION, KEY_RPO_MAX_MS, KEY_SYNC_QUORUM, KEY_WRITERS,
        };
        let mut c = self.configs.clone();
        if let Some(r) = &self.regions {
            c.insert(KEY_REGIONS.into(), r.join(","));
        }
        let mut put = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                c.insert(k.into(), v);
            }
        };
        put(KEY_WRITERS, self.writers.clone());
        put(KEY_REPLICATION, self.replication.clone());
        put(KEY_SYNC_QUORUM, self.sync_quorum.map(|q| q.to_string()));
        put(KEY_RPO_MAX_MS, self.rpo_max_ms.map(|m| m.to_string()));
        c
    }

    /// Reads and checks a topics file against the topology's regions, with
    /// every problem named by topic and key.
    pub fn load(path: &Path, regions: &[String]) -> Result<Vec<TopicDecl>, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::one(
                path,
                "",
                format!("cannot read the file: {e}; check the path and its permissions"),
            )
        })?;
        Self::parse(path, &text, regions)
    }

    pub fn parse(
        path: &Path,
        text: &str,
        regions: &[String],
    ) -> Result<Vec<TopicDecl>, ConfigError> {
        let file: TopicsFile = parse_toml(path, text)?;
        let mut p = Problems::new(path);
        let mut seen = std::collections::BTreeSet::new();
        for (i, t) in file.topic.iter().enumerate() {
            let at = format!("topic[{i}] ({})", t.name);
            if !seen.insert(t.name.clone()) {
                p.add(at.clone(), "declared twice; keep one [[topic]] per name");
            }
            let configs = t.configs();
            let checked = crate::meta::validate_create(&t.name, t.partitions as i64, &configs)
                .and_then(|_| crate::meta::validate_policy(&configs, regions));
            if let Err(e) = checked {
                p.add(at, e.to_string());
            }
        }
        p.finish()?;
        Ok(file.topic)
    }
}

/// A node config problem that is another file's problems, one per line.
fn cannot_use(what: &str, path: &Path, e: &ConfigError) -> String {
    let lines: Vec<String> = e.problems.iter().map(|x| x.to_string()).collect();
    format!(
        "cannot use {what} file {}:\n    {}",
        path.display(),
        lines.join("\n    ")
    )
}

pub fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[[region]]
name = "us-east"
[[region.node]]
id = 1
quic = "127.0.0.1:7001"
kafka = "127.0.0.1:9001"
admin = "127.0.0.1:8001"
[[region.node]]
id = 2
quic = "127.0.0.1:7002"
kafka = "127.0.0.1:9002"
admin = "127.0.0.1:8002"

[[region]]
name = "eu-west"
[[region.node]]
id = 3
quic = "127.0.0.1:7003"
kafka = "127.0.0.1:9003"
admin = "127.0.0.1:8003"

[[rtt]]
a = "us-east"
b = "eu-west"
ms = 80
"#;

    fn topo(text: &str) -> Result<Topology, ConfigError> {
        Topology::parse(Path::new("t.toml"), text)
    }

    #[test]
    fn the_default_size_limits_nest_and_each_broken_rule_names_its_key() {
        let (k, r, t, l) = (
            KafkaConfig::default(),
            RaftConfig::default(),
            TransportConfig::default(),
            LinkConfig::default(),
        );
        assert!(size_limit_problems(&k, &r, &t, &l).is_empty());
        let keys = |k: &KafkaConfig, r: &RaftConfig, t: &TransportConfig, l: &LinkConfig| {
            size_limit_problems(k, r, t, l)
                .into_iter()
                .map(|(key, _)| key)
                .collect::<Vec<_>>()
        };
        let mut k2 = k.clone();
        k2.batch_uncompressed_bytes_max = k.batch_bytes_max - 1;
        assert_eq!(
            keys(&k2, &r, &t, &l),
            ["kafka.batch_uncompressed_bytes_max"]
        );
        let mut r2 = r.clone();
        r2.entry_bytes_max = k.batch_uncompressed_bytes_max as u64 - 1;
        assert_eq!(keys(&k, &r2, &t, &l), ["raft.entry_bytes_max"]);
        let mut l2 = l.clone();
        l2.batch_bytes_max = (r.append_bytes_max - r.entry_bytes_max + 1) as u32;
        assert_eq!(keys(&k, &r, &t, &l2), ["raft.append_bytes_max"]);
        let mut t2 = t.clone();
        t2.frame_bytes_max = r.append_bytes_max as u32;
        assert_eq!(keys(&k, &r, &t2, &l), ["transport.frame_bytes_max"]);
    }

    #[test]
    fn good_topology_loads() {
        let t = topo(GOOD).unwrap();
        assert_eq!(t.regions.len(), 2);
        assert_eq!(t.node(3).unwrap().region, "eu-west");
        assert_eq!(t.rtt_ms("eu-west", "us-east"), Some(80));
    }

    #[test]
    fn unknown_key_names_line_and_field() {
        let text = GOOD.replace("admin = \"127.0.0.1:8003\"", "admn = \"127.0.0.1:8003\"");
        let e = topo(&text).unwrap_err();
        let s = e.to_string();
        assert!(s.contains("t.toml"), "{s}");
        assert!(s.contains("unknown field `admn`"), "{s}");
        assert!(s.contains("line 21"), "{s}");
    }

    #[test]
    fn node_ids_must_fit_in_producer_ids() {
        let e = topo(&GOOD.replace("id = 3", "id = 70000")).unwrap_err();
        assert_eq!(e.problems[0].key, "region[1].node[0].id", "{e}");
        assert!(e.problems[0].reason.contains("from 1 to 65535"), "{e}");
    }

    #[test]
    fn duplicate_id_and_address_clash_are_both_reported() {
        let text = GOOD
            .replace("id = 3", "id = 2")
            .replace("127.0.0.1:9003", "127.0.0.1:9001");
        let e = topo(&text).unwrap_err();
        assert_eq!(e.problems.len(), 2, "{e}");
        assert_eq!(e.problems[0].key, "region[1].node[0].id");
        assert!(e.problems[0].reason.contains("duplicate node id 2"));
        assert_eq!(e.problems[1].key, "region[1].node[0].kafka");
        assert!(e.problems[1]
            .reason
            .contains("already used by region[0].node[0].kafka"));
    }

    #[test]
    fn bad_address_and_unknown_rtt_region() {
        let text = GOOD
            .replace("127.0.0.1:8002", "localhost-8002")
            .replace("b = \"eu-west\"", "b = \"ap-south\"");
        let e = topo(&text).unwrap_err();
        let keys: Vec<_> = e.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["region[0].node[1].admin", "rtt[0].b"], "{e}");
    }

    #[test]
    fn topics_file_maps_short_keys_to_topic_configs() {
        let regions = ["us-east".to_string(), "eu-west".to_string()];
        let text = r#"
[[topic]]
name = "orders"
partitions = 6
regions = ["us-east", "eu-west"]
writers = "home:eu-west"
replication = "sync"
sync_quorum = 2
rpo_max_ms = 500
configs = { "retention.ms" = "1000" }
"#;
        let t = TopicDecl::parse(Path::new("t.toml"), text, &regions).unwrap();
        let c = t[0].configs();
        assert_eq!(c["meridian.regions"], "us-east,eu-west");
        assert_eq!(c["meridian.writers"], "home:eu-west");
        assert_eq!(c["meridian.replication"], "sync");
        assert_eq!(c["meridian.sync.quorum"], "2");
        assert_eq!(c["meridian.rpo.max.ms"], "500");
        assert_eq!(c["retention.ms"], "1000");
        let quorum = text.replace("sync_quorum = 2", "sync_quorum = 3");
        let e = TopicDecl::parse(Path::new("t.toml"), &quorum, &regions).unwrap_err();
        assert!(e.to_string().contains("meridian.sync.quorum"), "{e}");
        let minimal = "[[topic]]\nname = \"a\"\npartitions = 1\n";
        let t = TopicDecl::parse(Path::new("t.toml"), minimal, &regions).unwrap();
        assert!(t[0].configs().is_empty(), "defaults come from the broker");
    }

    #[test]
    fn node_config_reports_node_in_no_region() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("topo.toml"), GOOD).unwrap();
        let path = dir.path().join("node.toml");
        let e = NodeConfig::parse(
            &path,
            "node_id = 9\ntopology = \"topo.toml\"\ndata_dir = \"d\"\n",
        )
        .unwrap_err();
        assert_eq!(e.problems.len(), 1, "{e}");
        assert_eq!(e.problems[0].key, "node_id");
        assert!(e.problems[0].reason.contains("node 9 is in no region"));
    }

    #[test]
    fn node_config_checks_raft_timing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("topo.toml"), GOOD).unwrap();
        let path = dir.path().join("node.toml");
        let e = NodeConfig::parse(
            &path,
            "node_id = 1\ntopology = \"topo.toml\"\ndata_dir = \"d\"\n[raft]\nheartbeat_ms = 500\n",
        )
        .unwrap_err();
        assert_eq!(e.problems[0].key, "raft.election_timeout_ms_min", "{e}");
        // A heartbeat the simulated round trips do not fit in.
        std::fs::write(
            dir.path().join("topo.toml"),
            GOOD.replace("ms = 80", "ms = 400"),
        )
        .unwrap();
        let e = NodeConfig::parse(
            &path,
            "node_id = 1\ntopology = \"topo.toml\"\ndata_dir = \"d\"\n",
        )
        .unwrap_err();
        assert_eq!(e.problems[0].key, "control.meta_heartbeat_ms", "{e}");
        assert!(e.to_string().contains("use at least 450"), "{e}");
        // A lease shorter than a metadata leader election.
        std::fs::write(dir.path().join("topo.toml"), GOOD).unwrap();
        let e = NodeConfig::parse(
            &path,
            "node_id = 1\ntopology = \"topo.toml\"\ndata_dir = \"d\"\n\
             [control]\nmeta_election_timeout_ms_max = 1600\n",
        )
        .unwrap_err();
        assert_eq!(e.problems[0].key, "control.lease_ms", "{e}");
        assert!(e.to_string().contains("elects a new leader"), "{e}");
        // The metadata group's own timing is checked like the partitions'.
        let e = NodeConfig::parse(
            &path,
            "node_id = 1\ntopology = \"topo.toml\"\ndata_dir = \"d\"\n\
             [control]\nmeta_election_timeout_ms_min = 300\n",
        )
        .unwrap_err();
        assert_eq!(
            e.problems[0].key, "control.meta_election_timeout_ms_min",
            "{e}"
        );
        assert!(
            e.to_string()
                .contains("more than twice control.meta_heartbeat_ms"),
            "{e}"
        );
    }

    #[test]
    fn connection_and_cache_limits_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("topo.toml"), GOOD).unwrap();
        let path = dir.path().join("node.toml");
        let base = "node_id = 1\ntopology = \"topo.toml\"\ndata_dir = \"d\"\n";
        let problems = |extra: &str| -> Vec<String> {
            NodeConfig::parse(&path, &format!("{base}{extra}"))
                .unwrap_err()
                .problems
                .into_iter()
                .map(|p| p.key)
                .collect()
        };
        assert_eq!(
            problems(
                "[kafka]\ntcp_keepalive_time_ms = 1500\ntcp_keepalive_interval_ms = 40000000\n\
                 connection_queued_bytes_max = 0\nclient_log_lines_per_sec = 0\n"
            ),
            [
                "kafka.connection_queued_bytes_max",
                "kafka.client_log_lines_per_sec",
                "kafka.tcp_keepalive_time_ms",
                "kafka.tcp_keepalive_interval_ms"
            ]
        );
        assert_eq!(
            problems("[raft]\nlog_cache_entries_max = 0\nlog_cache_bytes_max = 0\n"),
            ["raft.log_cache_entries_max", "raft.log_cache_bytes_max"]
        );
    }

    #[test]
    fn node_config_resolves_paths_relative_to_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("topo.toml"), GOOD).unwrap();
        let path = dir.path().join("node.toml");
        let c = NodeConfig::parse(
            &path,
            "node_id = 2\ntopology = \"topo.toml\"\ndata_dir = \"d2\"\n",
        )
        .unwrap();
        assert_eq!(c.data_dir, dir.path().join("d2"));
        assert_eq!(c.me().kafka.port(), 9002);
        assert_eq!(c.region().nodes.len(), 2);
    }

    #[test]
    fn the_example_config_loads_and_shows_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/node.example.toml");
        let c = NodeConfig::load(&path).unwrap();
        assert_eq!(c.kafka, KafkaConfig::default());
        assert_eq!(c.raft, RaftConfig::default());
        assert_eq!(c.transport, TransportConfig::default());
        assert_eq!(c.link, LinkConfig::default());
        assert_eq!(c.admin, AdminConfig::default());
    }

    #[test]
    fn fault_injection_is_off_by_default_and_needs_a_token() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("topo.toml"), GOOD).unwrap();
        let path = dir.path().join("node.toml");
        let base = "node_id = 2\ntopology = \"topo.toml\"\ndata_dir = \"d2\"\n";
        let c = NodeConfig::parse(&path, base).unwrap();
        assert_eq!(c.admin, AdminConfig::default());
        assert!(!c.admin.faults);
        let e = NodeConfig::parse(&path, &format!("{base}[admin]\nfaults = true\n")).unwrap_err();
        assert_eq!(e.problems[0].key, "admin.faults", "{e}");
        let e = NodeConfig::parse(
            &path,
            &format!("{base}[admin]\nfaults = true\ntoken = \"short\"\n"),
        )
        .unwrap_err();
        assert_eq!(e.problems[0].key, "admin.token", "{e}");
        let c = NodeConfig::parse(
            &path,
            &format!("{base}[admin]\nfaults = true\ntoken = \"0123456789abcdef\"\n"),
        )
        .unwrap();
        assert!(c.admin.faults);
    }

    #[test]
    fn written_config_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let topo_path = dir.path().join("topo.toml");
        std::fs::write(&topo_path, GOOD).unwrap();
        let path = dir.path().join("n1.toml");
        NodeConfig::write_file(
            &path,
            1,
            &topo_path,
            &dir.path().join("d1"),
            RuntimeConfig { worker_threads: 1 },
            None,
            AdminConfig {
                faults: true,
                token: Some("0123456789abcdef".into()),
            },
        )
        .unwrap();
        let c = NodeConfig::load(&path).unwrap();
        assert_eq!(c.node_id, 1);
        assert!(c.admin.faults);
        assert_eq!(c.kafka, KafkaConfig::default());
        assert_eq!(c.runtime.worker_threads, 1);
    }
}
