//! The Kafka listener: one task per connection, requests pipelined.
//!
//! A connection's requests are read and *submitted* one after another (so
//! produce requests enter their partitions' logs in arrival order), then
//! complete concurrently; responses go back in request order, as Kafka
//! clients require. In-flight requests per connection, connections per
//! node and per client address, idle time, the time a client may take to
//! send a request and to read a response, the bytes of requests and
//! responses held over all connections, and what one connection holds
//! while it waits for its turn are bounded (`kafka.*` in
//! docs/operations.md; how the byte budget cannot deadlock: [`ByteBudget`];
//! the per-connection queue: [`Queue`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use kafka_protocol::messages::{ApiKey, FetchRequest, RequestHeader, RequestKind, ResponseKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use super::admission::{Admission, ByteBudget, Held, Line};
use super::codec::{self, DecodeError};
use super::log_limit::LogLimit;
use super::queued::Queue;
use super::{
    alter_configs, api_versions, create_topics, delete_records, delete_topics, describe_configs,
    fetch, groups, incremental_alter_configs, list_offsets, metadata, produce, producer_ids,
    unsupported,
};
use crate::group::coordinator::Coordinator;
use crate::router::Router;

/// A request being served: resolves to the encoded response, or to nothing
/// for `acks = 0` produce requests.
pub type Pending = BoxFuture<'static, Option<BytesMut>>;

/// A warning about something any client can cause at will (a bad
/// request, a refused connection), at most `kafka.client_log_lines_per_sec`
/// a second through `$limit`, a [`LogLimit`]; the rest are counted.
macro_rules! client_warn {
    ($limit:expr, $($arg:tt)+) => {
        if let Some(suppressed) = $limit.admit(Instant::now()) {
            warn!(suppressed, $($arg)+);
        }
    };
}

/// What the listener keeps across restarts of its accept loop: the socket,
/// the connections open, the bytes in flight.
pub struct Listener {
    socket: TcpListener,
    admission: Arc<Admission>,
    budget: Arc<ByteBudget>,
    /// Log lines about what clients cause (`kafka.client_log_lines_per_sec`).
    log: Arc<LogLimit>,
}

impl Listener {
    pub fn new(
        socket: TcpListener,
        k: &crate::config::KafkaConfig,
        metrics: &crate::metrics::Metrics,
    ) -> Arc<Self> {
        Arc::new(Listener {
            socket,
            admission: Admission::new(
                k.connections_max as usize,
                k.connections_per_ip_max as usize,
            ),
            budget: ByteBudget::new(k.in_flight_bytes_max, metrics.kafka_in_flight_bytes.clone()),
            log: Arc::new(LogLimit::new(k.client_log_lines_per_sec)),
        })
    }
}

pub async fn serve(
    listener: Arc<Listener>,
    router: Arc<Router>,
    coordinator: Arc<Coordinator>,
    shutdown: CancellationToken,
) {
    let (admission, budget, log) = (&listener.admission, &listener.budget, &listener.log);
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.socket.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, usually (a flood): back
                    // off a little, and say so at most 20 times a second.
                    client_warn!(log, error = %e, "accept failed");
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
                client_warn!(log, %peer, %why, "closing a new client connection at once");
                drop(stream);
                continue;
            }
        };
        let router = router.clone();
        let conn = Conn {
            coordinator: coordinator.clone(),
            host: format!("/{}", peer.ip()),
            budget: budget.clone(),
            log: log.clone(),
            queue: Queue::new(
                router.kafka.connection_queued_bytes_max,
                router.metrics.kafka_queued_bytes.clone(),
            ),
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
    /// `kafka.connection_queued_bytes_max`: what waits for its turn.
    queue: Arc<Queue>,
    /// `kafka.client_log_lines_per_sec`, shared by every connection.
    log: Arc<LogLimit>,
}

