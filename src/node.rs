//! One `meridian node` process: storage, transport, Raft groups, the Kafka
//! listener and the admin endpoint. Used by the binary, `meridian dev` (as
//! child processes) and the tests alike.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn, Instrument};

use crate::admin;
use crate::config::NodeConfig;
use crate::hlc::Clock;
use crate::link::Link;
use crate::metrics::Metrics;
use crate::raft::groups::GroupError;
use crate::raft::Groups;
use crate::router::Router;
use crate::rpc::Dispatch;
use crate::storage::{Db, DbError};
use crate::supervise;
use crate::transport::faults::Faults;
use crate::transport::{tls::TlsError, TlsMaterial, Transport, TransportError};

/// How long a stopping node waits for its Raft groups to shut down.
const GROUPS_STOP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot create data directory {path}: {cause}")]
    DataDir { path: String, cause: std::io::Error },
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Storage(#[from] DbError),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("cannot listen for {what} on {addr}: {cause}; is another process using this port?")]
    Listen {
        what: &'static str,
        addr: std::net::SocketAddr,
        cause: std::io::Error,
    },
    #[error(transparent)]
    Raft(#[from] GroupError),
    #[error(transparent)]
    ProducerIds(#[from] crate::storage::producer_ids::ProducerIdError),
    #[error("{what} stopped while the node was running ({why}); the node stops rather than run without it")]
    Stopped { what: &'static str, why: String },
}

/// Runs the node until `shutdown` is cancelled.
pub async fn run(config: NodeConfig, shutdown: CancellationToken) -> Result<(), NodeError> {
    let me = config.me().clone();
    let span = tracing::info_span!("node", region = %me.region, node = me.id);
    run_inner(config, shutdown).instrument(span).await
}

/// File descriptors the node needs besides client connections: RocksDB's
/// files, QUIC sockets, the admin port.
const FDS_BESIDES_CLIENTS: u64 = 512;

/// Raises the soft open-files limit to the hard one, so that
/// `kafka.connections_max` is what refuses connections, not EMFILE at
/// accept (which leaves new connections waiting in the backlog); warns if
/// even the hard limit is too low.
fn raise_open_files_limit(connections_max: u32) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let soft = if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        hard
    } else {
        soft
    };
    let need = connections_max as u64 + FDS_BESIDES_CLIENTS;
    if soft < need {
        warn!(
            open_files_limit = soft,
            need,
            "the open-files limit is below kafka.connections_max plus {FDS_BESIDES_CLIENTS}: raise it (ulimit -n, LimitNOFILE=) or lower kafka.connections_max"
        );
    }
}

async fn run_inner(config: NodeConfig, shutdown: CancellationToken) -> Result<(), NodeError> {
    let me = config.me().clone();
    raise_open_files_limit(config.kafka.connections_max);
    std::fs::create_dir_all(&config.data_dir).map_err(|cause| NodeError::DataDir {
        path: config.data_dir.display().to_string(),
        cause,
    })?;
    let listen = |what: &'static str, addr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|cause| NodeError::Listen { what, addr, cause })
    };
    let kafka_listener = listen("Kafka clients", me.kafka).await?;
    let admin_listener = listen("admin HTTP", me.admin).await?;
    let metrics = Arc::new(Metrics::new());
    let Opened {
        transport,
        groups,
        groups_stopped,
        link,
        producer_ids,
    } = open(&config, &metrics, &shutdown).await?;
    let router = start_replication(
        &config,
        &groups,
        &link,
        &transport,
        producer_ids,
        &metrics,
        &shutdown,
    );
    // Node-to-node requests are served once the router exists: forwarded
    // produces and failback requests go to it (`rpc`).
    let transport_serving = transport.serve(
        Arc::new(Dispatch {
            groups: groups.clone(),
            link: link.clone(),
            router: router.clone(),
        }),
        shutdown.clone(),
    );
    if !config.topics.is_empty() {
        tokio::spawn(ensure_topics(
            router.clone(),
            config.topics.clone(),
            shutdown.clone(),
        ));
    }
    start_clients(&config, &router, kafka_listener, &metrics, &shutdown);
    let admin_serving = tokio::spawn(admin::serve(
        admin_listener,
        router.clone(),
        config.admin.clone(),
        shutdown.clone(),
    ));
    {
        let (g, stop) = (groups.clone(), shutdown.clone());
        supervise::spawn("metrics", shutdown.clone(), metrics.clone(), move || {
            let (g, stop) = (g.clone(), stop.clone());
            async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                // Bytes on disk every 10 s: an estimate per column family
                // and group.
                let mut n = 0u64;
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tick.tick() => {
                            g.update_metrics(n % 10 == 0);
                            n += 1;
                        }
                    }
                }
            }
        });
    }
    info!(kafka = %me.kafka, admin = %me.admin, quic = %me.quic, data_dir = %config.data_dir.display(), "node started");
    let failed = until_stopped(&shutdown, &groups, transport_serving, admin_serving).await;
    info!("shutting down");
    // The reconcile loop shuts every Raft group down; wait for it, bounded.
    if tokio::time::timeout(GROUPS_STOP_TIMEOUT, groups_stopped)
        .await
        .is_err()
    {
        warn!("Raft groups did not stop within {GROUPS_STOP_TIMEOUT:?}; exiting anyway");
    }
    failed.map_or(Ok(()), Err)
}

