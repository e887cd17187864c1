//! Prometheus metrics of one node, served at the admin `/metrics` endpoint.

use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

pub struct Metrics {
    registry: Registry,
    pub produce_requests: Counter,
    pub produce_records: Counter,
    pub produce_bytes: Counter,
    pub produce_errors: Counter,
    pub produce_latency: Histogram,
    pub fetch_requests: Counter,
    pub fetch_bytes: Counter,
    pub fetch_latency: Histogram,
    pub fsync_latency: Histogram,
    pub fsync_waiters: Histogram,
    pub kafka_connections: Gauge,
    /// Bytes of the Kafka listener's budget held now (`kafka.in_flight_bytes_max`).
    pub kafka_in_flight_bytes: Gauge,
    pub kafka_queued_bytes: Gauge,
    pub kafka_bad_requests: Counter,
    pub kafka_connections_refused: Counter,
    pub kafka_decode_waits: Counter,
    pub raft_leader_groups: Gauge,
    pub raft_term: Family<Labels, Gauge>,
    /// Per group: Raft log entries kept (not purged), and the bytes of the
    /// Raft log and of the group's data in SST files (approximate).
    pub raft_log_entries: Family<Labels, Gauge>,
    pub raft_log_bytes: Family<Labels, Gauge>,
    pub group_data_bytes: Family<Labels, Gauge>,
    /// Per topic, partition and remote region (set by the partition leader).
    pub link_lag_records: Family<Labels, Gauge>,
    pub link_lag_bytes: Family<Labels, Gauge>,
    pub link_lag_ms: Family<Labels, Gauge>,
    /// Per topic and partition: age of the view's watermark here.
    pub closed_age_ms: Family<Labels, Gauge>,
    /// Per topic and partition: acknowledged own records no other region holds.
    pub rpo_exposure_records: Family<Labels, Gauge>,
    /// Per topic and partition (set by the partition leader): the log
    /// start, records removed here, and records past retention kept
    /// because another region of the topic does not hold them yet.
    pub log_start_offset: Family<Labels, Gauge>,
    pub removed_records: Family<Labels, Gauge>,
    pub retention_pinned_records: Family<Labels, Gauge>,
    /// Trims (retention and DeleteRecords) this node proposed.
    pub retention_trims: Counter,
    pub link_batches_sent: Counter,
    /// Restarts of supervised background loops (`supervise`), by loop.
    pub loop_restarts: Family<Labels, Counter>,
    pub link_errors: Counter,
    /// Origin logs a copier found a region lacking records of that retention
    /// already removed here (the region needs a rebuild).
    pub link_unservable_logs: Counter,
    pub clock_drift_refusals: Counter,
    pub sync_ack_timeouts: Counter,
    pub rpo_waits: Counter,
    /// Idempotent producers' retries answered with the batch stored before.
    pub idempotent_duplicates: Counter,
    /// Idempotent producers' batches refused by their sequence numbers, or
    /// held while the producer's other region's records arrive.
    pub idempotent_refusals: Counter,
    /// Per region: milliseconds of writing its lease has left, as this node
    /// sees it (0: fenced or expired).
    pub lease_remaining_ms: Family<Labels, Gauge>,
    pub lease_renewals: Counter,
    pub fenced_produces: Counter,
    /// Failovers this node committed as the metadata leader.
    pub failovers: Counter,
    /// Records this node re-injected at failback (records of its region's
    /// sealed logs that lay past the seal).
    pub reinjected_records: Counter,
    /// Per region: 1 once failed over (its epoch sealed), as this node
    /// applied it.
    pub region_sealed: Family<Labels, Gauge>,
    /// Per region: its current epoch (bumped by a failover).
    pub region_epoch: Family<Labels, Gauge>,
    /// Consumer groups with members this node coordinates, and their members.
    pub groups_coordinated: Gauge,
    pub group_members: Gauge,
    /// Generations completed (rebalances) by groups coordinated here.
    pub group_rebalances: Counter,
    pub offset_commits: Counter,
    /// Offset commits not acknowledged (not proposed, timed out, too few
    /// regions held them).
    pub offset_commit_errors: Counter,
    /// Free bytes on the data directory's filesystem, as last read.
    pub disk_free_bytes: Gauge,
    /// Bytes the data directory holds, as last counted.
    pub data_dir_bytes: Gauge,
    /// 1 while free space is below `storage.free_bytes_reserve` and the
    /// node refuses new writes.
    pub disk_reserve_refusing: Gauge,
    /// Writes refused because free space was below the reserve.
    pub disk_refused_writes: Counter,
}

