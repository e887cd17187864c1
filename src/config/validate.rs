//! The checks of a node config, one function per section, and those that
//! span sections (how the size limits nest, what the topology asks of the
//! metadata group's timing and of the leases). Each adds every problem it
//! finds; none stops at the first.

use std::path::Path;

use super::problems::Problems;
use super::settings::{
    AdminConfig, ControlConfig, GroupsConfig, KafkaConfig, LinkConfig, RaftConfig, StorageConfig,
    TransportConfig, ADMIN_TOKEN_LEN_MIN, FREE_CHECK_INTERVAL_MS, IDLE_TIMEOUT_MS_MAX,
    RETENTION_CHECK_INTERVAL_MS, TCP_KEEPALIVE_MS_MAX,
};
use super::topology::Topology;
use crate::ids::NodeId;

/// Room an RPC's own fields take in a transport frame, beside its entries
/// or batches.
pub const RPC_OVERHEAD_BYTES: u64 = 64 * 1024;

/// Adds "must be at least 1" for each key whose value is 0.
fn at_least_one(p: &mut Problems, values: &[(&str, u64)]) {
    for (key, v) in values {
        if *v == 0 {
            p.add(*key, "must be at least 1");
        }
    }
}

/// A partition count: 1 to `meta::PARTITIONS_MAX`.
fn check_partitions(p: &mut Problems, key: &str, n: u32) {
    if n == 0 || n > crate::meta::PARTITIONS_MAX {
        p.add(
            key,
            format!("{n} is out of range (1 to {})", crate::meta::PARTITIONS_MAX),
        );
    }
}

/// `raft.*`, and the metadata group's timing (`control.meta_*`), which
/// follows the same rules.
pub(super) fn check_raft(p: &mut Problems, r: &RaftConfig, c: &ControlConfig) {
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
        check_raft_timing(p, prefix, hb, min, max);
    }
    if r.meta_snapshot_entries < 10 {
        p.add(
            "raft.meta_snapshot_entries",
            format!("{} is below 10", r.meta_snapshot_entries),
        );
    }
    at_least_one(
        p,
        &[
            ("raft.payload_entries_max", r.payload_entries_max),
            ("raft.append_bytes_max", r.append_bytes_max),
            ("raft.entry_bytes_max", r.entry_bytes_max),
            ("raft.log_cache_entries_max", r.log_cache_entries_max),
            ("raft.log_cache_bytes_max", r.log_cache_bytes_max),
        ],
    );
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

/// `groups.*`.
pub(super) fn check_groups(p: &mut Problems, g: &GroupsConfig) {
    if g.session_timeout_ms_min == 0 || g.session_timeout_ms_min > g.session_timeout_ms_max {
        p.add(
            "groups.session_timeout_ms_min",
            format!(
                "{} must be at least 1 and at most groups.session_timeout_ms_max ({})",
                g.session_timeout_ms_min, g.session_timeout_ms_max
            ),
        );
    }
    at_least_one(
        p,
        &[
            ("groups.max_size", g.max_size as u64),
            ("groups.commit_timeout_ms", g.commit_timeout_ms),
        ],
    );
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
    check_partitions(p, "groups.offsets_partitions", g.offsets_partitions);
}

/// `kafka.*`.
pub(super) fn check_kafka(p: &mut Problems, k: &KafkaConfig) {
    check_partitions(p, "kafka.default_partitions", k.default_partitions);
    if k.batch_bytes_max > k.request_bytes_max {
        p.add(
            "kafka.batch_bytes_max",
            format!(
                "{} is larger than kafka.request_bytes_max ({}); a batch must fit in a request",
                k.batch_bytes_max, k.request_bytes_max
            ),
        );
    }
    at_least_one(
        p,
        &[
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
        ],
    );
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
}

/// `transport.*`.
pub(super) fn check_transport(p: &mut Problems, t: &TransportConfig) {
    at_least_one(
        p,
        &[
            ("transport.frame_bytes_max", t.frame_bytes_max as u64),
            ("transport.rpc_timeout_ms", t.rpc_timeout_ms),
            ("transport.connect_timeout_ms", t.connect_timeout_ms),
            ("transport.streams_max", t.streams_max as u64),
            ("transport.idle_timeout_ms", t.idle_timeout_ms),
        ],
    );
    if t.idle_timeout_ms > IDLE_TIMEOUT_MS_MAX {
        p.add(
            "transport.idle_timeout_ms",
            format!(
                "{} is more than {IDLE_TIMEOUT_MS_MAX} (10 minutes), and a dead peer would hold its calls that long; set at most {IDLE_TIMEOUT_MS_MAX} (the default is 1500)",
                t.idle_timeout_ms
            ),
        );
    }
}