/// TCP keepalive probes find peers that vanished without a FIN (a host
/// that lost power, a dropped NAT entry) long before the idle timeout
/// (`kafka.tcp_keepalive_time_ms`, `kafka.tcp_keepalive_interval_ms`).
fn keepalive(stream: &TcpStream, k: &crate::config::KafkaConfig) {
    let ka = socket2::TcpKeepalive::new()
        .with_time(Duration::from_millis(k.tcp_keepalive_time_ms))
        .with_interval(Duration::from_millis(k.tcp_keepalive_interval_ms));
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
    keepalive(&stream, &router.kafka);
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<tokio::task::JoinHandle<Option<(BytesMut, Held)>>>(
        router.kafka.in_flight_requests_max as usize,
    );
    let write_timeout = Duration::from_millis(router.kafka.write_timeout_ms);
    // Set when the writer stops (the client is gone or stopped reading):
    // the reader stops too, and the requests still being served are
    // cancelled, giving their bytes back.
    let writer_gone = CancellationToken::new();
    let gone = writer_gone.clone();
    let log = conn.log.clone();
    let writer = tokio::spawn(async move {
        let _gone = gone.drop_guard();
        let result = async {
            while let Some(h) = rx.recv().await {
                write_response(h, &mut wr, write_timeout, &log).await?;
            }
            Ok::<_, std::io::Error>(())
        }
        .await;
        rx.close();
        while let Some(h) = rx.recv().await {
            h.abort();
        }
        result
    });
    let max = router.kafka.request_bytes_max as usize;
    let idle = Duration::from_millis(router.kafka.connections_max_idle_ms);
    let read_timeout = Duration::from_millis(router.kafka.request_read_timeout_ms);
    let mut line = Line::default();
    loop {
        let len = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = writer_gone.cancelled() => break,
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
                conn.log,
                len,
                max,
                "closing connection: request size is outside 0..=kafka.request_bytes_max"
            );
            router.metrics.kafka_bad_requests.inc();
            break;
        }
        // Nothing more is read while what waits for its turn is at its
        // limit; then the request's bytes are taken from the budget before
        // they are allocated, and given back once its response is built.
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = writer_gone.cancelled() => break,
            _ = conn.queue.room() => {}
        }
        let mut request_held = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = writer_gone.cancelled() => break,
            h = conn.budget.hold(len as usize) => h,
        };
        let mut buf = vec![0u8; len as usize];
        match tokio::time::timeout(read_timeout, rd.read_exact(&mut buf)).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => {
                client_warn!(
                    conn.log,
                    len,
                    "closing connection: request truncated by the client"
                );
                router.metrics.kafka_bad_requests.inc();
                break;
            }
            Err(_) => {
                client_warn!(
                    conn.log,
                    len,
                    "closing connection: request frame incomplete after kafka.request_read_timeout_ms"
                );
                router.metrics.kafka_bad_requests.inc();
                break;
            }
        }
        let turn = line.take();
        let budget = conn.budget.clone();
        let served = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = writer_gone.cancelled() => break,
            s = dispatch(&router, &conn, Bytes::from(buf), &mut request_held) => s,
        };
        match served {
            Ok(served) => {
                // The request's bytes go back before its response waits
                // for its own: nothing waits for bytes while holding some.
                // What waits for its turn is counted in the connection's
                // queue instead, until it holds bytes of the budget.
                let queue = conn.queue.clone();
                let (built, built_rx) = tokio::sync::oneshot::channel::<()>();
                let read_on_at_once = !matches!(
                    served,
                    Served::Response {
                        kind: Kind::Built,
                        ..
                    }
                );
                let task = match served {
                    Served::Response { pending, kind } => {
                        // A group's request is applied to the group's state
                        // already, which keeps copies of what it needs.
                        let request_held = (kind != Kind::Group).then_some(request_held);
                        tokio::spawn(respond(pending, request_held, turn, queue, budget, built))
                    }
                    Served::Fetch { req, version, cid } => {
                        let bytes = fetch::request_bytes(&req, len as usize);
                        let mut turn = turn;
                        if bytes > queue.room_left() && !turn.has_come() {
                            // It would leave the budget for the queue, and
                            // take the queue far past its limit: no client
                            // pipelines a fetch of this size.
                            client_warn!(
                                conn.log,
                                bytes,
                                "closing connection: a fetch request larger than the room left in kafka.connection_queued_bytes_max waits behind another response"
                            );
                            router.metrics.kafka_bad_requests.inc();
                            break;
                        }
                        let router = router.clone();
                        let queued = queue.add(bytes);
                        tokio::spawn(async move {
                            drop(request_held);
                            let turn = turn.wait().await;
                            drop(queued);
                            let (resp, mut held) = fetch::handle(&router, req, &budget).await;
                            let buf =
                                encode(ApiKey::Fetch, version, cid, ResponseKind::Fetch(resp))?;
                            budget.fit(&mut held, buf.len()).await;
                            drop(turn);
                            Some((buf, held))
                        })
                    }
                };
                if let Err(unsent) = tx.send(task).await {
                    // The writer failed (the client is gone): the request
                    // still being served gives its bytes back now.
                    unsent.0.abort();
                    break;
                }
                if !read_on_at_once {
                    // Its size is known, and counted in the queue, only
                    // once it is built, unless its turn came first (then
                    // it goes to the budget, not the queue).
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = built_rx => {}
                    }
                }
            }
            Err(e) => {
                client_warn!(conn.log, error = %e, "closing connection: undecodable request");
                router.metrics.kafka_bad_requests.inc();
                break;
            }
        }
    }
    drop(tx);
    writer.await.map_err(std::io::Error::other)?
}