fn latency_histogram() -> Histogram {
    // 50 µs to about 26 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("meridian");
        let m = Metrics {
            produce_requests: Counter::default(),
            produce_records: Counter::default(),
            produce_bytes: Counter::default(),
            produce_errors: Counter::default(),
            produce_latency: latency_histogram(),
            fetch_requests: Counter::default(),
            fetch_bytes: Counter::default(),
            fetch_latency: latency_histogram(),
            fsync_latency: latency_histogram(),
            fsync_waiters: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            kafka_connections: Gauge::default(),
            kafka_in_flight_bytes: Gauge::default(),
            kafka_queued_bytes: Gauge::default(),
            kafka_bad_requests: Counter::default(),
            kafka_connections_refused: Counter::default(),
            kafka_decode_waits: Counter::default(),
            raft_leader_groups: Gauge::default(),
            raft_term: Family::default(),
            raft_log_entries: Family::default(),
            raft_log_bytes: Family::default(),
            group_data_bytes: Family::default(),
            link_lag_records: Family::default(),
            link_lag_bytes: Family::default(),
            link_lag_ms: Family::default(),
            closed_age_ms: Family::default(),
            rpo_exposure_records: Family::default(),
            log_start_offset: Family::default(),
            removed_records: Family::default(),
            retention_pinned_records: Family::default(),
            retention_trims: Counter::default(),
            link_batches_sent: Counter::default(),
            loop_restarts: Family::default(),
            link_errors: Counter::default(),
            link_unservable_logs: Counter::default(),
            clock_drift_refusals: Counter::default(),
            sync_ack_timeouts: Counter::default(),
            idempotent_duplicates: Counter::default(),
            idempotent_refusals: Counter::default(),
            rpo_waits: Counter::default(),
            lease_remaining_ms: Family::default(),
            lease_renewals: Counter::default(),
            fenced_produces: Counter::default(),
            failovers: Counter::default(),
            reinjected_records: Counter::default(),
            region_sealed: Family::default(),
            region_epoch: Family::default(),
            groups_coordinated: Gauge::default(),
            group_members: Gauge::default(),
            group_rebalances: Counter::default(),
            offset_commits: Counter::default(),
            offset_commit_errors: Counter::default(),
            disk_free_bytes: Gauge::default(),
            data_dir_bytes: Gauge::default(),
            disk_reserve_refusing: Gauge::default(),
            disk_refused_writes: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "produce_requests",
            "Produce requests (per partition)",
            m.produce_requests.clone(),
        );
        registry.register(
            "produce_records",
            "Records appended",
            m.produce_records.clone(),
        );
        registry.register(
            "produce_bytes",
            "Record batch bytes appended",
            m.produce_bytes.clone(),
        );
        registry.register(
            "produce_errors",
            "Partition produce requests answered with an error",
            m.produce_errors.clone(),
        );
        registry.register(
            "produce_latency_seconds",
            "Time from receiving a partition's batch to its commit",
            m.produce_latency.clone(),
        );
        registry.register("fetch_requests", "Fetch requests", m.fetch_requests.clone());
        registry.register(
            "fetch_bytes",
            "Record bytes returned by fetches",
            m.fetch_bytes.clone(),
        );
        registry.register(
            "fetch_latency_seconds",
            "Time to answer a fetch, long-poll wait included",
            m.fetch_latency.clone(),
        );
        registry.register(
            "fsync_latency_seconds",
            "Duration of one write-ahead-log fsync (group commit)",
            m.fsync_latency.clone(),
        );
        registry.register(
            "fsync_waiters",
            "Raft log appends acknowledged by one fsync",
            m.fsync_waiters.clone(),
        );
        registry.register(
            "kafka_connections",
            "Open Kafka client connections",
            m.kafka_connections.clone(),
        );
        registry.register(
            "kafka_in_flight_bytes",
            "Bytes of requests and responses held now (at most kafka.in_flight_bytes_max)",
            m.kafka_in_flight_bytes.clone(),
        );
        registry.register(
            "kafka_queued_bytes",
            "Bytes of decoded fetches and built responses waiting for their turn, over all connections (see kafka.connection_queued_bytes_max)",
            m.kafka_queued_bytes.clone(),
        );
        registry.register(
            "kafka_bad_requests",
            "Kafka requests that could not be decoded",
            m.kafka_bad_requests.clone(),
        );
        registry.register(
            "kafka_connections_refused",
            "Client connections closed at once: kafka.connections_max or kafka.connections_per_ip_max reached",
            m.kafka_connections_refused.clone(),
        );
        registry.register(
            "kafka_decode_waits",
            "Produce batches that waited for a place to decode (kafka.decode_concurrency_max)",
            m.kafka_decode_waits.clone(),
        );
        registry.register(
            "raft_leader_groups",
            "Raft groups this node leads",
            m.raft_leader_groups.clone(),
        );
        registry.register(
            "raft_term",
            "Current Raft term per group",
            m.raft_term.clone(),
        );
        registry.register(
            "raft_log_entries",
            "Raft log entries a group keeps on this node (not yet purged)",
            m.raft_log_entries.clone(),
        );
        registry.register(
            "raft_log_bytes",
            "Bytes of a group's Raft log in this node's SST files (approximate; recent entries still in memory are not counted)",
            m.raft_log_bytes.clone(),
        );
        registry.register(
            "group_data_bytes",
            "Bytes of a group's records, view and state in this node's SST files (approximate; recent writes still in memory are not counted)",
            m.group_data_bytes.clone(),
        );
        registry.register(
            "link_lag_records",
            "Records of this region's origin log a remote region does not hold yet",
            m.link_lag_records.clone(),
        );
        registry.register(
            "link_lag_bytes",
            "Stored bytes of this region's origin log a remote region does not hold yet (estimate)",
            m.link_lag_bytes.clone(),
        );
        registry.register(
            "link_lag_ms",
            "Age of the oldest own record a remote region does not hold yet",
            m.link_lag_ms.clone(),
        );
        registry.register(
            "view_watermark_age_ms",
            "How far the global view's watermark (minimum closed timestamp) is behind now",
            m.closed_age_ms.clone(),
        );
        registry.register(
            "rpo_exposure_records",
            "Acknowledged records of this region that no other region holds",
            m.rpo_exposure_records.clone(),
        );
        registry.register(
            "loop_restarts",
            "Background loops restarted after they failed or stopped early",
            m.loop_restarts.clone(),
        );
        registry.register(
            "link_batches_sent",
            "Copy requests sent to other regions",
            m.link_batches_sent.clone(),
        );
        registry.register(
            "link_errors",
            "Copy requests that failed (unreachable, refused, not leader)",
            m.link_errors.clone(),
        );
        registry.register(
            "link_unservable_logs",
            "Origin logs a remote region lacks records of that retention already removed here: it cannot catch up by copying and needs a rebuild",
            m.link_unservable_logs.clone(),
        );
        registry.register(
            "clock_drift_refusals",
            "Copies refused because their HLCs were too far ahead of this node's clock",
            m.clock_drift_refusals.clone(),
        );
        registry.register(
            "sync_ack_timeouts",
            "Sync produces that did not reach their region quorum in time",
            m.sync_ack_timeouts.clone(),
        );
        registry.register(
            "idempotent_duplicates",
            "Retried batches of idempotent producers answered with the batch stored before (stored once)",
            m.idempotent_duplicates.clone(),
        );
        registry.register(
            "idempotent_refusals",
            "Batches of idempotent producers refused by their sequence numbers, or held until the records of the producer's previous region arrived",
            m.idempotent_refusals.clone(),
        );
        registry.register(
            "rpo_waits",
            "Async produce acks held back because the unreplicated window exceeded meridian.rpo.max.ms",
            m.rpo_waits.clone(),
        );
        registry.register(
            "lease_remaining_ms",
            "Milliseconds of writing a region's lease has left, as this node sees it (0: fenced)",
            m.lease_remaining_ms.clone(),
        );
        registry.register(
            "lease_renewals",
            "Lease renewals this node committed for its region",
            m.lease_renewals.clone(),
        );
        registry.register(
            "log_start_offset",
            "A partition's log start in this region: the first offset a consumer can fetch",
            m.log_start_offset.clone(),
        );
        registry.register(
            "removed_records",
            "Records this region removed from a partition's storage (retention, DeleteRecords)",
            m.removed_records.clone(),
        );
        registry.register(
            "retention_pinned_records",
            "Records below a partition's log start still stored because another region of the topic does not hold them yet",
            m.retention_pinned_records.clone(),
        );
        registry.register(
            "retention_trims",
            "Log start moves and removals this node proposed as a partition leader",
            m.retention_trims.clone(),
        );
        registry.register(
            "disk_free_bytes",
            "Free bytes on the filesystem of the node's data directory, as last read",
            m.disk_free_bytes.clone(),
        );
        registry.register(
            "data_dir_bytes",
            "Bytes the node's data directory holds (RocksDB files: Raft logs, records, state)",
            m.data_dir_bytes.clone(),
        );
        registry.register(
            "disk_reserve_refusing",
            "1 while free space is below storage.free_bytes_reserve and the node refuses new writes",
            m.disk_reserve_refusing.clone(),
        );
        registry.register(
            "disk_refused_writes",
            "Writes (produces, offset commits) refused because free space was below storage.free_bytes_reserve",
            m.disk_refused_writes.clone(),
        );
        registry.register(
            "fenced_produces",
            "Produces refused because this region held no write lease",
            m.fenced_produces.clone(),
        );
        registry.register(
            "groups_coordinated",
            "Consumer groups with members this node coordinates",
            m.groups_coordinated.clone(),
        );
        registry.register(
            "group_members",
            "Members of the consumer groups this node coordinates",
            m.group_members.clone(),
        );
        registry.register(
            "group_rebalances",
            "Generations completed by consumer groups this node coordinates",
            m.group_rebalances.clone(),
        );
        registry.register(
            "offset_commits",
            "Offset commit records acknowledged (one per partition committed)",
            m.offset_commits.clone(),
        );
        registry.register(
            "offset_commit_errors",
            "Offset commits not acknowledged (not proposed, timed out, or held by too few regions)",
            m.offset_commit_errors.clone(),
        );
        registry.register(
            "failovers",
            "Regions this node failed over as the metadata leader (sealed their origin logs)",
            m.failovers.clone(),
        );
        registry.register(
            "reinjected_records",
            "Records past a seal this node re-injected at failback (they keep their id and HLC in headers)",
            m.reinjected_records.clone(),
        );
        registry.register(
            "region_sealed",
            "1 when a region was failed over and its epoch sealed, else 0",
            m.region_sealed.clone(),
        );
        registry.register(
            "region_epoch",
            "A region's current epoch (bumped when it is failed over)",
            m.region_epoch.clone(),
        );
        Metrics { registry, ..m }
    }

    pub fn observe_fsync(&self, took: Duration, waiters: usize) {
        self.fsync_latency.observe(took.as_secs_f64());
        self.fsync_waiters.observe(waiters as f64);
    }

    pub fn set_term(&self, group: &str, term: u64) {
        self.raft_term
            .get_or_create(&vec![("group".to_string(), group.to_string())])
            .set(term as i64);
    }

    /// A group's Raft log length and, when given, its bytes on disk (data,
    /// Raft log).
    pub fn set_group_size(&self, group: &str, entries: u64, bytes: Option<(u64, u64)>) {
        let l = vec![("group".to_string(), group.to_string())];
        let n = |v: u64| v.min(i64::MAX as u64) as i64;
        self.raft_log_entries.get_or_create(&l).set(n(entries));
        if let Some((data, raft_log)) = bytes {
            self.group_data_bytes.get_or_create(&l).set(n(data));
            self.raft_log_bytes.get_or_create(&l).set(n(raft_log));
        }
    }

    pub fn remove_group(&self, group: &str) {
        let l = vec![("group".to_string(), group.to_string())];
        self.raft_log_entries.remove(&l);
        self.raft_log_bytes.remove(&l);
        self.group_data_bytes.remove(&l);
        self.raft_term
            .remove(&vec![("group".to_string(), group.to_string())]);
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut s = String::new();
        // Writing into a String cannot fail.
        encode(&mut s, &self.registry).expect("encode metrics");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prefixed_metrics() {
        let m = Metrics::new();
        m.produce_records.inc_by(3);
        m.observe_fsync(Duration::from_millis(2), 7);
        m.set_term("orders-0", 4);
        let s = m.render();
        assert!(s.contains("meridian_produce_records_total 3"), "{s}");
        assert!(s.contains("meridian_fsync_latency_seconds_count 1"), "{s}");
        assert!(
            s.contains("meridian_raft_term{group=\"orders-0\"} 4"),
            "{s}"
        );
    }

    /// The Grafana dashboard names only metrics that exist, with the
    /// labels they have (the scrape adds `region`, `instance` and `le`).
    #[test]
    fn the_dashboard_queries_existing_metrics_and_labels() {
        let m = Metrics::new();
        let lag = vec![
            ("topic".to_string(), "t".to_string()),
            ("partition".to_string(), "0".to_string()),
            ("remote_region".to_string(), "r".to_string()),
        ];
        m.link_lag_ms.get_or_create(&lag).set(1);
        m.link_lag_records.get_or_create(&lag).set(1);
        let part = lag[..2].to_vec();
        m.rpo_exposure_records.get_or_create(&part).set(1);
        m.closed_age_ms.get_or_create(&part).set(1);
        m.lease_remaining_ms
            .get_or_create(&vec![("lease_region".to_string(), "r".to_string())])
            .set(1);
        m.region_sealed
            .get_or_create(&vec![("sealed_region".to_string(), "r".to_string())])
            .set(1);
        m.region_epoch
            .get_or_create(&vec![("epoch_region".to_string(), "r".to_string())])
            .set(2);
        let text = m.render();
        let dash: serde_json::Value =
            serde_json::from_str(include_str!("../docs/operations/grafana-dashboard.json"))
                .expect("dashboard is JSON");
        let exprs: Vec<String> = dash["panels"]
            .as_array()
            .expect("panels")
            .iter()
            .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
            .map(|t| t["expr"].as_str().expect("expr").to_string())
            .collect();
        assert!(exprs.len() >= 10);
        for e in &exprs {
            for name in e
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("meridian_"))
            {
                let family = name.trim_end_matches("_bucket");
                assert!(
                    text.lines().any(|l| l.starts_with(family)),
                    "dashboard query `{e}` names {name}, which /metrics lacks"
                );
            }
            // Labels grouped by: the metric's own, or added by the scrape.
            for by in e.split("by (").skip(1) {
                let labels = by.split(')').next().unwrap_or("");
                for l in labels.split(',').map(str::trim) {
                    let scrape = ["region", "instance", "le"].contains(&l);
                    assert!(
                        scrape || text.contains(&format!("{l}=\"")),
                        "dashboard query `{e}` groups by `{l}`, which no metric has"
                    );
                }
            }
        }
    }
}