/// Waits for shutdown, or for one of the two tasks that own a socket bound
/// once to end: they cannot be restarted like the supervised loops, so one
/// that ends first stops the node, which exits non-zero saying which.
async fn until_stopped(
    shutdown: &CancellationToken,
    groups: &Arc<Groups>,
    transport_serving: tokio::task::JoinHandle<()>,
    admin_serving: tokio::task::JoinHandle<std::io::Result<()>>,
) -> Option<NodeError> {
    let stopped = tokio::select! {
        biased; // both end after shutdown too: that is no failure
        _ = shutdown.cancelled() => None,
        // A write that failed (a failing or full disk) stops the group that
        // made it, which acknowledges nothing more; with the node stopped,
        // the region's other replicas elect new leaders for its partitions,
        // and a restart recovers what the disk holds.
        why = storage_failure(groups) => Some(("its storage or a Raft group", Err(why))),
        r = transport_serving => Some((
            "the node-to-node transport's accept loop",
            r.map_err(|e| e.to_string()),
        )),
        r = admin_serving => Some((
            "the admin HTTP server",
            r.map_err(|e| e.to_string())
                .and_then(|served| served.map_err(|e| e.to_string())),
        )),
    };
    stopped.map(|(what, r)| {
        let why = match r {
            Ok(()) => "it returned".to_string(),
            Err(e) => e,
        };
        error!(what, %why, "stopping the node: a part it cannot run without ended");
        shutdown.cancel();
        NodeError::Stopped { what, why }
    })
}

/// Waits until a write of the node's storage failed, or one of its Raft
/// groups stopped on an error.
async fn storage_failure(groups: &Groups) -> String {
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tick.tick().await;
        if let Some(failed) = groups.failure() {
            return failed;
        }
    }
}

/// What `open` brings up: storage, the transport (not serving yet), the
/// Raft groups and the link.
struct Opened {
    transport: Arc<Transport>,
    groups: Arc<Groups>,
    groups_stopped: tokio::task::JoinHandle<()>,
    link: Arc<Link>,
    producer_ids: crate::storage::producer_ids::ProducerIds,
}

/// Opens the node's storage and transport, starts its Raft groups, and
/// the link's copiers.
async fn open(
    config: &NodeConfig,
    metrics: &Arc<Metrics>,
    shutdown: &CancellationToken,
) -> Result<Opened, NodeError> {
    let me = config.me().clone();
    let tls = TlsMaterial::load_or_dev(config.tls.as_ref(), &config.data_dir)?;
    let db = Db::open(&config.data_dir.join("db"), metrics.clone())?;
    let producer_ids = crate::storage::producer_ids::ProducerIds::new(db.clone(), me.id)?;
    // Every node of every region: the meta group spans them, and the link
    // talks to other regions' nodes.
    let peers: HashMap<_, _> = config
        .topology
        .regions
        .iter()
        .flat_map(|r| r.nodes.iter().map(|n| (n.id, n.quic)))
        .collect();
    let faults = Faults::new(&config.topology, &me.region);
    let transport = Transport::bind(config.transport.clone(), me.quic, peers, &tls, faults)?;
    let clock = Arc::new(Clock::new());
    let (groups, groups_stopped) = Groups::start(
        me.id,
        &config.topology,
        &config.raft,
        &config.control,
        db,
        transport.clone(),
        clock,
        metrics.clone(),
        shutdown.clone(),
    )
    .await?;
    let link = Link::new(
        groups.clone(),
        transport.clone(),
        config.topology.clone(),
        me.clone(),
        config.link.clone(),
        metrics.clone(),
    );
    {
        let (l, s) = (link.clone(), shutdown.clone());
        supervise::spawn("link", shutdown.clone(), metrics.clone(), move || {
            l.clone().run(s.clone())
        });
    }
    Ok(Opened {
        transport,
        groups,
        groups_stopped,
        link,
        producer_ids,
    })
}