/// `link.*`.
pub(super) fn check_link(p: &mut Problems, l: &LinkConfig) {
    at_least_one(
        p,
        &[
            ("link.batch_bytes_max", l.batch_bytes_max as u64),
            ("link.close_interval_ms", l.close_interval_ms),
            ("link.idle_close_interval_ms", l.idle_close_interval_ms),
            ("link.clock_drift_ms_max", l.clock_drift_ms_max),
            ("link.retry_backoff_ms_max", l.retry_backoff_ms_max),
            ("link.in_flight_bytes_max", l.in_flight_bytes_max),
            (
                "link.in_flight_requests_max",
                l.in_flight_requests_max as u64,
            ),
        ],
    );
}

/// `storage.*`: a free-space check often enough to act before the disk
/// fills, and not so often that it costs.
pub(super) fn check_storage(p: &mut Problems, s: &StorageConfig) {
    let intervals = [
        (
            "storage.free_check_interval_ms",
            s.free_check_interval_ms,
            FREE_CHECK_INTERVAL_MS,
        ),
        (
            "storage.retention_check_interval_ms",
            s.retention_check_interval_ms,
            RETENTION_CHECK_INTERVAL_MS,
        ),
    ];
    for (key, v, (lo, hi)) in intervals {
        if !(lo..=hi).contains(&v) {
            p.add(key, format!("{v} is out of range: use {lo} to {hi} (ms)"));
        }
    }
    for (key, v) in [
        ("storage.retention_ms", s.retention_ms),
        ("storage.retention_bytes", s.retention_bytes),
    ] {
        if v < -1 {
            p.add(
                key,
                format!("{v} is out of range: use -1 (no limit) or a value of 0 or more"),
            );
        }
    }
}

/// `admin.*`: a token good enough to guard fault injection, and one
/// whenever fault injection is on.
pub(super) fn check_admin(p: &mut Problems, a: &AdminConfig) {
    match &a.token {
        Some(t) if t.len() < ADMIN_TOKEN_LEN_MIN || t.chars().any(|c| !c.is_ascii_graphic()) => {
            p.add(
                "admin.token",
                format!(
                    "must be at least {ADMIN_TOKEN_LEN_MIN} printable ASCII characters without spaces (try `openssl rand -hex 16`)"
                ),
            );
        }
        None if a.faults => p.add(
            "admin.faults",
            "fault injection needs admin.token: set one, or turn admin.faults off",
        ),
        _ => {}
    }
}

/// How the size limits must nest so that everything a client may send can
/// also be stored, replicated in the region and copied to other regions:
/// a produce batch decompresses within `kafka.batch_uncompressed_bytes_max`,
/// which fits one Raft entry (`raft.entry_bytes_max`); an entry fits one
/// AppendEntries (`raft.append_bytes_max`), and so does a link copy (at most
/// `link.batch_bytes_max` plus the one batch that crosses it); an
/// AppendEntries fits one transport frame.
pub(super) fn size_limit_problems(
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

/// `node_id`: positive, and a node of the topology (when it loaded).
pub(super) fn check_node_id(
    p: &mut Problems,
    node_id: i64,
    topology: Option<&Topology>,
    topology_path: &Path,
) {
    if node_id <= 0 {
        p.add(
            "node_id",
            format!("must be a positive integer, got {node_id}"),
        );
    } else if let Some(t) = topology {
        if t.node(node_id as NodeId).is_none() {
            p.add(
                "node_id",
                format!(
                    "node {node_id} is in no region of {}; add it as a [[region.node]] there",
                    topology_path.display()
                ),
            );
        }
    }
}

/// The metadata group spans the regions, and openraft 0.9 gives each
/// AppendEntries the heartbeat interval as its deadline: a round trip at
/// or above it would keep the group from ever replicating.
pub(super) fn check_meta_heartbeat(
    p: &mut Problems,
    c: &ControlConfig,
    t: &Topology,
    topology_path: &Path,
) {
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

/// `control.lease_ms` and `control.renew_ms`: room to renew within the
/// clock margin `margin_ms` (`link.clock_drift_ms_max`) and, with several
/// regions, to outlast a metadata election.
pub(super) fn check_leases(p: &mut Problems, c: &ControlConfig, margin: u64, regions: usize) {
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
    } else if regions > 1 && c.lease_ms < c.renew_ms + election_ms + margin {
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
}
