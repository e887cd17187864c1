//! Admin HTTP for operators: `/healthz`, `/status` (JSON), `/metrics`
//! (Prometheus text), `/topology`; and `/faults`, whose `POST` (the one
//! mutating endpoint) is served only when the node config enables fault
//! injection, to callers that present the config's admin token.

pub mod cluster_file;
pub mod status;

use std::sync::Arc;

use crate::config::AdminConfig;
use crate::transport::faults::FaultState;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::router::Router;
use status::{
    DiskStatus, GroupStatus, LinkStatus, MoveStatus, OriginLogStatus, SealStatus, Status,
};

/// Serves the admin endpoints until `shutdown`; an error means the admin
/// port is gone.
pub async fn serve(
    listener: TcpListener,
    router: Arc<Router>,
    admin: AdminConfig,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let admin = Arc::new(admin);
    let post_faults = move |State(r): State<Arc<Router>>, headers: HeaderMap, body: Bytes| {
        let admin = admin.clone();
        async move {
            match authorize(&admin, &headers) {
                Ok(()) => set_faults(&r, &body),
                Err(refused) => refused,
            }
        }
    };
    let app = axum::Router::new()
        .route("/healthz", get(healthz))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/faults", get(get_faults).post(post_faults))
        .route("/topology", get(topology))
        .with_state(router);
    // axum's accept loop retries failed accepts itself; an error here
    // means the admin port is gone, which the node does not run without.
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// 200 when the node can take writes: with several regions, while its
/// region holds its write lease (renewals commit in the meta group, so
/// that is up too); with one region, once the meta group has a leader.
/// 503 otherwise, with the reason.
async fn healthz(State(r): State<Arc<Router>>) -> impl IntoResponse {
    match r.fence.remaining_ms() {
        Some(0) if r.fence.sealed() => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "region {} was failed over (its origin logs are sealed); it takes writes again after failback\n",
                r.fence.region()
            ),
        ),
        Some(0) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "region {} holds no write lease (not yet, or cut off from the other regions)\n",
                r.fence.region()
            ),
        ),
        Some(_) => (StatusCode::OK, "ok\n".to_string()),
        None if r.groups.meta_leader().is_none() => (
            StatusCode::SERVICE_UNAVAILABLE,
            "no leader for the meta group yet\n".to_string(),
        ),
        None => (StatusCode::OK, "ok\n".to_string()),
    }
}

async fn metrics(State(r): State<Arc<Router>>) -> impl IntoResponse {
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        r.metrics.render(),
    )
}

fn group_status(
    group: u64,
    m: &openraft::RaftMetrics<u64, openraft::BasicNode>,
    voters: usize,
) -> GroupStatus {
    let commit_index = m.replication.as_ref().map(|rep| {
        let mut idx: Vec<u64> = rep.values().map(|l| l.map_or(0, |l| l.index)).collect();
        if !rep.contains_key(&m.id) {
            idx.push(m.last_log_index.unwrap_or(0));
        }
        idx.sort_unstable_by(|a, b| b.cmp(a));
        idx[(voters / 2).min(idx.len() - 1)]
    });
    GroupStatus {
        group,
        topic: None,
        partition: None,
        state: format!("{:?}", m.state),
        leader: m.current_leader,
        term: m.current_term,
        last_log_index: m.last_log_index,
        applied_index: m.last_applied.map(|l| l.index),
        commit_index,
        high_watermark: None,
        log_start: None,
        removed_records: None,
        data_bytes: 0,
        raft_log_bytes: 0,
        snapshot_index: m.snapshot.map(|l| l.index),
        purged_index: m.purged.map(|l| l.index),
        origin_logs: Vec::new(),
        links: Vec::new(),
    }
}