/// The router, and the control plane's loops beside it: failover and
/// failback, and the region's write leases.
fn start_replication(
    config: &NodeConfig,
    groups: &Arc<Groups>,
    link: &Arc<Link>,
    transport: &Arc<Transport>,
    producer_ids: crate::storage::producer_ids::ProducerIds,
    metrics: &Arc<Metrics>,
    shutdown: &CancellationToken,
) -> Arc<Router> {
    let me = config.me().clone();
    let fence = crate::control::Fence::new(
        groups.clone(),
        &config.topology,
        &me.region,
        config.link.clock_drift_ms_max,
    );
    let disk = crate::storage::reserve::DiskReserve::new(
        &config.data_dir,
        config.storage.free_bytes_reserve,
        metrics.clone(),
    );
    {
        let (d, s) = (disk.clone(), shutdown.clone());
        let every = Duration::from_millis(config.storage.free_check_interval_ms);
        supervise::spawn(
            "disk reserve",
            shutdown.clone(),
            metrics.clone(),
            move || d.clone().watch(every, s.clone()),
        );
    }
    let router = Arc::new(Router {
        groups: groups.clone(),
        link: link.clone(),
        topology: config.topology.clone(),
        me: me.clone(),
        kafka: config.kafka.clone(),
        metrics: metrics.clone(),
        fence: fence.clone(),
        producer_ids,
        decode_permits: tokio::sync::Semaphore::new(config.kafka.decode_concurrency_max as usize),
        entry_bytes_max: config.raft.entry_bytes_max,
        disk,
    });
    let failover = Arc::new(crate::control::failover::Failover {
        groups: groups.clone(),
        link: link.clone(),
        transport: transport.clone(),
        topology: config.topology.clone(),
        me: me.clone(),
        cfg: config.control.clone(),
        margin_ms: config.link.clock_drift_ms_max,
        entry_bytes_max: config.raft.entry_bytes_max,
        metrics: metrics.clone(),
        failing_back: Default::default(),
        warned: Default::default(),
    });
    {
        let s = shutdown.clone();
        supervise::spawn("failover", shutdown.clone(), metrics.clone(), move || {
            failover.clone().run(s.clone())
        });
    }
    let retention = Arc::new(crate::control::retention::Retention {
        groups: groups.clone(),
        link: link.clone(),
        cfg: config.storage.clone(),
        metrics: metrics.clone(),
    });
    {
        let s = shutdown.clone();
        supervise::spawn("retention", shutdown.clone(), metrics.clone(), move || {
            retention.clone().run(s.clone())
        });
    }
    {
        let (g, t, m, c, f, mx, s) = (
            groups.clone(),
            config.topology.clone(),
            me.clone(),
            config.control.clone(),
            fence,
            metrics.clone(),
            shutdown.clone(),
        );
        supervise::spawn("leases", shutdown.clone(), metrics.clone(), move || {
            crate::control::run_leases(
                g.clone(),
                t.clone(),
                m.clone(),
                c.clone(),
                f.clone(),
                mx.clone(),
                s.clone(),
            )
        });
    }
    router
}

/// The group coordinator and the Kafka listener.
fn start_clients(
    config: &NodeConfig,
    router: &Arc<Router>,
    kafka_listener: TcpListener,
    metrics: &Arc<Metrics>,
    shutdown: &CancellationToken,
) {
    let coordinator =
        crate::group::coordinator::Coordinator::new(router.clone(), config.groups.clone());
    {
        let (c, s) = (coordinator.clone(), shutdown.clone());
        supervise::spawn(
            "group coordinator",
            shutdown.clone(),
            metrics.clone(),
            move || c.clone().run(s.clone()),
        );
    }
    {
        let (l, r, s) = (
            crate::kafka::server::Listener::new(kafka_listener, &config.kafka, metrics),
            router.clone(),
            shutdown.clone(),
        );
        supervise::spawn(
            "kafka listener",
            shutdown.clone(),
            metrics.clone(),
            move || {
                crate::kafka::server::serve(l.clone(), r.clone(), coordinator.clone(), s.clone())
            },
        );
    }
}

/// Creates the topics of the topics file that do not exist, retrying while
/// the metadata group has no leader (every node does this at start; the
/// first creation wins). An existing topic is left as it is, since its
/// configs may have been changed at run time; differences from the file
/// are logged.
async fn ensure_topics(
    router: Arc<Router>,
    topics: Vec<crate::config::TopicDecl>,
    shutdown: CancellationToken,
) {
    use crate::meta::MetaError;
    use crate::router::TopicError;
    for t in topics {
        let want = t.configs();
        let mut backoff = Duration::from_millis(200);
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            if let Some(have) = router.topic(&t.name) {
                let differs: Vec<String> = want
                    .iter()
                    .filter(|(k, v)| have.configs.get(*k) != Some(*v))
                    .map(|(k, v)| {
                        let now = have.configs.get(k).map_or("(unset)", |s| s.as_str());
                        format!("{k}: file {v}, topic {now}")
                    })
                    .chain((have.partitions != t.partitions).then(|| {
                        format!(
                            "partitions: file {}, topic {}",
                            t.partitions, have.partitions
                        )
                    }))
                    .collect();
                if !differs.is_empty() {
                    warn!(topic = %t.name, differences = %differs.join("; "),
                        "topic exists with other settings than the topics file; left as it is (change it with `meridian topic alter`)");
                }
                break;
            }
            match router
                .create_topic(
                    &t.name,
                    t.partitions as i64,
                    want.clone(),
                    Duration::from_secs(10),
                )
                .await
            {
                Ok(_) => {
                    info!(topic = %t.name, partitions = t.partitions, "created from the topics file");
                    break;
                }
                Err(TopicError::Meta(MetaError::TopicExists(_))) => continue,
                Err(TopicError::Meta(e)) => {
                    // Checked when the config loaded; only a topology
                    // change since then gets here.
                    warn!(topic = %t.name, error = %e, "cannot create a topic of the topics file");
                    break;
                }
                Err(e) => {
                    debug!(topic = %t.name, error = %e, "metadata group not ready; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}
