//! The Kafka listener: one task per connection, requests pipelined.
//!
//! A connection's requests are read and *submitted* one after another (so
//! produce requests enter their partitions' logs in arrival order), then
//! complete concurrently; responses go back in request order, as Kafka
//! clients require. In-flight requests per connection and connections per
//! node are bounded.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use super::codec::{self, DecodeError};
use super::{
    api_versions, create_topics, delete_topics, describe_configs, fetch, groups,
    incremental_alter_configs, list_offsets, metadata, produce, producer_ids, unsupported,
};
use crate::group::coordinator::Coordinator;
use crate::router::Router;

/// A request being served: resolves to the encoded response, or to nothing
/// for `acks = 0` produce requests.
pub type Pending = BoxFuture<'static, Option<BytesMut>>;

/// A request frame must arrive whole within this time once its length is read.
const FRAME_READ_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn serve(
    listener: TcpListener,
    router: Arc<Router>,
    coordinator: Arc<Coordinator>,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(router.kafka.connections_max as usize));
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => return,
            p = permits.clone().acquire_owned() => p.expect("semaphore never closed"),
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let router = router.clone();
        let conn = Conn {
            coordinator: coordinator.clone(),
            host: format!("/{}", peer.ip()),
        };
        let shutdown = shutdown.clone();
        tokio::spawn(
            async move {
                router.metrics.kafka_connections.inc();
                if let Err(e) = connection(stream, router.clone(), conn, shutdown).await {
                    debug!(error = %e, "connection ended");
                }
                router.metrics.kafka_connections.dec();
                drop(permit);
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
}

async fn connection(
    stream: TcpStream,
    router: Arc<Router>,
    conn: Conn,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<tokio::task::JoinHandle<Option<BytesMut>>>(
        router.kafka.in_flight_requests_max as usize,
    );
    let writer = tokio::spawn(async move {
        while let Some(h) = rx.recv().await {
            match h.await {
                Ok(Some(buf)) => wr.write_all(&buf).await?,
                Ok(None) => {}
                Err(e) => return Err(std::io::Error::other(e)),
            }
        }
        Ok::<_, std::io::Error>(())
    });
    let max = router.kafka.request_bytes_max as usize;
    loop {
        let len = tokio::select! {
            _ = shutdown.cancelled() => break,
            l = rd.read_i32() => match l {
                Ok(l) => l,
                Err(_) => break, // the client closed the connection
            },
        };
        if len < 0 || len as usize > max {
            warn!(
                len,
                max, "closing connection: request size is outside 0..=kafka.request_bytes_max"
            );
            router.metrics.kafka_bad_requests.inc();
            break;
        }
        let mut buf = vec![0u8; len as usize];
        match tokio::time::timeout(FRAME_READ_TIMEOUT, rd.read_exact(&mut buf)).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => {
                warn!(len, "closing connection: request truncated by the client");
                router.metrics.kafka_bad_requests.inc();
                break;
            }
            Err(_) => {
                warn!(
                    len,
                    "closing connection: request frame incomplete after 30 s"
                );
                router.metrics.kafka_bad_requests.inc();
                break;
            }
        }
        match dispatch(&router, &conn, Bytes::from(buf)).await {
            Ok(pending) => {
                if tx.send(tokio::spawn(pending)).await.is_err() {
                    break; // the writer failed: the client is gone
                }
            }
            Err(e) => {
                warn!(error = %e, "closing connection: undecodable request");
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
    let req = codec::decode_body(api, &header, body)?;
    if !api_versions::supports(api, version) {
        info!(
            ?api,
            version, "answering an unsupported API or version with an error"
        );
        return match unsupported::response(req) {
            Some(resp) => Ok(ready(api, &header, resp)),
            None => Err(not_served(api, &header)),
        };
    }
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