/// Writes one response once it is served; its bytes go back to the budget
/// once it is written, or with the connection.
async fn write_response(
    h: tokio::task::JoinHandle<Option<(BytesMut, Held)>>,
    wr: &mut tokio::net::tcp::OwnedWriteHalf,
    timeout: Duration,
    log: &LogLimit,
) -> std::io::Result<()> {
    let Some((buf, held)) = h.await.map_err(std::io::Error::other)? else {
        return Ok(()); // no response: an acks = 0 produce
    };
    match tokio::time::timeout(timeout, wr.write_all(&buf)).await {
        Ok(r) => r?,
        Err(_) => {
            client_warn!(
                log,
                bytes = buf.len(),
                "closing connection: the client took no response for kafka.write_timeout_ms"
            );
            return Err(std::io::ErrorKind::TimedOut.into());
        }
    }
    drop(held);
    Ok(())
}

/// What a request becomes once it is decoded.
enum Served {
    /// A response being built; it takes its bytes from the budget at its
    /// turn.
    Response { pending: Pending, kind: Kind },
    /// A fetch, which holds its response's size bound before it reads.
    Fetch {
        req: FetchRequest,
        version: i16,
        cid: i32,
    },
}

/// How a response's wait and size relate to its request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Built from this node's state, in a size only building tells: the
    /// connection reads its next request once it is built (and counted in
    /// the queue) or its turn has come.
    Built,
    /// Waits for commits (produce, offset commit), holding its request's
    /// bytes meanwhile; its size follows from the request's partitions.
    /// The connection reads on.
    Awaited,
    /// Waits for other members (join and sync group), whose requests it
    /// answers with; its request's bytes go back at once. The connection
    /// reads on.
    Group,
}

impl From<Pending> for Served {
    fn from(pending: Pending) -> Self {
        Served::Response {
            pending,
            kind: Kind::Built,
        }
    }
}

