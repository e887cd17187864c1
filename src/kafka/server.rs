//! The Kafka listener: one task per connection, requests pipelined.
//!
//! A connection's requests are read and *submitted* one after another (so
//! produce requests enter their partitions' logs in arrival order), then
//! complete concurrently; responses go back in request order, as Kafka
//! clients require. In-flight requests per connection, connections per
//! node and per client address, idle time, the time a client may take to
//! read a response, and the bytes of requests and responses held over all
//! connections are bounded (`kafka.*` in docs/operations.md).

use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use super::admission::{Admission, ByteBudget};
use super::codec::{self, DecodeError};
use super::log_limit::LogLimit;
use super::{
    api_versions, create_topics, delete_topics, describe_configs, fetch, groups,
    incremental_alter_configs, list_offsets, metadata, produce, producer_ids, unsupported,
};
use crate::group::coordinator::Coordinator;
use crate::router::Router;

/// A request being served: resolves to the encoded response, or to nothing
/// for `acks = 0` produce requests.
pub type Pending = BoxFuture<'static, Option<BytesMut>>;

/// Log lines a second, at most, for events any client can cause at will
/// (bad requests, refused connections); the rest are counted.
static CLIENT_EVENTS: LazyLock<LogLimit> = LazyLock::new(|| LogLimit::new(20));

macro_rules! client_warn {
    ($($arg:tt)+) => {
        if let Some(suppressed) = CLIENT_EVENTS.admit(Instant::now()) {
            warn!(suppressed, $($arg)+);
        }
    };
}

/// A request frame must arrive whole within this time once its length is read.
const FRAME_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// What the listener keeps across restarts of its accept loop: the socket,
/// the connections open, the bytes in flight.
pub struct Listener {
    socket: TcpListener,
    admission: Arc<Admission>,
    budget: Arc<ByteBudget>,
}

impl Listener {
    pub fn new(socket: TcpListener, k: &crate::config::KafkaConfig) -> Arc<Self> {
        Arc::new(Listener {
            socket,
            admission: Admission::new(
                k.connections_max as usize,
                k.connections_per_ip_max as usize,
            ),
            budget: ByteBudget::new(k.in_flight_bytes_max),
        })
    }
}

pub async fn serve(
    listener: Arc<Listener>,
    router: Arc<Router>,
    coordinator: Arc<Coordinator>,
    shutdown: CancellationToken,
) {
    let (admission, budget) = (&listener.admission, &listener.budget);
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.socket.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, usually (a flood): back
                    // off a little, and say so at most 20 times a second.
                    client_warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Accept first, then refuse: the listener never stops accepting.
        let ticket = match admission.admit(peer.ip()) {
            Ok(t) => t,
            Err(why) => {
                router.metrics.kafka_connections_refused.inc();
                client_warn!(%peer, %why, "closing a new client connection at once");
                drop(stream);
                continue;
            }
        };
        let router = router.clone();
        let conn = Conn {
            coordinator: coordinator.clone(),
            host: format!("/{}", peer.ip()),
            budget: budget.clone(),
        };
        let shutdown = shutdown.clone();
        tokio::spawn(
            async move {
                router.metrics.kafka_connections.inc();
                if let Err(e) = connection(stream, router.clone(), conn, shutdown).await {
                    debug!(error = %e, "connection ended");
                }
                router.metrics.kafka_connections.dec();
                drop(ticket);
            }
            .instrument(tracing::debug_span!("kafka_conn", %peer)),
        );
    }
}

/// What a connection's requests share besides the router.
struct Conn {
    coordinator: Arc<Coordinator>,
    /// The client's address, as DescribeGroups shows members' hosts.
    host: String,
    /// `kafka.in_flight_bytes_max`, shared by every connection.
    budget: Arc<ByteBudget>,
}

/// TCP keepalive probes find peers that vanished without a FIN (a host
/// that lost power, a dropped NAT entry) long before the idle timeout.
const KEEPALIVE_TIME: Duration = Duration::from_secs(60);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

fn keepalive(stream: &TcpStream) {
    let ka = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_TIME)
        .with_interval(KEEPALIVE_INTERVAL);
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_keepalive(&ka) {
        debug!(error = %e, "cannot set TCP keepalive");
    }
}