pub fn status_of(r: &Router) -> Status {
    let voters = r.region_nodes().len();
    let all_nodes = r.topology.regions.iter().map(|x| x.nodes.len()).sum();
    let with_bytes = |mut s: GroupStatus| {
        let b = r.groups.db().group_bytes(s.group);
        s.data_bytes = b.data;
        s.raft_log_bytes = b.raft_log;
        s
    };
    let meta = with_bytes(group_status(
        0,
        &r.groups.meta.metrics().borrow(),
        all_nodes,
    ));
    let names: std::collections::HashMap<u32, String> = r
        .region_names()
        .into_iter()
        .map(|n| (crate::ids::origin_id(&n), n))
        .collect();
    let partitions: Vec<GroupStatus> = r
        .groups
        .partitions()
        .iter()
        .map(|g| {
            let mut s = with_bytes(group_status(g.id, &g.raft.metrics().borrow(), voters));
            s.topic = Some(g.topic.clone());
            s.partition = Some(g.partition);
            let p = g.progress.borrow().clone();
            s.high_watermark = Some(p.view_next);
            s.log_start = r.log_start(&g.topic, g.partition as i32).ok();
            s.removed_records = Some(p.removed_records);
            s.origin_logs = p
                .logs
                .iter()
                .map(|(l, st)| OriginLogStatus {
                    origin: names
                        .get(&l.origin)
                        .cloned()
                        .unwrap_or_else(|| format!("#{}", l.origin)),
                    epoch: l.epoch,
                    next_offset: st.next_offset,
                    closed_ms: crate::hlc::wall_ms(st.closed),
                    merged: st.merged,
                    stored_from: p.trimmed.get(l).copied().unwrap_or(0),
                })
                .collect();
            if s.leader == Some(r.node_id()) {
                let own = p.logs.get(&p.own()).map_or(0, |x| x.next_offset);
                s.links = r
                    .link
                    .acks(g.id)
                    .borrow()
                    .iter()
                    .map(|(region, h)| LinkStatus {
                        region: region.clone(),
                        held: h.next_offset,
                        lag_records: own.saturating_sub(h.next_offset),
                    })
                    .collect();
            }
            s
        })
        .collect();
    Status {
        node: r.node_id(),
        region: r.me.region.clone(),
        kafka: r.me.kafka.to_string(),
        leaders: r.groups.leadership(),
        partitions_led: partitions
            .iter()
            .filter(|p| p.leader == Some(r.node_id()))
            .count(),
        lease_ms: r.fence.remaining_ms(),
        leases: {
            let meta = r.groups.meta_state();
            let now = r.groups.clock.wall_now_ms();
            let margin = r.link.cfg.clock_drift_ms_max;
            meta.leases
                .keys()
                .map(|region| {
                    let left = crate::meta::lease::remaining_ms(&meta.leases, region, now, margin);
                    (region.clone(), left)
                })
                .collect()
        },
        sealed: r.fence.sealed(),
        seals: r
            .groups
            .meta_state()
            .seals
            .iter()
            .map(|s| SealStatus {
                region: s.region.clone(),
                epoch: s.epoch,
                decided_at_ms: s.decided_at_ms,
                partitions: s.ends.len(),
                records: s.ends.values().map(|e| e.end).sum(),
            })
            .collect(),
        moves: move_status(r),
        meta,
        partitions,
        disk: DiskStatus {
            free_bytes: r.disk.free(),
            used_bytes: r.disk.used(),
            reserve_bytes: r.disk.reserve(),
            refusing_writes: r.disk.refusing(),
        },
    }
}

fn move_status(r: &Router) -> Vec<MoveStatus> {
    let meta = r.groups.meta_state();
    meta.moves
        .iter()
        .map(|m| {
            let from = crate::ids::LogRef {
                origin: crate::ids::origin_id(&m.from),
                epoch: m.from_epoch,
            };
            let partitions = meta.topics.get(&m.topic).map_or(0, |t| t.partitions);
            let handed_over_here = meta.topics.get(&m.topic).map_or(0, |t| {
                (0..t.partitions)
                    .filter_map(|p| r.groups.partition(t.group(p)))
                    .filter(|g| g.progress.borrow().handed.contains(&from))
                    .count()
            });
            MoveStatus {
                topic: m.topic.clone(),
                from: m.from.clone(),
                to: m.to.clone(),
                partitions,
                sealed: m.seals.len(),
                handed_over_here,
            }
        })
        .collect()
}

