//! A node's settings, one struct per section of its config file, with
//! their defaults and documented limits. Checked in `validate.rs`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

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

/// The node's disk (docs/operations.md#disk-space).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Free bytes kept on the data directory's filesystem: below this the
    /// node refuses new writes from clients (KAFKA_STORAGE_ERROR, which
    /// clients retry) and goes on serving reads and replication; it takes
    /// writes again once free space is back above the reserve (plus a
    /// tenth of it, at most 64 MiB, so that it does not flap). 0 turns the
    /// reserve off.
    pub free_bytes_reserve: u64,
    /// How often the node reads its free space.
    pub free_check_interval_ms: u64,
    /// `retention.ms` of topics that do not set it (Kafka's
    /// `log.retention.ms`): records older than this leave the log; -1
    /// keeps them forever.
    pub retention_ms: i64,
    /// `retention.bytes` of topics that do not set it (Kafka's
    /// `log.retention.bytes`): the most a partition keeps, per region; -1
    /// for no limit.
    pub retention_bytes: i64,
    /// How often each partition leader applies retention (Kafka's
    /// `log.retention.check.interval.ms`).
    pub retention_check_interval_ms: u64,
}

/// Bounds of `storage.free_check_interval_ms`.
pub const FREE_CHECK_INTERVAL_MS: (u64, u64) = (100, 60_000);
/// Bounds of `storage.retention_check_interval_ms`.
pub const RETENTION_CHECK_INTERVAL_MS: (u64, u64) = (100, 3_600_000);

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            free_bytes_reserve: 1024 * 1024 * 1024,
            free_check_interval_ms: 1_000,
            retention_ms: 7 * 24 * 3600 * 1000,
            retention_bytes: -1,
            retention_check_interval_ms: 300_000,
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