async fn connection(
    stream: TcpStream,
    router: Arc<Router>,
    conn: Conn,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    keepalive(&stream);
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<tokio::task::JoinHandle<Option<BytesMut>>>(
        router.kafka.in_flight_requests_max as usize,
    );
    let write_timeout = Duration::from_millis(router.kafka.write_timeout_ms);
    let budget = conn.budget.clone();
    let writer = tokio::spawn(async move {
        while let Some(h) = rx.recv().await {
            match h.await {
                Ok(Some(buf)) => {
                    // Only the response about to be written takes budget
                    // (in request order, so that later ones waiting
                    // cannot starve the first), and gives it back once
                    // written or timed out.
                    let held = budget.hold(buf.len()).await;
                    match tokio::time::timeout(write_timeout, wr.write_all(&buf)).await {
                        Ok(r) => r?,
                        Err(_) => {
                            client_warn!(
                                bytes = buf.len(),
                                "closing connection: the client took no response for kafka.write_timeout_ms"
                            );
                            return Err(std::io::ErrorKind::TimedOut.into());
                        }
                    }
                    drop(held);
                }
                Ok(None) => {}
                Err(e) => return Err(std::io::Error::other(e)),
            }
        }
        Ok::<_, std::io::Error>(())
    });
    let max = router.kafka.request_bytes_max as usize;
    let idle = Duration::from_millis(router.kafka.connections_max_idle_ms);
    loop {
        let len = tokio::select! {
            _ = shutdown.cancelled() => break,
            l = tokio::time::timeout(idle, rd.read_i32()) => match l {
                Ok(Ok(l)) => l,
                Ok(Err(_)) => break, // the client closed the connection
                Err(_) => {
                    debug!("closing connection: idle for kafka.connections_max_idle_ms");
                    break;
                }
            },
        };
        if len < 0 || len as usize > max {
            client_warn!(
                len,
                max,
                "closing connection: request size is outside 0..=kafka.request_bytes_max"
            );
            router.metrics.kafka_bad_requests.inc();
            break;
        }
        // The request's bytes are taken from the budget before they are
        // allocated, and given back once its response is built.
        let request_held = tokio::select! {
            _ = shutdown.cancelled() => break,
            h = conn.budget.hold(len as usize) => h,
        };
        let mut buf = vec![0u8; len as usize];
        match tokio::time::timeout(FRAME_READ_TIMEOUT, rd.read_exact(&mut buf)).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => {
                client_warn!(len, "closing connection: request truncated by the client");
                router.metrics.kafka_bad_requests.inc();
                break;
            }
            Err(_) => {
                client_warn!(
                    len,
                    "closing connection: request frame incomplete after 30 s"
                );
                router.metrics.kafka_bad_requests.inc();
                break;
            }
        }
        match dispatch(&router, &conn, Bytes::from(buf)).await {
            Ok(pending) => {
                let task = tokio::spawn(async move {
                    let resp = pending.await;
                    // Given back before the response takes its share in
                    // the writer: a cycle of requests waiting on responses
                    // waiting on requests cannot form.
                    drop(request_held);
                    resp
                });
                if tx.send(task).await.is_err() {
                    break; // the writer failed: the client is gone
                }
            }
            Err(e) => {
                client_warn!(error = %e, "closing connection: undecodable request");
                router.metrics.kafka_bad_requests.inc();
                break;
            }
        }
    }
    drop(tx);
    writer.await.map_err(std::io::Error::other)?
}

fn ready(api: ApiKey, header: &RequestHeader, resp: ResponseKind) -> Pending {
    let version = header.request_api_version;
    let cid = header.correlation_id;
    Box::pin(async move { encode(api, version, cid, resp) })
}

pub fn encode(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    resp: ResponseKind,
) -> Option<BytesMut> {
    match codec::encode_response(api, version, correlation_id, &resp) {
        Ok(b) => Some(b),
        Err(e) => {
            // A bug, not a client error: log it; the client times out.
            warn!(?api, version, error = %e, "cannot encode response");
            None
        }
    }
}

fn not_served(api: ApiKey, header: &RequestHeader) -> DecodeError {
    DecodeError::Body {
        api,
        version: header.request_api_version,
        correlation_id: header.correlation_id,
        reason: "API not supported by Meridian".into(),
    }
}