/// Waits for a response to be built and for its turn, in either order, and
/// takes its bytes from the budget. Until both came, what was built is
/// counted in the connection's queue; `built` is dropped (letting the
/// reader go on) once it is counted there or the turn came.
async fn respond(
    pending: Pending,
    request_held: Option<Held>,
    turn: super::admission::Turn,
    queue: Arc<Queue>,
    budget: Arc<ByteBudget>,
    built: tokio::sync::oneshot::Sender<()>,
) -> Option<(BytesMut, Held)> {
    let mut built = Some(built);
    let mut pending = pending;
    let mut waiting = std::pin::pin!(turn.wait());
    let mut my_turn = None;
    let resp = loop {
        tokio::select! {
            r = &mut pending => break r,
            t = &mut waiting, if my_turn.is_none() => {
                my_turn = Some(t);
                built.take();
            }
        }
    };
    drop(request_held);
    let (my_turn, queued) = match my_turn {
        Some(t) => (t, None),
        None => {
            let queued = resp.as_ref().map(|b| queue.add(b.len()));
            drop(built);
            (waiting.await, queued)
        }
    };
    let buf = resp?;
    let held = budget.hold(buf.len()).await;
    drop((queued, my_turn));
    Some((buf, held))
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

/// Decodes a request and starts serving it; `held` holds the request's
/// bytes, and a produce adds what its batches decompress to.
async fn dispatch(
    router: &Arc<Router>,
    conn: &Conn,
    frame: Bytes,
    held: &mut Held,
) -> Result<Served, DecodeError> {
    let (api, header, body) = codec::decode_header(frame)?;
    let version = header.request_api_version;
    if api == ApiKey::ApiVersions && !api_versions::supports(api, version) {
        // Answer in v0, which every client reads, listing what we support.
        let cid = header.correlation_id;
        let resp = ResponseKind::ApiVersions(api_versions::unsupported_version());
        let pending: Pending = Box::pin(async move { encode(api, 0, cid, resp) });
        return Ok(pending.into());
    }
    // The API and version are checked before the body is decoded: a body
    // Meridian will not serve is parsed only to build the error answer of
    // the few APIs that have one, and otherwise the connection is closed.
    if !api_versions::supports(api, version) {
        if !unsupported::answers(api) {
            return Err(not_served(api, &header));
        }
        if let Some(suppressed) = conn.log.admit(Instant::now()) {
            info!(
                suppressed,
                ?api,
                version,
                "answering an unsupported API or version with an error"
            );
        }
        let req = codec::decode_body(api, &header, body)?;
        return match unsupported::response(req) {
            Some(resp) => Ok(ready(api, &header, resp).into()),
            None => Err(not_served(api, &header)),
        };
    }
    let req = match codec::decode_body(api, &header, body)? {
        RequestKind::Fetch(req) => {
            return Ok(Served::Fetch {
                req,
                version,
                cid: header.correlation_id,
            })
        }
        other => other,
    };
    let r = router.clone();
    let c = conn.coordinator.clone();
    let client_id = header
        .client_id
        .as_ref()
        .map_or_else(String::new, |c| c.to_string());
    let host = conn.host.clone();
    let (v, cid) = (version, header.correlation_id);
    let done = move |resp: ResponseKind| encode(api, v, cid, resp);
    let kind = match req {
        RequestKind::Produce(_) | RequestKind::OffsetCommit(_) => Kind::Awaited,
        RequestKind::JoinGroup(_) | RequestKind::SyncGroup(_) => Kind::Group,
        _ => Kind::Built,
    };
    let pending: Pending = match req {
        RequestKind::ApiVersions(_) => ready(
            api,
            &header,
            ResponseKind::ApiVersions(api_versions::response()),
        ),
        RequestKind::Metadata(req) => {
            Box::pin(async move { done(ResponseKind::Metadata(metadata::handle(&r, req).await)) })
        }
        RequestKind::Produce(req) => {
            let pending = produce::submit(&r, req, &conn.budget, held).await;
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
        RequestKind::DeleteRecords(req) => Box::pin(async move {
            done(ResponseKind::DeleteRecords(
                delete_records::handle(&r, req).await,
            ))
        }),
        RequestKind::DescribeConfigs(req) => Box::pin(async move {
            done(ResponseKind::DescribeConfigs(describe_configs::handle(
                &r, req,
            )))
        }),
        RequestKind::AlterConfigs(req) => Box::pin(async move {
            done(ResponseKind::AlterConfigs(
                alter_configs::handle(&r, req).await,
            ))
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
    };
    Ok(Served::Response { pending, kind })
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{getsockopt, sockopt};

    #[tokio::test]
    async fn client_sockets_get_the_configured_keepalive() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let k = crate::config::KafkaConfig {
            tcp_keepalive_time_ms: 7_000,
            tcp_keepalive_interval_ms: 3_000,
            ..Default::default()
        };
        keepalive(&server, &k);
        assert!(getsockopt(&server, sockopt::KeepAlive).unwrap());
        assert_eq!(getsockopt(&server, sockopt::TcpKeepIdle).unwrap(), 7);
        assert_eq!(getsockopt(&server, sockopt::TcpKeepInterval).unwrap(), 3);
        drop(client);
    }
}