async fn status(State(r): State<Arc<Router>>) -> Json<Status> {
    Json(status_of(&r))
}

/// Every region's nodes with their Kafka and admin addresses, in the
/// shape of `cluster.json` (without pids and configs): how `meridian drill
/// --admin` finds a cluster it did not start.
async fn topology(State(r): State<Arc<Router>>) -> Json<cluster_file::ClusterFile> {
    Json(cluster_file::ClusterFile {
        admin_token: None,
        regions: r
            .topology
            .regions
            .iter()
            .map(|x| cluster_file::ClusterRegion {
                name: x.name.clone(),
                nodes: x
                    .nodes
                    .iter()
                    .map(|n| cluster_file::ClusterNode {
                        id: n.id,
                        kafka: n.kafka.to_string(),
                        admin: n.admin.to_string(),
                        pid: 0,
                        config: String::new(),
                    })
                    .collect(),
            })
            .collect(),
    })
}

async fn get_faults(State(r): State<Arc<Router>>) -> Json<FaultState> {
    Json(r.link.transport.faults.state())
}

/// Whether a request may change this node's faults: only if the node
/// config turned fault injection on, and only with its token.
fn authorize(admin: &AdminConfig, headers: &HeaderMap) -> Result<(), (StatusCode, String)> {
    if !admin.faults {
        return Err((
            StatusCode::FORBIDDEN,
            "fault injection is off on this node; set admin.faults = true and admin.token in its config to allow it\n".into(),
        ));
    }
    let Some(token) = admin.token.as_deref() else {
        // Config validation refuses faults without a token.
        return Err((StatusCode::FORBIDDEN, "no admin.token configured\n".into()));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(g) if same_secret(g.trim().as_bytes(), token.as_bytes()) => Ok(()),
        Some(_) => Err((StatusCode::FORBIDDEN, "wrong admin token\n".into())),
        None => Err((
            StatusCode::UNAUTHORIZED,
            "send the node's admin.token as `Authorization: Bearer <token>`\n".into(),
        )),
    }
}

/// Compares secrets in time that does not depend on where they differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Replaces this node's simulated faults (cuts and extra delay between
/// regions). Each node applies its own: set the same state on every node.
fn set_faults(r: &Router, body: &[u8]) -> (StatusCode, String) {
    let s: FaultState = match serde_json::from_slice(body) {
        Ok(s) => s,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("bad fault state: {e}\n")),
    };
    let (skew, disk_error) = (s.skew_ms, s.disk_error);
    match r.link.transport.faults.set(s) {
        Ok(()) => {
            r.groups.clock.set_skew_ms(skew);
            if disk_error {
                tracing::warn!("simulated disk error: every write of this node fails from now on, until it restarts");
                r.groups.fail_disk();
            }
            (StatusCode::OK, "ok\n".into())
        }
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(a) = auth {
            h.insert(header::AUTHORIZATION, a.parse().unwrap());
        }
        h
    }

    #[test]
    fn faults_need_the_config_switch_and_the_token() {
        let token = "0123456789abcdef";
        let off = AdminConfig::default();
        let on = AdminConfig {
            faults: true,
            token: Some(token.into()),
        };
        let bearer = format!("Bearer {token}");
        let code = |a: &AdminConfig, h: Option<&str>| authorize(a, &headers(h)).err().map(|e| e.0);
        assert_eq!(code(&off, Some(&bearer)), Some(StatusCode::FORBIDDEN));
        assert_eq!(code(&on, None), Some(StatusCode::UNAUTHORIZED));
        assert_eq!(
            code(&on, Some("Bearer 0123456789abcdeX")),
            Some(StatusCode::FORBIDDEN)
        );
        assert_eq!(code(&on, Some(token)), Some(StatusCode::UNAUTHORIZED));
        assert_eq!(code(&on, Some(&bearer)), None);
    }
}