async fn dispatch(router: &Arc<Router>, conn: &Conn, frame: Bytes) -> Result<Pending, DecodeError> {
    let (api, header, body) = codec::decode_header(frame)?;
    let version = header.request_api_version;
    if api == ApiKey::ApiVersions && !api_versions::supports(api, version) {
        // Answer in v0, which every client reads, listing what we support.
        let cid = header.correlation_id;
        let resp = ResponseKind::ApiVersions(api_versions::unsupported_version());
        return Ok(Box::pin(async move { encode(api, 0, cid, resp) }));
    }
    // The API and version are checked before the body is decoded: a body
    // Meridian will not serve is parsed only to build the error answer of
    // the few APIs that have one, and otherwise the connection is closed.
    if !api_versions::supports(api, version) {
        if !unsupported::answers(api) {
            return Err(not_served(api, &header));
        }
        if let Some(suppressed) = CLIENT_EVENTS.admit(Instant::now()) {
            info!(
                suppressed,
                ?api,
                version,
                "answering an unsupported API or version with an error"
            );
        }
        let req = codec::decode_body(api, &header, body)?;
        return match unsupported::response(req) {
            Some(resp) => Ok(ready(api, &header, resp)),
            None => Err(not_served(api, &header)),
        };
    }
    let req = codec::decode_body(api, &header, body)?;
    let r = router.clone();
    let c = conn.coordinator.clone();
    let client_id = header
        .client_id
        .as_ref()
        .map_or_else(String::new, |c| c.to_string());
    let host = conn.host.clone();
    let (v, cid) = (version, header.correlation_id);
    let done = move |resp: ResponseKind| encode(api, v, cid, resp);
    Ok(match req {
        RequestKind::ApiVersions(_) => ready(
            api,
            &header,
            ResponseKind::ApiVersions(api_versions::response()),
        ),
        RequestKind::Metadata(req) => {
            Box::pin(async move { done(ResponseKind::Metadata(metadata::handle(&r, req).await)) })
        }
        RequestKind::Produce(req) => {
            let pending = produce::submit(&r, req).await;
            Box::pin(async move {
                let resp = pending.await?;
                done(ResponseKind::Produce(resp))
            })
        }
        RequestKind::InitProducerId(req) => ready(
            api,
            &header,
            ResponseKind::InitProducerId(producer_ids::handle(&r.producer_ids, req)),
        ),
        RequestKind::Fetch(req) => {
            Box::pin(async move { done(ResponseKind::Fetch(fetch::handle(&r, req).await)) })
        }
        RequestKind::ListOffsets(req) => {
            Box::pin(async move { done(ResponseKind::ListOffsets(list_offsets::handle(&r, req))) })
        }
        RequestKind::CreateTopics(req) => Box::pin(async move {
            done(ResponseKind::CreateTopics(
                create_topics::handle(&r, req).await,
            ))
        }),
        RequestKind::DeleteTopics(req) => Box::pin(async move {
            done(ResponseKind::DeleteTopics(
                delete_topics::handle(&r, req).await,
            ))
        }),
        RequestKind::DescribeConfigs(req) => Box::pin(async move {
            done(ResponseKind::DescribeConfigs(describe_configs::handle(
                &r, req,
            )))
        }),
        RequestKind::IncrementalAlterConfigs(req) => Box::pin(async move {
            done(ResponseKind::IncrementalAlterConfigs(
                incremental_alter_configs::handle(&r, req).await,
            ))
        }),
        RequestKind::FindCoordinator(req) => Box::pin(async move {
            done(ResponseKind::FindCoordinator(
                groups::find_coordinator(&c, req, v).await,
            ))
        }),
        // Group requests change the group's state in arrival order, here;
        // only their answers wait.
        RequestKind::JoinGroup(req) => {
            let pending = groups::join_group(&c, req, v, &client_id, &host);
            Box::pin(async move { done(ResponseKind::JoinGroup(pending.await)) })
        }
        RequestKind::SyncGroup(req) => {
            let pending = groups::sync_group(&c, req);
            Box::pin(async move { done(ResponseKind::SyncGroup(pending.await)) })
        }
        RequestKind::Heartbeat(req) => ready(
            api,
            &header,
            ResponseKind::Heartbeat(groups::heartbeat(&c, req)),
        ),
        RequestKind::LeaveGroup(req) => ready(
            api,
            &header,
            ResponseKind::LeaveGroup(groups::leave_group(&c, req, v)),
        ),
        RequestKind::OffsetCommit(req) => {
            let pending = groups::offset_commit(&c, req).await;
            Box::pin(async move { done(ResponseKind::OffsetCommit(pending.await)) })
        }
        RequestKind::OffsetFetch(req) => Box::pin(async move {
            done(ResponseKind::OffsetFetch(
                groups::offset_fetch(&c, req, v).await,
            ))
        }),
        RequestKind::ListGroups(req) => {
            Box::pin(async move { done(ResponseKind::ListGroups(groups::list_groups(&c, req))) })
        }
        RequestKind::DescribeGroups(req) => Box::pin(async move {
            done(ResponseKind::DescribeGroups(
                groups::describe_groups(&c, req).await,
            ))
        }),
        RequestKind::DeleteGroups(req) => Box::pin(async move {
            done(ResponseKind::DeleteGroups(
                groups::delete_groups(&c, req).await,
            ))
        }),
        other => match unsupported::response(other) {
            Some(resp) => ready(api, &header, resp),
            None => return Err(not_served(api, &header)),
        },
    })
}
